"""Lines for the slow phases of a run (loading and checking data, compiling kernels,
evaluating the test split): a phase that takes longer than :data:`NOTICE_AFTER_S`
gets a line when it passes that mark and one when it ends, so a job is never silent
for long. Printed by one rank (rank 0), from a timer thread while the phase runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

NOTICE_AFTER_S = 2.0  # a phase shorter than this prints nothing


@contextmanager
def phase(text: str, say: bool, after: float = NOTICE_AFTER_S) -> Iterator[dict]:
    """Around a phase: ``hpcnet: TEXT ...`` once it has run ``after`` seconds, then
    ``hpcnet: TEXT: done in S s`` (plus the ``done`` entry of the yielded dict, if the
    body set one, e.g. ``"37 kernels"``) at its end. Nothing when ``say`` is False.

    Args:
        text: what the phase does (``"loading data"``).
        say: whether this rank prints (rank 0 of a verbose run).
        after: seconds before the first line.
    """
    status: dict = {}
    if not say:
        yield status
        return
    t0 = time.perf_counter()
    told = threading.Event()

    def tell() -> None:
        print(f"hpcnet: {text} ...", flush=True)
        told.set()

    timer = threading.Timer(after, tell)
    timer.daemon = True
    timer.start()
    try:
        yield status
    finally:
        timer.cancel()
        if told.is_set():
            extra = f" ({status['done']})" if status.get("done") else ""
            print(f"hpcnet: {text}: done in {time.perf_counter() - t0:.1f} s{extra}", flush=True)
