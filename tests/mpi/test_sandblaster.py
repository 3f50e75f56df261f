"""Sandblaster L-BFGS: distributed iterates against a serial L-BFGS, load balancing,
exactly-once units with a stopped replica."""

import math
from pathlib import Path

import numpy as np
import pytest

from hpcnet.algos import train
from hpcnet.config import load_config
from hpcnet.data.format import open_dataset, read_rows
from hpcnet.data.loader import normalize
from hpcnet.kernels import get_backend
from hpcnet.nn.zoo import build_model
from hpcnet.optim.lbfgs import lbfgs_serial
from tests.close import assert_close
from tests.mpi.ranks import first_ranks

DIGITS = Path(__file__).resolve().parents[2] / "hpcnet" / "data" / "shipped" / "digits.h5"


def _cfg(out, **kv):
    base = {
        "data.name": "digits",
        "algo.name": "sandblaster",
        "run.threads": 1,
        "run.out": str(out),
        "ps.replica_timeout": 5.0,
    }
    base.update(kv)
    return load_config(None, base)


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(240)
def test_distributed_iterates_match_serial_lbfgs(comm, shared_tmp):
    sub = first_ranks(comm, 4)  # 1 coordinator + 2 shards + 1 replica
    if sub is None:
        return
    batch, wd, epochs = 400, 1e-3, 3
    cfg = _cfg(
        shared_tmp / "serial",
        **{
            "model.name": "linear",
            "algo.shards": 2,
            "lbfgs.batch": batch,
            "lbfgs.m": 4,
            "lbfgs.unit_size": 37,
            "run.epochs": epochs,
            "optim.weight_decay": wd,
        },
    )
    s = train(cfg, sub, verbose=False)
    sub.Free()
    info = open_dataset(DIGITS)
    x, y = read_rows(DIGITS, "train", 0, batch)
    x = normalize(x, info.mean, info.std)
    model = build_model("linear", info.image_shape, info.num_classes)
    model.init(0)
    be = get_backend("cpu")

    def fg(v):
        model.params[:] = v.astype(np.float32)
        loss, _ = model.loss_and_grad(x, y, be, train=False)
        return loss + 0.5 * wd * v @ v, model.grads.astype(np.float64) + wd * v

    passes = math.ceil(epochs * info.n_train / batch)
    ref = lbfgs_serial(fg, model.params.astype(np.float64), m=4, max_evals=passes, keep_x=True)
    assert s["passes"] == passes
    got = s["loss_history"]
    assert len(got) == len(ref) >= 5
    np.testing.assert_allclose(got, [r.loss for r in ref], rtol=1e-4)
    assert all(a > b for a, b in zip(got, got[1:], strict=False))  # monotone: the line search works
    assert_close(s["_params"], ref[-1].x, rtol=1e-3, scale=1e-4)


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(300)
def test_slow_replica_does_fewer_units_and_a_stopped_one_loses_nothing(comm, shared_tmp):
    sub = first_ranks(comm, 4)  # 1 coordinator + 1 shard + 2 replicas
    if sub is None:
        return
    slow = train(
        _cfg(
            shared_tmp / "slow",
            **{
                "algo.shards": 1,
                "run.epochs": 4,
                "faults.slow_replica": 1,
                "faults.slow_factor": 4.0,
            },
        ),
        sub,
        verbose=False,
    )
    fail = train(
        _cfg(
            shared_tmp / "fail",
            **{
                "algo.shards": 1,
                "run.epochs": 4,
                "faults.fail_replica": 1,
                "faults.fail_at_step": 3,
            },
        ),
        sub,
        verbose=False,
    )
    sub.Free()
    done = slow["units_completed"]
    assert done[1] < done[0]  # faster replicas do more
    for s in (slow, fail):  # every pass's units counted exactly once
        assert sum(s["units_completed"]) == s["passes"] * s["units_per_pass"]
    assert fail["lost_replicas"] == [1]
    assert fail["replicas"][1]["failed"] and fail["replicas"][1]["units_computed"] == 3
    # losing a replica changes who computes, not what is computed
    np.testing.assert_allclose(fail["loss_history"], slow["loss_history"], rtol=1e-4)
    assert all(a > b for a, b in zip(fail["loss_history"], fail["loss_history"][1:], strict=False))
