"""The layering written in pyproject.toml's import-linter contracts holds, and an import
that points up a floor breaks it (docs/design.md, "Package layout")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter not installed (test extra)")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))  # the copy, before the installed package
    return subprocess.run(
        [LINT, "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "hpcnet", tmp_path / "hpcnet", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_its_contracts():
    p = _lint(ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 kept, 0 broken" in p.stdout, p.stdout


@pytest.mark.parametrize(
    "module,line,contract",
    [
        # config would reach up to the algorithms (the registry): the layers contract
        ("config.py", "from hpcnet.algos import get_algorithm", "hpcnet's floors"),
        ("comm/watchdog.py", "from hpcnet.tools import launch", "hpcnet's floors"),
        # inside a function, as the old late imports did: still an import
        ("layout.py", "def _f():\n    import hpcnet.algos\n", "hpcnet's floors"),
        # the search's circle of old: records (the bottom) importing the runner
        ("search/records.py", "from hpcnet.search import runner", "the search"),
    ],
)
def test_an_import_that_points_up_breaks_a_contract(tmp_path, module, line, contract):
    root = _copy(tmp_path)
    assert _lint(root).returncode == 0  # the copy itself keeps them
    path = root / "hpcnet" / module
    path.write_text(path.read_text() + "\n" + line + "\n")
    p = _lint(root)
    assert p.returncode != 0, p.stdout
    assert f"{contract}" in p.stdout and "BROKEN" in p.stdout, p.stdout
