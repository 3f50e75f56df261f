"""Point-to-point messages: small vectors over one communicator and one tag.

A :class:`Channel` is a communicator, a tag and a dtype (float64 by default):
every message on it is one 1-D array of that dtype, sent with the buffer API
(no pickling), received into an array of exactly the length that arrived. The
typed messages of a protocol (e.g. :mod:`hpcnet.algos.sandblaster.protocol`)
``pack()`` themselves into such an array and ``unpack()`` one. A :class:`JsonChannel`
carries small control messages (dicts) as JSON text on the same buffer API: no
message is ever pickled.

Who calls what: a message sent on a channel must be received on the same
channel (the same tag) by its destination, with :meth:`Channel.poll` or
:meth:`Channel.recv`; a message nobody receives is never delivered, and a
receive nobody sends to times out (every wait here has a deadline, through
:mod:`hpcnet.comm.waits`). MPI keeps the order of the messages from one
sender on one channel (non-overtaking), and no order between senders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype

from hpcnet.comm import ft
from hpcnet.comm.waits import Backoff, poll_until, probe_polling

ANY_SOURCE = MPI.ANY_SOURCE


class Channel:
    """Vector messages of one dtype over ``comm`` with one ``tag``.

    Args:
        comm: the communicator (ranks are its ranks).
        tag: the message tag; one channel per kind of traffic, so a receive for one
            never takes a message of another.
        dtype: the element type of every message (float64: exact integers up to 2**53).
    """

    def __init__(self, comm: MPI.Comm, tag: int, dtype=np.float64):
        self.comm, self.tag = comm, tag
        self.dtype = np.dtype(dtype)
        self._mpi_type = from_numpy_dtype(self.dtype)

    def _receive(self, status: MPI.Status, out: np.ndarray | None) -> tuple[int, np.ndarray]:
        n = status.Get_count(self._mpi_type)
        buf = np.empty(n, self.dtype) if out is None else out[:n]
        source = status.Get_source()
        self.comm.Recv(buf, source=source, tag=self.tag)
        return source, buf

    def send(self, data, dest: int) -> None:
        """Sends ``data`` (1-D, converted to the channel's dtype) to rank ``dest``.

        A standard-mode ``Send``: small messages go out eagerly and it returns at
        once; a large one may wait until ``dest`` receives it.
        """
        self.comm.Send(np.ascontiguousarray(data, self.dtype), dest=dest, tag=self.tag)

    def send_all(self, data, dests: Sequence[int], timeout: float, what: str) -> None:
        """Sends the same ``data`` to every rank of ``dests`` (one ``Isend`` each) and
        waits, sleeping, until every send has completed.

        Raises:
            TimeoutError: a send had not completed after ``timeout`` seconds.
        """
        buf = np.ascontiguousarray(data, self.dtype)
        reqs = [self.comm.Isend(buf, dest=d, tag=self.tag) for d in dests]
        poll_until(lambda: MPI.Request.Testall(reqs), timeout, what)

    def poll(
        self, source: int = ANY_SOURCE, out: np.ndarray | None = None
    ) -> tuple[int, np.ndarray] | None:
        """Receives one message from ``source`` (any rank by default) if one has
        arrived; never waits.

        Args:
            out: where to receive (a prefix of it is used); None: a new array.
        Returns:
            (the sender's rank, the message) or None when nothing is there (also when
            MPI reports a dead rank, under fault tolerance: :func:`hpcnet.comm.ft.iprobe`).
        """
        status = MPI.Status()
        if not ft.iprobe(self.comm, source, self.tag, status):
            return None
        return self._receive(status, out)

    def recv(
        self,
        source: int,
        timeout: float,
        what: str,
        backoff: Backoff | None = None,
        give_up=None,
    ) -> np.ndarray:
        """Waits (sleeping, ``backoff``) for one message from ``source`` and returns it.
        ``give_up()`` runs between polls and may raise to end the wait (e.g.
        :meth:`hpcnet.comm.ft.DeathWatch.check`: the sender died).

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds; names ``what``.
        """
        status = MPI.Status()
        probe_polling(self.comm, source, self.tag, status, timeout, what, backoff, give_up)
        return self._receive(status, None)[1]

    def drain(self) -> int:
        """Receives and drops every message that has arrived; returns how many."""
        n = 0
        while self.poll() is not None:
            n += 1
        return n


class JsonChannel:
    """Small JSON-able messages (dicts of numbers, strings, lists) over ``comm`` with
    one ``tag``: each is sent as its UTF-8 JSON text on a ``uint8`` :class:`Channel`
    (the buffer API; nothing is pickled, so a message never runs code on receipt).

    For a protocol's control messages (a search leader's question, the scheduler's
    answer), never for arrays of parameters. NumPy scalars are sent as Python numbers;
    tuples arrive as lists.
    """

    def __init__(self, comm: MPI.Comm, tag: int):
        self._bytes = Channel(comm, tag, np.uint8)
        self.comm, self.tag = comm, tag

    @staticmethod
    def _encode(message) -> np.ndarray:
        text = json.dumps(message, default=_plain, allow_nan=True)
        return np.frombuffer(text.encode(), np.uint8)

    @staticmethod
    def _decode(buf: np.ndarray):
        return json.loads(buf.tobytes().decode())

    def send(self, message, dest: int) -> None:
        """Sends ``message`` to rank ``dest`` (a standard-mode ``Send``, see
        :meth:`Channel.send`).

        Raises:
            TypeError: ``message`` holds something JSON cannot write.
        """
        self._bytes.send(self._encode(message), dest)

    def poll(self, source: int = ANY_SOURCE):
        """(the sender's rank, the message) if one has arrived, else None; never waits
        (:meth:`Channel.poll`)."""
        got = self._bytes.poll(source)
        return None if got is None else (got[0], self._decode(got[1]))

    def recv(
        self, source: int, timeout: float, what: str, backoff: Backoff | None = None, give_up=None
    ):
        """Waits (sleeping) for one message from ``source`` and returns it
        (:meth:`Channel.recv`).

        Raises:
            StallError: nothing arrived within ``timeout`` seconds; names ``what``.
        """
        return self._decode(self._bytes.recv(source, timeout, what, backoff, give_up))


def _plain(value):
    """JSON's fallback: a NumPy scalar or array as Python numbers."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"a message holds a {type(value).__name__}, which JSON cannot send")
