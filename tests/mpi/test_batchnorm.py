"""BatchNorm's running statistics over replicas: every replica keeps its own, an
evaluation uses their mean over the replicas (each entry over the partitions that
compute its layer), ranks of other roles count for nothing, and each replica gets its
own back afterwards. Real allreduces over COMM_WORLD's ranks, checked against NumPy."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hpcnet.algos.end_of_run import EndOfRun
from hpcnet.layout import Role
from hpcnet.nn.zoo import build_model

BATCHNORM = str(Path(__file__).resolve().parents[1] / "models" / "batchnorm.toml")


def _own(rank: int, n: int) -> np.ndarray:
    return (np.arange(n) * 0.5 + 10.0 * (rank + 1)).astype(np.float32)


@pytest.mark.mpi(min_size=2)
def test_evaluation_uses_the_replicas_mean_and_each_keeps_its_own(comm):
    size, rank = comm.size, comm.rank
    model = build_model(BATCHNORM, (1, 8, 8), 10)
    n = model.buffers.size
    shard = size > 2 and rank == size - 1  # the last rank of 3+ is no replica
    model.buffers[:] = _own(rank, n)
    run = SimpleNamespace(
        model=model,
        role=Role("shard" if shard else "replica", rank),
        part=None,
        comm=comm,
        averaged_buffers=None,
        live_replicas=lambda: list(range(size)),  # every replica whole
    )
    own = EndOfRun._average_buffers(run)
    replicas = [r for r in range(size) if not (size > 2 and r == size - 1)]
    want = np.mean([_own(r, n) for r in replicas], axis=0)
    np.testing.assert_allclose(model.buffers, want, rtol=1e-6)
    np.testing.assert_allclose(run.averaged_buffers, want, rtol=1e-6)
    np.testing.assert_array_equal(own, _own(rank, n))


@pytest.mark.mpi(min_size=4)
def test_each_entry_is_averaged_over_the_partitions_that_compute_it(comm):
    # 2 replicas x 2 partitions (pipeline stages): partition p computes half the layers
    if comm.rank >= 4:
        sub = comm.Split(1, comm.rank)
        sub.Free()
        return
    sub = comm.Split(0, comm.rank)
    model = build_model(BATCHNORM, (1, 8, 8), 10)
    n = model.buffers.size
    p = sub.rank % 2
    mask = np.zeros(n)
    mask[: n // 2] = p == 0
    mask[n // 2 :] = p == 1
    model.buffers[:] = _own(sub.rank, n) * mask  # what p does not compute stays at 0
    run = SimpleNamespace(
        model=model,
        role=Role("replica", sub.rank // 2, p),
        part=SimpleNamespace(buffer_mask=lambda: mask),
        comm=sub,
        averaged_buffers=None,
        live_replicas=lambda: [0, 1],  # both replicas whole
    )
    EndOfRun._average_buffers(run)
    want = np.concatenate(
        [(_own(0, n) + _own(2, n))[: n // 2] / 2, (_own(1, n) + _own(3, n))[n // 2 :] / 2]
    )
    np.testing.assert_allclose(model.buffers, want, rtol=1e-6)
    sub.Free()
