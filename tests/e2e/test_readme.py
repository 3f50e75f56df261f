"""The README's commands are run here, so they cannot rot."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.e2e.test_cli import MPIEXEC, hpcnet

README = Path(__file__).resolve().parents[2] / "README.md"


def _first_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", README.read_text(), re.S)[:2]


def test_readme_opens_with_install_and_test_commands():
    run, test = _first_blocks()
    assert run.startswith("pip install -e '.[mpich]' && mpiexec -n ")
    assert test.startswith("pip install -e '.[mpich,test]' && ")
    ci = (README.parent / ".ci" / "run").read_text()
    assert test.replace("pip install -e", "pip install -q -e") in ci


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(300)
def test_readme_command_1_trains_digits_to_90_percent(tmp_path):
    run, _ = _first_blocks()
    argv = shlex.split(run.split("&&", 1)[1])
    assert argv[:2] == ["mpiexec", "-n"] and argv[3:6] == ["python", "-m", "hpcnet"]
    code, stdout, stderr, _ = hpcnet(
        *argv[6:], "--out", str(tmp_path / "out"), n=int(argv[2]), cwd=tmp_path
    )
    assert code == 0, stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["world_size"] == int(argv[2])
    assert summary["test_accuracy"] >= 0.90
    assert f"test accuracy {summary['test_accuracy']:.4f}" in stdout
