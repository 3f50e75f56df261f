"""The README's commands are run here, so they cannot rot.

Commands 1 and 2 (the first two ``sh`` blocks) are CI's own (``.ci/run``); command 1's
training job runs here too. Every later ``sh`` block is one example: each of its commands
runs as written, in a fresh directory, except the few that need what this machine cannot
have (Slurm, Open MPI with ULFM, a download), which are checked to parse instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_cli import MPIEXEC, hpcnet

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV = "python3 -m venv .venv && . .venv/bin/activate && "
FASHION_IDX = Path("/usr/share/datasets/fashion-mnist")


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


def test_readme_is_short_and_keeps_its_measured_figures_in_benchmarks():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "README.md: at most 250 lines; move the rest to docs/"
    assert "(benchmarks/" in text  # figures are linked ...
    assert not re.search(r"\d+(\.\d+)? ?(samples/s|GFLOP/s)|\d\.\d+x ", text)  # ... not copied


def _example_blocks() -> list[tuple[str, str]]:
    """(id, commands) of every ``sh`` block after the first two, in README order; the id
    is the block's section heading, numbered when a section has several blocks."""
    blocks = []
    for section in re.split(r"\n## ", README.read_text()):
        title = re.sub(r"\W+", "-", section.split("\n", 1)[0].lower()).strip("-")
        found = re.findall(r"```sh\n(.*?)\n```", section, re.S)
        for i, b in enumerate(found):
            algo = re.search(r"--algo (\w+)", b)
            blocks.append((f"{title}-{algo[1] if algo else i}" if len(found) > 1 else title, b))
    return blocks[2:]


EXAMPLES = _example_blocks()


def _commands(block: str) -> list[list[str]]:
    """The block's commands as argv lists (continuation lines joined, comments dropped)."""
    lines = block.replace("\\\n", " ").splitlines()
    return [argv for line in lines if (argv := shlex.split(line, comments=True))]


def _local(argv: list[str], cwd: Path) -> list[str]:
    """Paths of the repository (examples/, jobs/) made absolute, as the commands run in a
    fresh directory; the Debian Fashion-MNIST folder, where this machine lacks it, becomes
    a small folder of the same IDX files (the import reads any MNIST-format files)."""
    out = []
    for a in argv:
        if a == str(FASHION_IDX) and not (FASHION_IDX / "train-images-idx3-ubyte.gz").exists():
            from tests.unit.test_data_idx import make_idx_dir

            make_idx_dir(cwd / "idx", n_train=256, n_test=64, hw=(28, 28))
            a = str(cwd / "idx")
        elif not a.startswith("-") and not os.path.isabs(a) and (ROOT / a).is_file():
            a = str(ROOT / a)
        elif ":" in a and (ROOT / a.rsplit(":", 1)[0]).is_file():  # --model FILE.py:FUNCTION
            a = str(ROOT / a)
        out.append(a)
    return out


def _env(cwd: Path, assigned: dict[str, str]) -> dict[str, str]:
    """The README's shell: this environment's bin first on PATH (its python, mpiexec)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return dict(os.environ, PATH=path, HPCNET_DATA=str(cwd), **assigned)


def _run(argv: list[str], cwd: Path) -> str:
    """Runs one README command as written (or checks it parses, where it cannot run
    here); returns its stdout. Fails on a command form it does not know: teach it."""
    assigned = {}
    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value command ...
        name, value = argv.pop(0).split("=", 1)
        assigned[name] = value
    if "&&" in argv:
        # making the Open MPI environment (`python3 -m venv .venv-ompi && ... pip install`)
        # downloads and builds; commands 1 and 2 prove installs in CI. Checked to parse.
        assert argv[:4] == ["python3", "-m", "venv", ".venv-ompi"], argv
        p = subprocess.run(["bash", "-n", "-c", shlex.join(argv).replace("'&&'", "&&")])
        assert p.returncode == 0, argv
        return ""
    if argv[0] == "sbatch":
        # needs Slurm: the script must exist and be valid bash (its run is checked with
        # --dry-run by the next README line and by tests/e2e/test_jobs.py)
        p = subprocess.run(["bash", "-n", str(ROOT / argv[1])], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return ""
    if argv[0] == ".venv-ompi/bin/mpiexec":
        # Open MPI with ULFM (`--with-ft ulfm`) is not in this environment (tests/ft runs it
        # under scripts/test.sh): the same hpcnet command is checked with --dry-run instead
        # (flags, data, layout for that many ranks) under this environment's MPI
        n = int(argv[argv.index("-n") + 1])
        i = argv.index("hpcnet")
        assert argv[i - 2 : i] == [".venv-ompi/bin/python", "-m"], argv
        code, stdout, stderr, _ = hpcnet(*argv[i + 1 :], "--dry-run", n=n, cwd=cwd, timeout=180)
        assert code == 0, stderr
        assert "dry run" in stdout + stderr
        return stdout
    argv = _local(argv, cwd)
    if argv[0] == "mpiexec" and argv[3] == "python" and argv[4].endswith(".py"):
        # a script of the repository's examples/, run on every rank (hpcnet.train)
        p = subprocess.run(
            [MPIEXEC, "-n", argv[2], sys.executable, *argv[4:]],
            capture_output=True, text=True, cwd=cwd, env=_env(cwd, assigned), timeout=180,
        )  # fmt: skip
        assert p.returncode == 0, f"{shlex.join(argv)}\n{p.stderr}"
        return p.stdout
    if argv[0] == "mpiexec":
        assert argv[1] == "-n" and argv[3:6] == ["python", "-m", "hpcnet"], argv
        code, stdout, stderr, _ = hpcnet(*argv[6:], n=int(argv[2]), cwd=cwd, timeout=180)
        assert code == 0, f"{shlex.join(argv)}\n{stderr}"
        return stdout
    if argv[0] == "python":  # python -m hpcnet ..., python examples/...: this environment's
        argv = [sys.executable, *argv[1:]]
    assert argv[0] in (sys.executable, "bash"), f"README command this test cannot run: {argv}"
    p = subprocess.run(
        argv, capture_output=True, text=True, cwd=cwd, env=_env(cwd, assigned), timeout=180
    )
    assert p.returncode == 0, f"{shlex.join(argv)}\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("block", [b for _, b in EXAMPLES], ids=[i for i, _ in EXAMPLES])
def test_readme_example_runs(block, tmp_path):
    if "torch" in block and importlib.util.find_spec("torch") is None:
        pytest.skip("the PyTorch example needs PyTorch (pip install torch)")
    stdout = "".join(_run(argv, tmp_path) for argv in _commands(block))
    if "hpcnet train" in block and "--dry-run" not in block and ".venv-ompi" not in block:
        # a training run: it finished and wrote its results in the fresh directory
        summaries = list(tmp_path.glob("runs/*/summary.json"))
        runs = block.count("hpcnet train")
        assert len(summaries) == runs == stdout.count("test accuracy"), (summaries, stdout)
        for summary in summaries:
            assert 0.0 <= json.loads(summary.read_text())["test_accuracy"] <= 1.0
    if "hpcnet search" in block:
        assert (tmp_path / "runs" / "de" / "best.toml").exists(), stdout


def test_every_readme_example_is_run():
    # the examples the issue asks for are all here, and each is a block the test above runs
    text = " ".join(b for _, b in EXAMPLES)
    for algo in ("sync", "avg", "downpour", "sandblaster"):
        assert f"--algo {algo}" in text, algo
    for piece in ("--partitions", "data import ", "hpcnet search", "sbatch", "--with-ft"):
        assert piece in text, piece


def test_readme_model_table_is_the_layer_registry():
    # the table of layer types and arguments says what a model file may hold: every
    # type, every argument of its class, with the defaults the classes have
    import inspect

    from hpcnet.nn.specs import LAYER_TYPES, layer_arguments

    section = README.read_text().split("## Your own model", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`.+?`) \| (.+?) \|$", section, re.M)
    listed = {}
    for types, args in rows[1:]:  # after the header row
        for t in re.findall(r"`(\w+)`", types):
            listed[t] = args
    assert set(listed) == set(LAYER_TYPES), sorted(set(listed) ^ set(LAYER_TYPES))
    for kind, args in listed.items():
        for name, default in layer_arguments(kind):
            assert f"`{name}`" in args, (kind, name)
            if default is not inspect.Parameter.empty and default is not None:
                assert f"({default}" in args, (kind, name, default)


def test_readme_model_summary_is_what_info_prints(tmp_path):
    section = README.read_text().split("## Your own model", 1)[1].split("\n## ", 1)[0]
    shown = re.search(r"```text\n(.*?)\n```", section, re.S)[1]
    p = subprocess.run(
        [sys.executable, "-m", "hpcnet", "info", "--model", "examples/models/small_cnn.toml",
         "--data", "digits"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert shown in p.stdout, "README's summary differs from `info`'s: paste it again"
