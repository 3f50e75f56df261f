"""One module is enough for a new algorithm: tests/e2e/toy_algorithm.py registers
local SGD and trains it end to end under mpiexec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_cli import MPIEXEC

TOY = Path(__file__).with_name("toy_algorithm.py")


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(300)
def test_a_toy_algorithm_registered_in_one_file_trains_end_to_end(tmp_path):
    out = tmp_path / "out"
    cmd = [MPIEXEC, "-n", "2", sys.executable, str(TOY)]
    p = subprocess.run(
        [
            *cmd,
            "train",
            "--algo",
            "local_sgd",
            "--epochs",
            "3",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["algo"] == "local_sgd" and s["layout"]["replicas"] == 2
    assert s["allreduces"] == 0  # its replicas never communicated
    assert s["steps"] == 3 * s["steps_per_epoch"] and s["test_accuracy"] > 0.85
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "test" and records[-2]["step"] == s["steps"]
    # the registry knows it: info describes it, a bad name lists it
    p = subprocess.run([*cmd, "info", "--algo", "local_sgd"], capture_output=True, text=True)
    assert p.returncode == 0 and "algorithm: local_sgd: local SGD" in p.stdout, p.stderr
    p = subprocess.run([*cmd, "info", "--algo", "nope"], capture_output=True, text=True)
    assert p.returncode == 2 and "local_sgd" in p.stderr, p.stderr


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(300)
def test_the_toy_algorithms_own_option_is_a_flag_a_toml_key_and_changes_the_run(tmp_path):
    # declared in the one file's register call (hpcnet.options): nothing else knows it
    cmd = [MPIEXEC, "-n", "2", sys.executable, str(TOY)]
    p = subprocess.run([sys.executable, str(TOY), "train", "--help"], capture_output=True,
                       text=True)  # fmt: skip
    assert p.returncode == 0 and "--final-average" in p.stdout and "one-shot" in p.stdout
    (tmp_path / "run.toml").write_text("[algo]\nname = 'local_sgd'\nfinal_average = true\n")
    out = tmp_path / "out"
    p = subprocess.run(
        [*cmd, "train", "--config", str(tmp_path / "run.toml"), "--epochs", "2",
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["allreduces"] == 1 and s["config"]["algo"]["final_average"] is True
    p = subprocess.run([*cmd, "train", "--algo", "local_sgd", "--final-average", "--dry-run",
                        "--lr", "-1"], capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and "--lr -1.0: must be > 0" in p.stderr, p.stderr
    # a built-in run without the toy registered does not know the option
    builtin = [MPIEXEC, "-n", "2", sys.executable, "-m", "hpcnet"]
    p = subprocess.run([*builtin, "train", "--final-average", "--dry-run"],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and "--final-average" in p.stderr, p.stderr
