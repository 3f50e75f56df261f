"""PreemptionWatch: SIGUSR1/SIGTERM/SIGINT noted, not fatal, and passed between nested
watches (a command's, a search's, a run's); a second SIGINT aborts."""

import os
import signal
import subprocess
import sys
import time

import pytest

from hpcnet.run.preempt import STOP_REQUESTED, TIME_LIMIT, PreemptionWatch


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_noted_and_the_old_handler_comes_back(signum):
    before = signal.getsignal(signum)
    watch = PreemptionWatch()
    os.kill(os.getpid(), signum)  # would end this process without the watch
    assert watch.signum == signum
    watch.close()
    assert signal.getsignal(signum) == before


def test_a_watch_starts_with_the_signal_its_enclosing_watch_saw():
    # a signal during a run's setup: the run (the inner watch) stops at its first step
    outer = PreemptionWatch()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        inner = PreemptionWatch()
        assert inner.signum == signal.SIGUSR1
        inner.close()
    finally:
        outer.close()


def test_a_closing_watch_hands_its_signal_to_the_enclosing_one():
    # a signal that came as a search's trial ended: the search (outer) must see it
    outer = PreemptionWatch()
    try:
        inner = PreemptionWatch()
        assert inner.signum == 0
        os.kill(os.getpid(), signal.SIGTERM)
        assert inner.signum == signal.SIGTERM and outer.signum == 0
        inner.close()
        assert outer.signum == signal.SIGTERM
    finally:
        outer.close()


def test_a_stop_request_stays_with_its_own_run():
    # early stopping of one trial is no signal to the search around it
    outer = PreemptionWatch()
    try:
        inner = PreemptionWatch()
        inner.request_stop()
        assert inner.signum == STOP_REQUESTED
        inner.close()
        assert outer.signum == 0
        fresh = PreemptionWatch()
        assert fresh.signum == 0
        fresh.close()
    finally:
        outer.close()


def test_a_time_limit_stops_like_a_signal_once_it_has_passed():
    watch = PreemptionWatch(time_limit=0.2)
    try:
        assert watch.signum == 0  # not yet
        time.sleep(0.25)
        assert watch.signum == TIME_LIMIT
        os.kill(os.getpid(), signal.SIGUSR1)  # noted, but the first reason stays
        assert watch.signum == TIME_LIMIT
    finally:
        watch.close()
    unlimited = PreemptionWatch(time_limit=None)
    assert unlimited.signum == 0
    unlimited.close()


def test_ctrl_c_is_handed_out_of_a_run_without_aborting():
    # Ctrl-C during a run (inner), which then ends: the command's watch (outer) holds it,
    # and no KeyboardInterrupt replaces the run's own "stopped by SIGINT" ending
    before = signal.getsignal(signal.SIGINT)
    outer = PreemptionWatch()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        inner = PreemptionWatch()
        assert inner.signum == signal.SIGINT
        inner.close()
        assert outer.signum == signal.SIGINT
    finally:
        outer.close()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_second_ctrl_c_aborts_at_once_in_one_line():
    code = (
        "import os, signal, time\n"
        "from hpcnet.run.preempt import PreemptionWatch\n"
        "w = PreemptionWatch()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"  # the same Ctrl-C, delivered twice
        "print('noted', w.signum, flush=True)\n"
        "time.sleep(0.6)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"  # Ctrl-C again
        "time.sleep(5)\n"
        "print('not aborted')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 130, p.stderr
    assert p.stdout == f"noted {int(signal.SIGINT)}\n"
    lines = p.stderr.splitlines()
    assert len(lines) == 2 and "every rank stops at its next step boundary" in lines[0]
    assert lines[1] == "hpcnet: interrupted again (Ctrl-C): aborting without a checkpoint"
