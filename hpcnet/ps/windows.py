"""The RMA windows of the parameter shards, and the layout of their control area.

Every parameter shard ``s`` owns three windows, each created collectively over
the library communicator with memory only at the shard's rank (one window
per shard and purpose: MPI serialises accumulates per window, so shards do not
contend; docs/design.md, "Known MPI pitfalls"):

* ``param``  (n_s,) float32: the shard's slice ``[lo, hi)`` of the flat parameter
  vector. Clients ``Get`` it; the shard updates it in place.
* ``inbox``  (C * K * n_s,) float32: K slots per client (``--inbox-slots``, default
  :data:`SLOTS` = 2). Client c ``Put``s its k-th push (counted from 0) into its
  slot ``k % K`` once the shard has consumed push ``k - K`` (only c writes c's
  slots), and the shard consumes c's pushes in order. With two slots a client may
  push while the shard still applies its previous push (double buffering: it
  waits only when it is two pushes ahead), at twice the inbox memory.
* ``ctrl``   float64 counters (exact integers up to 2**53): a head
  (:data:`VERSION`, :data:`STOP`, ...) and a block per client
  (:data:`READY`, :data:`ACK`, ...). Clients only ``Accumulate(SUM)`` into it
  and ``Get`` from it; the shard writes it with local stores + ``Win.Sync``.

A *client* is the parameter server's unit: one replica partition, with its own
inbox slot and counter block, ``client = replica * M + partition`` for M
partitions per replica (C = R * M clients; without model parallelism, one client
per replica).

All windows are created with the info hints ``accumulate_ordering=none`` (no
ordering between accumulates is needed: completion is enforced with
``Flush``) and ``accumulate_ops=same_op`` (only SUM, plus Gets, ever touch them).

Who must call what: :func:`create_shard_windows` and :meth:`ShardWindows.free`
are collective over the communicator, on every rank, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcnet.errors import LayoutError

# ctrl head
VERSION = 0  # updates applied by this shard (its parameter version)
STOP = 1  # 1.0 once this shard has finished: clients stop
APPLIED = 2  # pushes applied, summed over clients (== VERSION)
PREEMPT = 3  # signal number once the run is stopping for SIGTERM/SIGUSR1: clients stop
REGROUP = 4  # 1.0 once a rank died and the run regroups (--replace-lost): clients leave
HEAD = 5
# per-client block, at HEAD + c * PER_CLIENT
READY = 0  # pushes client c has completed into its inbox slot (client: += 1)
ACK = 1  # pushes of client c the shard has consumed (shard writes)
# VERSION of this shard the pending push in slot k was computed on (client: += v;
# the shard zeroes it when it empties the slot), at BASE_VERSION + k, k < MAX_SLOTS
BASE_VERSION = 2
MAX_SLOTS = 2
DONE = 4  # 1.0 when client c has finished its work (client: += 1)
HEARTBEAT = 5  # client c's liveness counter (client: += 1 at each fetch and push)
STEPS = 6  # training steps client c has completed (client: += steps at each push)
LOSS = 7  # sum of client c's per-sample training losses, for progress lines
CORRECT = 8  # correctly classified training samples of client c
SAMPLES = 9  # training samples client c has processed
SIGNAL = 10  # signal number client c's replica got (client: += signum, once)
# SSP (--max-staleness, :mod:`hpcnet.ps.ssp`), at shard 0 only:
CLOCK = 11  # steps client c's replica has completed (partition 0: += new steps, each step)
LOST = 12  # 1.0 while the shard counts client c lost (shard writes; 0.0 if it comes back)
PER_CLIENT = 13
SLOTS = 2  # inbox slots per client by default (--inbox-slots)


def ctrl_size(n_clients: int) -> int:
    """Number of float64 counters in a shard's control window."""
    return HEAD + n_clients * PER_CLIENT


def field(client: int, name: int) -> int:
    """Index of per-client counter ``name`` of ``client`` in the control window."""
    return HEAD + client * PER_CLIENT + name


def shard_ranges(
    n_params: int, n_shards: int, boundaries: list[int] | None = None
) -> list[tuple[int, int]]:
    """Splits ``[0, n_params)`` into ``n_shards`` contiguous ranges balanced by size.

    With ``boundaries`` (e.g. the layers' parameter offsets), each cut moves to the
    nearest boundary when that keeps every range non-empty, so a layer's tensor
    is not split across shards unless it must be.

    Raises:
        LayoutError: ``n_shards`` < 1 or > ``n_params``.
    """
    if n_shards < 1:
        raise LayoutError(f"--shards {n_shards}: need at least 1 parameter shard")
    if n_shards > n_params:
        raise LayoutError(
            f"--shards {n_shards}: more shards than the model's {n_params} parameters"
        )
    cuts = [round(i * n_params / n_shards) for i in range(n_shards + 1)]
    if boundaries:
        bounds = sorted(set(b for b in boundaries if 0 < b < n_params))
        for i in range(1, n_shards):
            if bounds:
                best = min(bounds, key=lambda b: abs(b - cuts[i]))
                if cuts[i - 1] < best < cuts[i + 1] and abs(best - cuts[i]) <= n_params / (
                    2 * n_shards
                ):
                    cuts[i] = best
    return [(cuts[i], cuts[i + 1]) for i in range(n_shards)]


def window_info() -> MPI.Info:
    """The hints of every parameter-server window: accumulates need no ordering and use
    one op (SUM), which lets MPI skip their ordering cost (docs/design.md, "Known MPI
    pitfalls")."""
    info = MPI.Info.Create()
    info.Set("accumulate_ordering", "none")
    info.Set("accumulate_ops", "same_op")
    return info


@dataclass
class ShardWindows:
    """The three windows of one shard, as seen from any rank.

    On the shard's own rank, ``params``/``inbox``/``ctrl`` are NumPy views of the
    window memory; elsewhere they are empty.
    """

    shard: int
    owner: int  # world rank of the shard
    lo: int
    hi: int
    n_clients: int  # counter blocks: replicas x partitions
    param_win: MPI.Win
    inbox_win: MPI.Win
    ctrl_win: MPI.Win
    slots: int = SLOTS  # inbox slots per client

    @property
    def n(self) -> int:
        return self.hi - self.lo

    def slot(self, client: int, push: int) -> int:
        """Offset (elements) in the inbox of the slot holding ``client``'s push number
        ``push`` (counted from 0 over the run)."""
        return (client * self.slots + push % self.slots) * self.n

    @property
    def windows(self) -> tuple[MPI.Win, MPI.Win, MPI.Win]:
        return (self.param_win, self.inbox_win, self.ctrl_win)

    def local_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(params (n,) float32, inbox (C*K*n,) float32, ctrl float64) views of this
        rank's window memory (meaningful on the owner only)."""
        return (
            np.frombuffer(self.param_win.tomemory(), np.float32),
            np.frombuffer(self.inbox_win.tomemory(), np.float32),
            np.frombuffer(self.ctrl_win.tomemory(), np.float64),
        )

    def lock_all(self) -> None:
        """Opens one passive-target access epoch on every window, kept for the whole run."""
        for w in self.windows:
            w.Lock_all(MPI.MODE_NOCHECK)

    def unlock_all(self) -> None:
        for w in self.windows:
            w.Unlock_all()

    def free(self) -> None:
        """Frees the windows. Collective over the communicator they were made on."""
        for w in self.windows:
            w.Free()


def create_shard_windows(
    comm: MPI.Intracomm,
    shard_ranks: list[int],
    ranges: list[tuple[int, int]],
    n_clients: int,
    slots: int = SLOTS,
) -> list[ShardWindows]:
    """Creates every shard's windows (3 per shard, in shard order), each with ``slots``
    inbox slots and a counter block for each of ``n_clients`` clients.

    Collective over ``comm``: every rank must call it with the same arguments.
    Memory is allocated (and zeroed) only on each window's shard rank: per shard of n
    parameters, ``4 n (1 + n_clients * slots)`` bytes plus the counters.

    Raises:
        LayoutError: ``slots`` is not 1 .. :data:`MAX_SLOTS`.
    """
    if not 1 <= slots <= MAX_SLOTS:
        raise LayoutError(f"--inbox-slots {slots}: must be 1 .. {MAX_SLOTS}")
    rank = comm.Get_rank()
    out = []
    info = window_info()
    for s, (owner, (lo, hi)) in enumerate(zip(shard_ranks, ranges, strict=True)):
        mine = rank == owner
        n = hi - lo
        wins = []
        for count, itemsize in ((n, 4), (n_clients * slots * n, 4), (ctrl_size(n_clients), 8)):
            w = MPI.Win.Allocate(count * itemsize if mine else 0, itemsize, info, comm)
            if mine:
                np.frombuffer(w.tomemory(), np.uint8)[:] = 0
            wins.append(w)
        out.append(ShardWindows(s, owner, lo, hi, n_clients, *wins, slots=slots))
    info.Free()
    comm.Barrier()  # every window zeroed before anyone reaches into it
    return out
