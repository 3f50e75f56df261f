"""No file of the repository refers to files outside it.

The team's design notes, peer figures and house style live outside the repository;
what a reader of the repository needs from them is in its own docs (docs/design.md,
docs/development.md) and its measured figures in benchmarks/. A reference to the outside
files, or an absolute path into the machine that holds them, is a dead end for everyone
else, so every tracked text file is checked for one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\b(DESIGN|PEERS|STYLE)\.md\b|(?<![\w.])/work/")

pytestmark = pytest.mark.timeout(60)


def _tracked_text_files() -> list[Path]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    p = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"not a git checkout: {p.stderr.decode(errors='replace').strip()}")
    files = []
    for name in p.stdout.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


def test_no_tracked_file_refers_to_files_outside_the_repository():
    this = Path(__file__).resolve()
    found = []
    for path in _tracked_text_files():
        if path.resolve() == this:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, (
        "refers to files outside the repository; point at docs/ (e.g. docs/design.md, "
        '"Roles") or at the figures in benchmarks/ instead:\n' + "\n".join(found)
    )


def test_the_check_finds_what_it_looks_for():
    for line in ("see shared/DESIGN.md", "(PEERS.md)", "STYLE.md, 'Tests'", ". /work/venv"):
        assert OUTSIDE.search(line), line
    for line in ("docs/design.md", "benchmarks/README.md", "a shared-memory window"):
        assert not OUTSIDE.search(line), line
