"""scripts/ft_scenarios.py without running a job: its command line and its table row
from a made-up summary.json (the scenarios themselves are tests/ft/'s)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ft_scenarios.py"


def _module():
    spec = importlib.util.spec_from_file_location("ft_scenarios", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ft_scenarios"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_help_runs_and_an_unknown_scenario_is_refused_with_exit_2():
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--only" in r.stdout, r.stderr
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "ulfm-replica,nope"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--only nope: unknown scenario" in r.stderr, r.stderr


def test_a_shard_kill_row_gives_detection_and_recovery_from_summary_json():
    m = _module()
    (sc,) = [s for s in m.SCENARIOS if s.name == "ulfm-shard-copy"]
    summary = {
        "test_accuracy": 0.93,
        "lost_ranks": [{"rank": 0, "role": "shard 0"}],
        "replicas": [{"client": 0, "pushes": 10}, {"client": 1, "pushes": 12}],
        "shards": [{"pushes_applied": [10, 12], "first_apply_unix": 100.5}],
        "regroups": [{"detected_unix": 100.1, "restored": [{"from": "replica copy"}]}],
    }
    res = {"command": m.shown_command(sc), "rc": 0, "expect_rc": 0, "killed_unix": 100.0}
    line = m.row(sc, {**res, "summary": summary})
    cells = [c.strip() for c in line.strip("|").split(" | ")]
    assert len(cells) == 6 and cells[2] == "0", cells
    assert "test acc 0.930" in cells[3] and "pushes applied/sent 22/22" in cells[3], cells
    assert "restored from replica copy" in cells[3], cells
    assert cells[4] == "0.10 s" and cells[5] == "0.50 s", cells
    hung = m.row(sc, {**res, "rc": "hung", "problem": "hung: killed after 240 s"})
    assert "hung (expected 0; hung: killed after 240 s)" in hung, hung


def test_sync_rows_and_the_matrix_over_trials():
    m = _module()
    (sc,) = [s for s in m.SCENARIOS if s.name == "ulfm-sync-replica"]
    assert m.command(sc, Path("/v"), Path("/o"))[1:4] == ["-m", "hpcnet", "launch"]

    def trial(killed, detected, took, acc, rc=0):
        summary = {
            "test_accuracy": acc,
            "lost_ranks": [{"rank": 1, "role": "replica 1"}],
            "regroups": [{"detected_unix": detected, "regroup_s": took, "step": 9}],
        }
        return {"name": sc.name, "command": "", "rc": rc, "expect_rc": 0,
                "killed_unix": killed, "summary": summary}  # fmt: skip

    runs = [trial(100.0, 100.1, 0.2, 0.95), trial(50.0, 50.3, 0.1, 0.97, rc="hung")]
    cells = [c.strip() for c in m.row(sc, runs[0]).strip("|").split(" | ")]
    assert cells[4] == "0.10 s" and cells[5] == "0.30 s", cells  # regroup done: 0.1 + 0.2
    table = m.matrix(runs, {sc.name: 0.96})
    (line,) = [ln for ln in table.splitlines() if ln.startswith(f"| {sc.name} ")]
    cells = [c.strip() for c in line.strip("|").split(" | ")]
    assert cells[1:4] == ["2", "1", "1"], cells  # trials, as documented, hung
    assert cells[4] == "0.20 / 0.30 s" and cells[5] == "0.35 / 0.40 s", cells
    assert cells[6] == "0.950 / 0.960" and cells[7] == "0.960" and cells[8] == "1.0 pp", cells
