"""Adding replicas to a running Downpour job on purpose (``--max-replicas``).

DistBelief adds model replicas to a running job the way it replaces lost ones: the
new replica fetches the current parameters from the parameter server and starts
pushing (Dean et al. 2012, sec. 4.1). In hpcnet a user asks with::

    python -m hpcnet grow OUT [-n K]

which writes ``OUT/grow-request.json`` (atomically). Shard 0 looks for the file
every :data:`CHECK_S` seconds between applies, takes it (renames it away, so it is
acted on once) and, when ``--max-replicas`` leaves room, sets REGROUP in its head
(every replica leaves at its next fetch or push), tells the other shards through
the checkpoint request channel (value :data:`REGROUP_REQUEST`) and raises
:class:`Grow`. The live ranks then regroup as after a death
(:mod:`hpcnet.algos.downpour.regroup`), spawning K processes (``MPI_Comm_spawn``,
then ``Intercomm_merge``) that build the run from ``OUT/config.toml`` and train as
replicas. Works under MPICH and Open MPI alike (no fault tolerance needed).

A request is refused (one line on the run's output; the file is renamed
``grow-refused.json`` with the reason) when the run was started without
``--max-replicas``, when the cap leaves no room, or when some replica is within
:func:`margin_steps` of its last step (it could say done before it sees REGROUP).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hpcnet.comm import ft
from hpcnet.errors import ConfigError

REQUEST = "grow-request.json"
TAKEN = "grow-taken.json"
REFUSED = "grow-refused.json"
CHECK_S = 0.5  # seconds between shard 0's looks for a request
REGROUP_REQUEST = 2.0  # on the shards' checkpoint request channel: leave and regroup


class Grow(ft.PeerDied):
    """Shard 0 leaves its service loop to add ``count`` replicas (the run regroups)."""

    def __init__(self, count: int):
        super().__init__([])
        self.count = count


def request(out: Path, count: int) -> Path:
    """Writes ``out/grow-request.json`` asking the running job in ``out`` for ``count``
    more replicas; returns its path.

    Raises:
        ConfigError: ``out`` holds no run (no config.toml), its run is not Downpour,
            was started without ``--max-replicas``, or ``count`` < 1.
    """
    from hpcnet.config import load_config

    out = Path(out)
    if count < 1:
        raise ConfigError(f"grow -n {count}: must be >= 1")
    cfg_path = out / "config.toml"
    if not cfg_path.is_file():
        raise ConfigError(f"grow {out}: no run there (no config.toml)")
    cfg = load_config(str(cfg_path), {})
    if cfg.algo.name != "downpour":
        raise ConfigError(f"grow {out}: the run is {cfg.algo.name}; only downpour adds replicas")
    if cfg.faults.max_replicas < 1:
        raise ConfigError(
            f"grow {out}: the run was started without --max-replicas; it cannot add replicas"
        )
    if (out / "summary.json").exists():
        raise ConfigError(f"grow {out}: the run has finished (summary.json is there)")
    path = out / REQUEST
    tmp = path.with_name(f".{REQUEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"replicas": count, "asked_unix": time.time()}))
    os.replace(tmp, path)
    return path


def take(out: Path) -> int | None:
    """Shard 0: the replicas asked for by a request in ``out`` (renamed to
    grow-taken.json, so it is acted on once), or None when there is none."""
    path, taken = Path(out) / REQUEST, Path(out) / TAKEN
    try:
        os.replace(path, taken)
        return max(0, int(json.loads(taken.read_text())["replicas"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # unreadable: refused below


def refuse(out: Path, asked: int, why: str) -> str:
    """Records a refused request (grow-refused.json) and returns the line to print."""
    line = f"downpour: a request for {asked} more replica(s) refused: {why}"
    try:
        (Path(out) / REFUSED).write_text(json.dumps({"replicas": asked, "why": why}))
        (Path(out) / TAKEN).unlink(missing_ok=True)
    except OSError:
        pass
    return line


def margin_steps(n_fetch: int, n_push: int) -> int:
    """Steps a replica must have left for a regroup to reach it: it reads shard 0's
    head at every fetch and push, so within max(n_fetch, n_push) steps; twice that and
    the lag of the STEPS counter (n_push) make it safe."""
    return 2 * max(n_fetch, n_push) + n_push + 2
