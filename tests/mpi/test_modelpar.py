"""Model parallelism against the unpartitioned model computed serially: the neurons
scheme layer by layer, and both schemes composed with sync, avg and training runs
(the pipeline scheme's own tests: test_modelpar_pipeline.py).

Every rank also computes the whole model itself (the independent reference); the
partitions must give the same logits, loss, gradients and parameters after a few
SGD steps, to float32 tolerance, and move exactly the bytes the documented formula
says.
"""

from pathlib import Path

import numpy as np
import pytest

from hpcnet.algos import get_algorithm, train
from hpcnet.algos.sync import SyncSGD
from hpcnet.comm import split_role_comms
from hpcnet.comm.exchange import Exchange
from hpcnet.config import load_config
from hpcnet.data.format import open_dataset, read_rows
from hpcnet.data.loader import normalize
from hpcnet.errors import ConfigError
from hpcnet.kernels import get_backend
from hpcnet.layout import make_layout
from hpcnet.modelpar import partition_model
from hpcnet.nn.zoo import build_model
from hpcnet.optim.sgd import SGD
from tests.close import assert_close, assert_flat_close
from tests.mpi.ranks import first_ranks

BE = get_backend("cpu")
NEW_LAYERS = str(Path(__file__).resolve().parents[1] / "models" / "new_layers.toml")
MODELS = ["mlp", "lenet", "2conv", "alexnet", "towers", NEW_LAYERS]


def _pair(name, seed=3, shape=(1, 28, 28)):
    ref, mine = build_model(name, shape, 10), build_model(name, shape, 10)
    for m in (ref, mine):
        m.init(seed)
        m.seed_dropout(seed, 0)
    return ref, mine


def _batch(n, shape=(1, 28, 28), seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n)


def _close(a, b, what, model=None):
    """Per tensor of ``model`` for flat vectors (tests/close.py), else the whole array."""
    if model is None:
        assert_close(a, b, err_msg=what)
    else:
        assert_flat_close(a, b, model, what=what)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("name", MODELS, ids=lambda n: Path(n).stem)
def test_partitions_equal_the_whole_model(comm, name, m):
    if comm.size < m:
        pytest.skip(f"needs {m} ranks")
    sub = first_ranks(comm, m)
    if sub is None:
        return
    ref, mine = _pair(name)
    part = partition_model(mine, "neurons", Exchange(sub))
    x, y = _batch(6)
    # forward (inference) logits
    _close(part.forward(x, BE), ref.forward(x, BE), f"{name} M={m} logits")
    # k training steps (dropout on): loss, gradients, parameters
    opt_r, opt_p = SGD(ref.n_params, momentum=0.9), SGD(part.n_owned, momentum=0.9)
    for k in range(3):
        x, y = _batch(6, seed=10 + k)
        loss_r, corr_r = ref.loss_and_grad(x, y, BE)
        loss_p, corr_p = part.loss_and_grad(x, y, BE)
        assert abs(loss_p - loss_r) <= 1e-5 * max(1.0, abs(loss_r)), (name, m, k)
        assert corr_p == corr_r
        grads = part.assemble(mine.grads.copy())
        _close(grads, ref.grads, f"{name} M={m} step {k} gradients", ref)
        opt_r.step(ref.params, ref.grads, 0.05)
        p = part.pack(mine.params)
        opt_p.step(p, part.pack(mine.grads), 0.05)
        part.unpack(p, mine.params)
        got = part.assemble(mine.params.copy())
        _close(got, ref.params, f"{name} M={m} step {k} parameters", ref)
        # the next step starts from the reference's state, so float32 rounding is not
        # carried into a ReLU switch that would move the gradients by percent (issue 31)
        mine.params[:] = ref.params
        opt_p.velocity[:] = part.pack(opt_r.velocity)
    # every parameter is owned by exactly one partition (all_owned checks it)
    assert sum(hi - lo for rs in part.all_owned() for lo, hi in rs) == ref.n_params
    assert part.last_step_bytes == part.expected_bytes(6)
    sub.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_bytes_match_the_formula_written_out(comm):
    """mlp (784-512-512-10), M = 2, batch B: each split Dense output is gathered; the
    two hidden ones also reduce-scattered backward, the logits' backward is a slice.
    Per partition: allgather sends its half and receives the other half; so does the
    reduce-scatter. So each partition sends 4 B (2 (256 + 256) + 5) bytes."""
    sub = first_ranks(comm, 2)
    if sub is None:
        return
    _, mine = _pair("mlp")
    part = partition_model(mine, "neurons", Exchange(sub))
    b = 7
    part.loss_and_grad(*_batch(b), BE)
    want = 4 * b * (2 * (256 + 256) + 5)
    assert part.last_step_bytes == (want, want)
    # towers (4 towers of 32 channels at 7x7 -> 128 x 7 x 7), dense 256, dense 10, M = 2:
    # the concat (6272 features, 3136 each) and the hidden layer (128 each) both ways,
    # the logits (5 each) forward only.
    _, towers = _pair("towers")
    part = partition_model(towers, "neurons", Exchange(sub))
    part.loss_and_grad(*_batch(b), BE)
    want = 4 * b * (2 * 3136 + 2 * 128 + 5)
    assert part.last_step_bytes == (want, want)
    sub.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
def test_too_many_partitions_is_a_clear_error(comm):
    sub = first_ranks(comm, 2)
    if sub is None:
        return
    model = build_model("linear", (1, 8, 8), 1 + 0)  # Dense(1): one output neuron
    with pytest.raises(ConfigError, match=r"--partitions 2: layer 1 \(Dense\) has only 1"):
        partition_model(model, "neurons", Exchange(sub))
    sub.Free()


def _digits(path, n, seed):
    info = open_dataset(path)
    x, y = read_rows(path, "train", 0, 512)
    x = normalize(x, info.mean, info.std)
    idx = np.random.default_rng(seed).permutation(512)[:n]
    return info, x[idx], y[idx]


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("scheme", ["neurons", "pipeline"])
def test_two_replicas_of_two_partitions_equal_one_with_the_doubled_batch(comm, digits_path, scheme):
    """sync over data_comm (the same partition of each replica) with batch b per replica
    equals one replica of 2 partitions with batch 2 b, and the serial model."""
    sub = first_ranks(comm, 4)
    if sub is None:
        return
    layout = make_layout(4, get_algorithm("sync"), partitions=2)
    rc = split_role_comms(layout, sub)
    r = rc.role.index
    shape = (1, 8, 8)
    serial, mine = _pair("digits_cnn", shape=shape)
    _, big = _pair("digits_cnn", shape=shape)
    part = partition_model(mine, scheme, Exchange(rc.replica_comm), 2)
    part_big = partition_model(big, scheme, Exchange(rc.replica_comm), 3)
    policy = SyncSGD(rc.data_comm)
    opts = [SGD(serial.n_params), SGD(part.n_owned), SGD(part_big.n_owned)]
    b = 8
    for k in range(4):
        _, x, y = _digits(digits_path, 2 * b, seed=k)
        serial.loss_and_grad(x, y, BE)
        opts[0].step(serial.params, serial.grads, 0.1)
        part_big.loss_and_grad(x, y, BE)
        p = part_big.pack(big.params)
        opts[2].step(p, part_big.pack(big.grads), 0.1)
        part_big.unpack(p, big.params)
        part.loss_and_grad(x[r * b : (r + 1) * b], y[r * b : (r + 1) * b], BE)
        g, p = part.pack(mine.grads), part.pack(mine.params)
        policy.after_backward(g)
        opts[1].step(p, g, 0.1)
        part.unpack(p, mine.params)
    a, c = part.assemble(mine.params), part_big.assemble(big.params)
    _close(a, c, "2x2 sync vs 1x2 doubled batch", serial)
    _close(a, serial.params, "2x2 sync vs serial", serial)
    assert not np.allclose(a, _pair("digits_cnn", shape=shape)[0].params), "nothing trained"
    rc.free()
    sub.Free()


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "algo, scheme", [("sync", "neurons"), ("avg", "neurons"), ("sync", "pipeline")]
)
def test_train_with_partitions_learns_digits(comm, shared_tmp, algo, scheme):
    cfg = load_config(
        None,
        {
            "data.name": "digits",
            "run.out": str(shared_tmp / f"{algo}-{scheme}"),
            "run.epochs": 5,
            "run.threads": 1,
            "algo.name": algo,
            "algo.partitions": 2,
            "algo.partition_scheme": scheme,
        },
    )
    s = train(cfg, comm, verbose=False)
    assert s["test_accuracy"] >= 0.9, (algo, s["test_accuracy"])
    assert s["layout"]["partitions"] == 2 and s["layout"]["replicas"] == comm.size // 2
    mp = s["model_parallel"]
    assert mp["scheme"] == scheme and len(mp["per_partition"]) == 2
    assert mp["bytes_sent_per_step"] == mp["bytes_expected_per_step"] > 0
    everyone = comm.allgather(s["_params"][::97].copy())  # every partition, every replica
    assert all(np.array_equal(everyone[0], p) for p in everyone)


def test_neurons_refuses_a_residual_block_in_one_line():
    from hpcnet.errors import ConfigError
    from hpcnet.modelpar import check_partitions

    model = build_model(NEW_LAYERS.replace("new_layers", "residual"), (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="layer 2 \\(Residual\\) has parameters .* pipeline"):
        check_partitions(model, "neurons", 2)
    check_partitions(model, "pipeline", 2)  # placed whole in a stage
