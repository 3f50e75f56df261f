"""``hpcnet.train`` from Python: a model given as layers or as a function, the config
as nested tables, flat keys or a TOML file; a wrong key is one error on every rank."""

import numpy as np
import pytest

import hpcnet
from hpcnet.errors import ConfigError
from hpcnet.nn import Dense, Flatten, ReLU
from tests.mpi.ranks import first_ranks


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_train_from_python_with_layers_a_function_and_a_config_file(comm, shared_tmp):
    sub = first_ranks(comm, 2)
    if sub is None:
        return
    layers = [Flatten(), Dense(32), ReLU(), Dense(10)]

    def build(shape, k):
        return [Flatten(), Dense(32), ReLU(), Dense(k)]

    base = {"run": {"max_steps": 20, "threads": 1, "seed": 3}}
    a = hpcnet.train(
        base, model=layers, data="digits", comm=sub, verbose=False,
        run__out=str(shared_tmp / "a"),
    )  # fmt: skip
    b = hpcnet.train(
        {**base, "run.out": str(shared_tmp / "b")}, model=build, data="digits", comm=sub,
        verbose=False,
    )  # fmt: skip
    # the same layers from a list or a function: the same run, bit for bit
    assert a["params"].shape == (64 * 32 + 32 + 32 * 10 + 10,)
    np.testing.assert_array_equal(a["params"], b["params"])
    assert a["test_accuracy"] == b["test_accuracy"] and a["steps"] == 20
    assert layers[1].in_shape == ()  # the caller's layers were copied, never built
    toml = shared_tmp / "run.toml"
    if sub.rank == 0:
        toml.write_text('[run]\nmax_steps = 5\nthreads = 1\n[model]\nname = "linear"\n')
    sub.Barrier()
    c = hpcnet.train(toml, data="digits", comm=sub, verbose=False, run__out=str(shared_tmp / "c"))
    assert c["steps"] == 5 and c["model"] == "linear"
    with pytest.raises(ConfigError, match="'optm.lr' is not a config key"):
        hpcnet.train({"optm.lr": 0.1}, comm=sub, verbose=False)
    sub.Free()
