"""The README's commands are run here, so they cannot rot."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_cli import MPIEXEC, hpcnet

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV = "python3 -m venv .venv && . .venv/bin/activate && "


def _first_blocks() -> list[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from readme_command import readme_commands
    finally:
        sys.path.pop(0)
    return readme_commands(README.read_text())


def test_readme_opens_with_install_and_test_commands():
    run, test = _first_blocks()
    # each makes its own environment first: a system Python that refuses system-wide
    # installs (PEP 668) must not stop a newcomer's first command (issue 33)
    assert run.startswith(VENV + "pip install -e '.[mpich]' && mpiexec -n ")
    assert test.startswith(VENV + "pip install -e '.[mpich,test]' && ")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/readme_command.py $n" in ci and "for n in 1 2" in ci
    assert "pip install" not in ci.replace("pip install --dry-run", "")  # no copy of them


def test_readme_command_script_prints_each_command_and_rejects_others():
    script = ROOT / "scripts" / "readme_command.py"
    for n, want in zip(("1", "2"), _first_blocks(), strict=True):
        out = subprocess.run([sys.executable, str(script), n], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == want
    bad = subprocess.run([sys.executable, str(script), "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(300)
def test_readme_command_1_trains_digits_to_90_percent(tmp_path):
    run, _ = _first_blocks()
    argv = shlex.split(run.split("&&")[-1])
    assert argv[:2] == ["mpiexec", "-n"] and argv[3:6] == ["python", "-m", "hpcnet"]
    code, stdout, stderr, _ = hpcnet(
        *argv[6:], "--out", str(tmp_path / "out"), n=int(argv[2]), cwd=tmp_path
    )
    assert code == 0, stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["world_size"] == int(argv[2])
    assert summary["test_accuracy"] >= 0.90
    assert f"test accuracy {summary['test_accuracy']:.4f}" in stdout
