"""Sandblaster's parameter shard: its slice of the parameters and of the L-BFGS
state, and the vector operations the coordinator asks for (Dean et al. 2012,
sec. 4.2; the direction the vector-free way, Chen et al. 2014).

A shard holds, for its range ``[lo, hi)`` of the flat parameter vector (all
float64 except the served copy):

* ``x`` the current iterate, ``d`` the search direction, ``g`` the gradient at ``x``;
* ``x_trial = x + t d`` served to replicas as float32 through an RMA window;
* ``g_trial``, the gradient being summed from replicas' pushes;
* the last ``m`` pairs ``s = x_new - x`` and ``y = g_new - g``.

Commands (:class:`Command`; float64 messages ``[command, args...]`` from the
coordinator, tag :data:`TAG_CMD`, served by :mod:`hpcnet.ps.lbfgs_service`) and
the bytes that cross the network per L-BFGS iteration, for k stored pairs and R
replicas: ``begin`` (24 B) / ``finalize`` (24 + 8 R B, reply 24 B) once per
evaluation pass; ``gram`` (8 B, reply 8 (2k+1)^2 B), ``direction`` (8 (2k+2) B),
``accept`` (8 B, reply 16 B), ``commit`` (16 B) once per iteration, and ``mark`` (16 B
+ 8 B per byte of the coordinator's mirror, a few kB;
:mod:`hpcnet.algos.sandblaster.failover`). Only scalars reach the coordinator; the
shard's vectors never leave it except as the float32 parameters replicas fetch and the
final gather.
"""

from __future__ import annotations

import enum

import numpy as np


class Command(enum.IntEnum):
    """What the coordinator asks a shard to do (the first element of a command)."""

    BEGIN = 1  # [BEGIN, pass, t, trial, attempt]: serve x + t d for pass ``pass``; reply [1]
    FINALIZE = 2  # [FINALIZE, pass, n_samples, pushes of replica 0..R-1]: reply 3 sums
    GRAM = 3  # [GRAM]: reply the partial Gram matrix, (2k+1)^2 values
    DIRECTION = 4  # [DIRECTION, delta_0..delta_2k]: d = sum delta_l b_l; reply [1]
    ACCEPT = 5  # [ACCEPT]: move to the trial point; reply [s.y, y.y]
    COMMIT = 6  # [COMMIT, store]: keep the last pair if store; reply [1]
    RESET = 7  # [RESET]: forget the history; reply [1]
    STOP = 8  # [STOP]: leave the service loop; no reply
    SNAPSHOT = 9  # [SNAPSHOT]: reply this shard's state (``LBFGSShardState.pack``)
    MARK = 10  # [MARK, iteration, mirror bytes...]: an iteration boundary; reply [1]


TAG_CMD, TAG_REPLY = 11, 12
TAG_PUSH0 = 1000  # gradient pushes of pass p use tag TAG_PUSH0 + p % PUSH_TAGS
PUSH_TAGS = 8192


def push_tag(pass_id: int) -> int:
    """The tag of the gradient pushes of evaluation pass ``pass_id``."""
    return TAG_PUSH0 + pass_id % PUSH_TAGS


class LBFGSShardState:
    """The vector algebra of one shard; pure NumPy (tested against full vectors).

    Args:
        x0: (n,) initial parameter slice.
        m: history length (pairs kept).
        weight_decay: L2 coefficient lambda of the objective
            ``mean loss + lambda/2 ||x||^2`` (its gradient term is added here).
    """

    def __init__(self, x0: np.ndarray, m: int, weight_decay: float = 0.0):
        n = len(x0)
        self.x = np.asarray(x0, np.float64).copy()
        self.d = np.zeros(n)
        self.g = np.zeros(n)
        self.x_trial = self.x.copy()
        self.g_trial = np.zeros(n)
        self.S: list[np.ndarray] = []
        self.Y: list[np.ndarray] = []
        self.m = m
        self.wd = weight_decay
        self._s = self._y = None
        # coordinator failover: the state at the last two iteration boundaries, each
        # (iteration, (x, g, S, Y), the coordinator's mirror), and the line search's
        # position since the last one (pass, t, trial, attempt): see :meth:`mark`
        self.boundaries: list[tuple[int, tuple, dict | None]] = []
        self.position: tuple[int, float, int, int] | None = None
        self.mark(-1, None)

    def begin(self, t: float, position: tuple[int, float, int, int] | None = None) -> np.ndarray:
        """Starts an evaluation pass at ``x + t d``; returns it as float32 for replicas.
        ``position``: (pass, t, trial, attempt) of the line search, kept for a failover."""
        if position is not None:
            self.position = position
        self.x_trial = self.x + t * self.d
        self.g_trial[:] = 0.0
        return self.x_trial.astype(np.float32)

    def add(self, grad_sum: np.ndarray) -> None:
        """Adds one push: replicas' per-sample gradients summed over some units."""
        self.g_trial += grad_sum

    def finalize(self, n_samples: int) -> np.ndarray:
        """Turns the summed gradient into the objective's gradient at ``x_trial``.

        Returns partial sums [||x_trial||^2, g_trial . d, g_trial . g_trial].
        """
        self.g_trial /= n_samples
        if self.wd:
            self.g_trial += self.wd * self.x_trial
        return np.array(
            [self.x_trial @ self.x_trial, self.g_trial @ self.d, self.g_trial @ self.g_trial]
        )

    def gram(self) -> np.ndarray:
        """Partial Gram matrix (2k+1, 2k+1) of the basis [s.., y.., g], flattened."""
        basis = np.stack(self.S + self.Y + [self.g])
        return (basis @ basis.T).ravel()

    def direction(self, delta: np.ndarray) -> None:
        """d = sum_l delta_l b_l over the basis [s.., y.., g]."""
        basis = self.S + self.Y + [self.g]
        self.d = sum(c * b for c, b in zip(delta, basis, strict=True))

    def accept(self) -> np.ndarray:
        """Moves to the trial point; returns partial [s . y, y . y] of the new pair."""
        self._s = self.x_trial - self.x
        self._y = self.g_trial - self.g
        self.x, self.g = self.x_trial.copy(), self.g_trial.copy()
        return np.array([self._s @ self._y, self._y @ self._y])

    def commit(self, store: bool) -> None:
        """Stores the last accepted pair if ``store`` (the curvature test passed)."""
        if store:
            self.S.append(self._s)
            self.Y.append(self._y)
            if len(self.S) > self.m:
                self.S.pop(0)
                self.Y.pop(0)
        self._s = self._y = None

    def reset(self) -> None:
        """Forgets the history (the next direction is steepest descent)."""
        self.S, self.Y = [], []

    # coordinator failover (hpcnet.algos.sandblaster.failover) ------------------------
    def mark(self, iteration: int, mirror: dict | None) -> None:
        """An iteration boundary (after ``commit``): keeps references to x, g and the
        history as they are (no copy: every command replaces those arrays and lists
        rather than writing into them) and the coordinator's ``mirror`` of its own state
        there; the last two boundaries are kept, because a coordinator that died while
        sending ``MARK`` left some shards one boundary ahead of the others."""
        self.boundaries = self.boundaries[-1:] + [
            (iteration, (self.x, self.g, list(self.S), list(self.Y)), mirror)
        ]
        self.position = None

    def rollback(self, iteration: int) -> None:
        """Back to the boundary ``iteration`` (one of the last two marked): x, g and the
        history as they were there; the iteration that followed is forgotten.

        Raises:
            ValueError: ``iteration`` is not one of the boundaries kept.
        """
        kept = [b for b in self.boundaries if b[0] == iteration]
        if not kept:
            have = [b[0] for b in self.boundaries]
            raise ValueError(f"no boundary at iteration {iteration} (kept: {have})")
        _, (x, g, S, Y), _ = kept[0]
        self.x, self.g, self.S, self.Y = x, g, list(S), list(Y)
        self.x_trial, self.d = x, np.zeros_like(x)
        self._s = self._y = None
        self.boundaries = [b for b in self.boundaries if b[0] <= iteration]

    # checkpoints: the state between two iterations (after ``commit``) -----------------
    def arrays(self) -> dict[str, np.ndarray]:
        """``x``, ``g`` (n,) and the history ``S``, ``Y`` (k, n), float64: all a resumed
        run needs at an iteration boundary (``d`` and the trial point are recomputed)."""
        n = len(self.x)
        return {
            "x": self.x.copy(),
            "g": self.g.copy(),
            "S": np.array(self.S).reshape(len(self.S), n),
            "Y": np.array(self.Y).reshape(len(self.Y), n),
        }

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Puts back what :meth:`arrays` returned."""
        self.x = np.array(arrays["x"], np.float64)
        self.g = np.array(arrays["g"], np.float64)
        self.x_trial = self.x.copy()
        self.S = [np.array(v, np.float64) for v in arrays["S"]]
        self.Y = [np.array(v, np.float64) for v in arrays["Y"]]
        self.boundaries = []
        self.mark(-1, None)  # until the resumed coordinator marks its iteration

    def pack(self) -> np.ndarray:
        """:meth:`arrays` as one float64 message ``[k, x, g, S, Y]``."""
        a = self.arrays()
        return np.concatenate([[len(self.S)], a["x"], a["g"], a["S"].ravel(), a["Y"].ravel()])

    @staticmethod
    def unpack(msg: np.ndarray, n: int) -> dict[str, np.ndarray]:
        """The arrays of a :meth:`pack` message of a shard of ``n`` parameters."""
        k = int(msg[0])
        x, g = msg[1 : 1 + n], msg[1 + n : 1 + 2 * n]
        rest = msg[1 + 2 * n :]
        return {
            "x": x.copy(),
            "g": g.copy(),
            "S": rest[: k * n].reshape(k, n).copy(),
            "Y": rest[k * n :].reshape(k, n).copy(),
        }
