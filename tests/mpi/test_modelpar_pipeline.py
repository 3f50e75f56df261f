"""GPipe pipeline partitions against the unpartitioned model computed serially on
every rank (the oracle): logits, loss, gradients, SGD updates, dropout masks, bytes.

Each test runs on a sub-communicator of the first M ranks (M = 2, 3); the others
return at once.
"""

from pathlib import Path

import numpy as np
import pytest

from hpcnet.comm.exchange import Exchange
from hpcnet.kernels import get_backend
from hpcnet.modelpar import partition_model
from hpcnet.modelpar.pipeline import PipelinePartition
from hpcnet.nn.zoo import build_model
from hpcnet.optim.sgd import SGD
from tests.close import assert_close, assert_flat_close
from tests.mpi.ranks import first_ranks

HERE = Path(__file__).resolve().parent
SHAPE, K = (1, 28, 28), 10
RTOL = 1e-4
DROPOUT = {"2conv", "alexnet"}


def _batches(steps, n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((n, *SHAPE), dtype=np.float32),
            rng.integers(0, K, n).astype(np.int64),
        )
        for _ in range(steps)
    ]


def _pair(name, sub, micro_batches):
    """The serial oracle and this rank's pipeline partition, identically initialised."""
    ref, model = build_model(name, SHAPE, K), build_model(name, SHAPE, K)
    for m in (ref, model):
        m.init(11)
        m.seed_dropout(5, 0)
    part = partition_model(model, "pipeline", Exchange(sub, timeout=120.0), micro_batches)
    assert isinstance(part, PipelinePartition)
    return ref, part


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("m_parts", [2, 3])
@pytest.mark.parametrize(
    "name",
    ["lenet", "2conv", "alexnet", "towers", "mlp", str(HERE.parent / "models" / "residual.toml")],
    ids=lambda n: Path(n).stem,
)
def test_pipeline_equals_serial_model(comm, name, m_parts):
    if comm.size < m_parts:
        pytest.skip(f"needs {m_parts} ranks")
    sub = first_ranks(comm, m_parts)
    if sub is None:
        return
    be = get_backend("cpu")
    train = name in DROPOUT  # dropout on: masks must match the serial model's
    ref, part = _pair(name, sub, micro_batches=3)
    model = part.model
    assert part.n_owned > 0 and len(part.plan_text()) == m_parts + 1

    # forward and evaluate (inference) give the serial logits / loss on every partition
    x, y = _batches(1, 7, seed=1)[0]
    assert_close(part.forward(x, be), ref.forward(x, be))
    loss_sum, correct = part.evaluate(x, y, be)
    want_sum, want_correct = ref.evaluate(x, y, be)
    assert correct == want_correct
    np.testing.assert_allclose(loss_sum, want_sum, rtol=RTOL)

    # 3 SGD steps, batch 7 in 3 uneven micro-batches (3, 2, 2)
    opt_ref, opt = SGD(ref.n_params, momentum=0.9), SGD(part.n_owned, momentum=0.9)
    for x, y in _batches(3, 7, seed=2):
        want_loss, want_correct = ref.loss_and_grad(x, y, be, train=train)
        loss, correct = part.loss_and_grad(x, y, be, train=train)
        assert correct == want_correct
        np.testing.assert_allclose(loss, want_loss, rtol=RTOL)
        assert part.last_step_bytes == part.expected_bytes(7)
        grads = part.assemble(model.grads.copy())
        assert_flat_close(grads, ref.grads, ref, what="gradient")
        opt_ref.step(ref.params, ref.grads, 0.05)
        params, g = part.pack(model.params), part.pack(model.grads)
        opt.step(params, g, 0.05)
        part.unpack(params, model.params)
        got = part.assemble(model.params.copy())
        assert_flat_close(got, ref.params, ref, what="parameters")
        # the next step starts from the reference's state, so float32 rounding is not
        # carried into a ReLU switch that would move the gradients by percent (issue 31)
        model.params[:] = ref.params
        opt.velocity[:] = part.pack(opt_ref.velocity)
    assert not np.array_equal(ref.params, build_model(name, SHAPE, K).params)
    assert part.steps == 3
    sub.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("batch, micro", [(5, 1), (3, 8), (6, 6), (8, 3)])
def test_any_micro_batch_count(comm, batch, micro):
    # m = 1 (no pipelining), m > N (clamped to N), m = N, and uneven splits
    sub = first_ranks(comm, 2)
    if sub is None:
        return
    be = get_backend("cpu")
    ref, part = _pair("2conv", sub, micro_batches=micro)
    x, y = _batches(1, batch, seed=3)[0]
    want = ref.loss_and_grad(x, y, be, train=True)
    got = part.loss_and_grad(x, y, be, train=True)
    assert got[1] == want[1]
    np.testing.assert_allclose(got[0], want[0], rtol=RTOL)
    assert_flat_close(part.assemble(part.model.grads), ref.grads, ref, what="gradient")
    sent, recv = part.expected_bytes(batch)
    assert part.last_step_bytes == (sent, recv)
    # the formula: one activation forward and its gradient back per boundary
    act = batch * int(np.prod(part.model.layers[part.bounds[1] - 1].out_shape)) * 4
    assert (sent, recv) == ((act, act + 16) if part.partition == 0 else (act + 16, act))
    sub.Free()
