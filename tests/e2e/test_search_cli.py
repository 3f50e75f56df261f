"""``python -m hpcnet search`` as a user runs it: bad spaces in one line, a real grid
search on the digits, and ``--resume`` after the search was killed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.e2e.procs import start_run
from tests.e2e.test_cli import MPIEXEC, hpcnet

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")

TRAIN = ["--", "--model", "mlp", "--max-steps", "30", "--threads", "1", "--batch-size", "32"]


def _space(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.toml"
    p.write_text(text)
    return p


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "text, says",
    [
        ("[fixed]\n'run.epochs' = 1\n", "[space]"),
        ("[space]\n'optim.nope' = { values = [1, 2] }\n", "optim.nope"),
        ("[space]\n'optim.lr' = { low = 0.1, high = 0.01 }\n", "optim.lr"),
        ("[space]\n'optim.lr' = { low = 0.0, high = 0.1, log = true }\n", "optim.lr"),
        ("[space]\n'optim.lr' = { values = [] }\n", "optim.lr"),
        ("[space]\n'optim.momentum' = { values = [0.5, 1.5] }\n", "momentum"),
        ("[space]\n'optim.lr' = { values = [0.1] }\n[search]\nbogus = 1\n", "bogus"),
        ("[space\n", "space.toml"),
        ("[space]\n'model.name' = { values = ['mlp', 'nosuch'] }\n", "'nosuch': unknown model"),
        ("[space]\n'optim.lr' = { values = [0.1] }\n[fixed]\n'algo.name' = 'downpour'\n",
         "needs 2 ranks, got 1"),
    ],
    ids=["no-space", "unknown-key", "low>=high", "log-through-0", "empty", "train-rejects",
         "unknown-search-key", "not-toml", "no-such-model", "layout-on-a-group"],
)  # fmt: skip
def test_a_bad_space_is_one_line_and_exit_2(tmp_path, text, says):
    space = _space(tmp_path, text)
    code, _, stderr, _ = hpcnet("search", "--space", str(space), "--out", str(tmp_path / "s"))
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and says in stderr, stderr
    assert not (tmp_path / "s").exists()  # nothing started


@pytest.mark.timeout(120)
def test_a_group_size_the_ranks_do_not_split_into_is_one_line(tmp_path):
    space = _space(tmp_path, "[space]\n'optim.lr' = { values = [0.1] }\n")
    code, _, stderr, _ = hpcnet(
        "search", "--space", str(space), "--group-size", "4", "--out", str(tmp_path / "s"), n=2
    )
    assert (
        code == 2
        and stderr == "hpcnet: error: --group-size 4: 2 ranks do not split into groups of it\n"
    )


@pytest.mark.timeout(300)
def test_a_grid_search_trains_records_and_writes_a_config_train_accepts(tmp_path):
    space = _space(tmp_path, "[space]\n'optim.lr' = { values = [0.02, 0.1] }\n")
    out = tmp_path / "search"
    code, stdout, stderr, _ = hpcnet(
        "search", "--space", str(space), "--out", str(out), *TRAIN, timeout=240, cwd=tmp_path
    )
    assert code == 0, stderr
    recs = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert sorted(r["params"]["optim.lr"] for r in recs) == [0.02, 0.1]
    assert all(r["status"] == "completed" and r["metric"] > 0.5 for r in recs), recs
    for r in recs:  # each trial is an ordinary run with its own results
        summary = json.loads((out / "trials" / f"{r['id']:04d}" / "summary.json").read_text())
        assert summary["test_accuracy"] == r["metric"]
    assert "best: trial" in stdout and "test_accuracy" in stdout
    assert len((out / "results.csv").read_text().splitlines()) == 3
    code, stdout, stderr, _ = hpcnet(
        "train", "--config", str(out / "best.toml"), "--dry-run", cwd=tmp_path
    )
    assert code == 0 and "dry run: nothing trained" in stdout, stderr


@pytest.mark.timeout(600)
def test_resume_after_a_kill_keeps_finished_trials_and_runs_the_rest(tmp_path):
    lrs = [0.01, 0.02, 0.05, 0.1]
    space = _space(tmp_path, f"[space]\n'optim.lr' = {{ values = {lrs} }}\n")
    out = tmp_path / "search"
    args = ["search", "--space", str(space)]
    # (start_run adds --out OUT after the arguments: the train flags go through --config)
    conf = tmp_path / "trial.toml"
    conf.write_text("[model]\nname = 'mlp'\n[run]\nmax_steps = 60\nthreads = 1\n")
    args += ["--config", str(conf)]
    jsonl = out / "trials.jsonl"
    p = start_run(2, args, out, lambda: jsonl.exists() and jsonl.read_text().count("\n") >= 1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    before = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert 1 <= len(before) < len(lrs)
    stamps = {
        r["id"]: (out / "trials" / f"{r['id']:04d}" / "summary.json").stat().st_mtime_ns
        for r in before
    }
    code, _, stderr, _ = hpcnet(*args, "--out", str(out), "--resume", timeout=300, cwd=tmp_path)
    assert code == 0, stderr
    after = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["id"] for r in after) == list(range(len(lrs)))  # each trial once
    assert sorted(r["params"]["optim.lr"] for r in after) == lrs
    for i, stamp in stamps.items():  # finished trials were not run again
        assert (out / "trials" / f"{i:04d}" / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.timeout(400)
def test_median_stopping_stops_a_clearly_worse_trial(tmp_path):
    # 2 groups: trials 0-3 (good learning rates) run first; by the time the hopeless one
    # (lr 1e-6) starts, at least 3 have completed and its accuracy is far below theirs
    lrs = [0.05, 0.1, 0.08, 0.06, 1e-6]
    space = _space(tmp_path, f"[space]\n'optim.lr' = {{ values = {lrs} }}\n")
    out = tmp_path / "search"
    train = ["--", "--model", "mlp", "--max-steps", "200", "--log-every", "10",
             "--threads", "1", "--batch-size", "32"]  # fmt: skip
    code, _, stderr, _ = hpcnet(
        "search", "--space", str(space), "--early-stop", "median", "--out", str(out), *train,
        timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    recs = {
        r["params"]["optim.lr"]: r
        for r in map(json.loads, (out / "trials.jsonl").read_text().splitlines())
    }
    bad = recs[1e-6]
    assert bad["status"] == "stopped" and bad["steps"] < 200, bad
    assert bad["metric"] < 0.5  # its last training accuracy
    assert recs[0.05]["status"] == recs[0.1]["status"] == "completed"  # nothing to compare


@pytest.mark.timeout(600)
def test_resume_of_a_killed_de_search_continues_its_generation(tmp_path):
    space = _space(
        tmp_path,
        "[space]\n'optim.lr' = { low = 0.01, high = 0.3, log = true }\n"
        "'optim.momentum' = { low = 0.0, high = 0.9 }\n",
    )
    conf = tmp_path / "trial.toml"
    conf.write_text("[model]\nname = 'mlp'\n[run]\nmax_steps = 40\nthreads = 1\n")
    out = tmp_path / "search"
    args = ["search", "--space", str(space), "--strategy", "de", "--population", "4",
            "--generations", "2", "--seed", "3", "--config", str(conf)]  # fmt: skip
    jsonl = out / "trials.jsonl"
    # killed once generation 1 is under way (generation 0: trials 0-3)
    p = start_run(2, args, out, lambda: jsonl.exists() and jsonl.read_text().count("\n") >= 5)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    before = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert 5 <= len(before) < 12
    code, _, stderr, _ = hpcnet(*args, "--out", str(out), "--resume", timeout=300, cwd=tmp_path)
    assert code == 0, stderr
    after = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["id"] for r in after) == list(range(12))  # every trial once
    assert after[: len(before)] == before  # the finished ones kept as they were
    gens = {r["id"]: r["generation"] for r in after}
    assert [gens[i] for i in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    # the same trials as a search never killed (DE's trials follow from the seed and
    # the metrics; mlp on one rank per trial is deterministic)
    whole = tmp_path / "whole"
    code, _, stderr, _ = hpcnet(*args, "--out", str(whole), timeout=300, cwd=tmp_path)
    assert code == 0, stderr
    ref = {
        json.loads(x)["id"]: json.loads(x)["params"]
        for x in (whole / "trials.jsonl").read_text().splitlines()
    }
    assert {r["id"]: r["params"] for r in after} == ref
