"""The CUDA backend against the CPU backend, under Numba's CUDA simulator.

``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first imported, and
this pytest process has imported it already (or may, in another test), so the
cases in ``cudasim_cases.py`` run in a fresh ``python -m pytest`` with the
variable set. No GPU is needed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.timeout(240)
@pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None,
    reason="numba-cuda is not installed (pip install 'hpcnet[cuda]')",
)
def test_cuda_kernels_match_cpu_under_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
           str(HERE / "cudasim_cases.py")]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, cwd=HERE.parents[1], capture_output=True, text=True, timeout=230
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout
