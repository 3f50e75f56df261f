"""Backend choice, BLAS environment defaults and the ``bench`` subcommand."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from hpcnet.errors import BackendError, ConfigError
from hpcnet.kernels import OPS, cpu, cuda_available, cuda_simulator, get_backend, reference


def test_every_op_exists_in_every_host_backend():
    for op in OPS:
        assert callable(getattr(cpu, op)) and callable(getattr(reference, op)), op


def test_every_op_exists_in_the_cuda_module():
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install 'hpcnet[cuda]')")
    kc = importlib.import_module("hpcnet.kernels.cuda")  # imports without a GPU too
    for op in OPS:
        assert callable(getattr(kc, op)), op
    assert kc.LAUNCH.threads > 0 and callable(kc.gemm)


def test_cuda_needs_a_gpu_and_never_falls_back():
    """``cuda`` runs only where numba-cuda finds a GPU, and ``auto`` picks it exactly there;
    elsewhere asking for ``cuda`` is an error that says what is missing."""
    numba_cuda = importlib.util.find_spec("numba_cuda") is not None
    if numba_cuda and cuda_available():
        from hpcnet.kernels import cuda as kc

        backend = get_backend("cuda")
        assert backend.name == "cuda" and backend.relu_forward is kc.relu_forward
        x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
        np.testing.assert_array_equal(backend.relu_forward(x), cpu.relu_forward(x))
        assert get_backend("auto").name == "cuda"
        return
    if not numba_cuda:
        missing = "the numba-cuda package is not installed"
    elif cuda_simulator():
        missing = "NUMBA_ENABLE_CUDASIM=1 selects Numba's CUDA simulator"
    else:
        missing = "no CUDA GPU found"
    with pytest.raises(BackendError, match=f"--backend cuda: {missing}.*; use --backend cpu"):
        get_backend("cuda")
    assert get_backend("auto").name == "cpu"


def test_cuda_simulator_only_on_request():
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install 'hpcnet[cuda]')")
    code = (
        "from hpcnet.kernels import get_backend\n"
        "from hpcnet.errors import BackendError\n"
        "try:\n"
        "    get_backend('cuda')\n"
        "except BackendError as e:\n"
        "    print('refused:', e)\n"
        "print(get_backend('cuda', allow_simulator=True).name, get_backend('auto').name)\n"
    )
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "refused: --backend cuda: NUMBA_ENABLE_CUDASIM=1" in out.stdout
    assert out.stdout.strip().endswith("cuda cpu")


def test_blas_env_defaults_only_before_numpy_and_never_over_the_user():
    code = (
        "import os, sys\n"
        "from hpcnet.kernels import set_blas_env_defaults\n"
        "first = set_blas_env_defaults()\n"
        "import numpy\n"
        "print(first, set_blas_env_defaults(), os.environ['OPENBLAS_THREAD_TIMEOUT'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "False", "4"], out.stderr
    env["OPENBLAS_THREAD_TIMEOUT"] = "20"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "False", "20"], out.stderr


def test_bench_subcommand_rejects_unknown_names():
    from hpcnet.cli import build_parser

    with pytest.raises(ConfigError, match="invalid choice"):
        build_parser().parse_args(["bench", "nope"])
    args = build_parser().parse_args(["bench", "layers", "--models", "lenet"])
    assert args.name == "layers" and args.args == ["--models", "lenet"]
