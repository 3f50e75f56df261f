"""L-BFGS pieces: the two-loop recursion in coefficient space, and a serial L-BFGS.

Sandblaster (Dean et al. 2012, sec. 4.2) keeps the parameter vector and the
L-BFGS history sliced across parameter shards, so no process holds whole
vectors. The direction is computed the "vector-free" way (Chen, Wang, Zhou &
Smola 2014, "Large-scale L-BFGS using MapReduce", Algorithm 3): with the basis
``b = [s_0 .. s_{m-1}, y_0 .. y_{m-1}, g]`` (the last m steps s, gradient
changes y, and the current gradient g), the shards return their partial Gram
matrices ``B_ij = b_i . b_j``; the coordinator sums them and runs the two-loop
recursion of Nocedal & Wright (2006, Algorithm 7.4) on coefficients, giving
``d = sum_l delta_l b_l``, which the shards form on their slices. Two small
messages per iteration instead of 2m dot-product round trips.

:func:`lbfgs_serial` is the classic full-vector algorithm with the same line
search, written independently: the oracle the distributed iterates are tested
against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ARMIJO_C1 = 1e-4  # sufficient decrease constant (Nocedal & Wright eq. 3.4)
SHRINK = 0.5  # backtracking factor
MAX_TRIALS = 20  # line-search trials before the history is reset
CURVATURE_EPS = 1e-10  # a pair (s, y) is stored only if s.y > CURVATURE_EPS * y.y


def two_loop_coefficients(gram: np.ndarray, m: int) -> np.ndarray:
    """Coefficients of the L-BFGS direction in the basis ``[s_0..s_{m-1}, y_0..y_{m-1}, g]``.

    Args:
        gram: (2m+1, 2m+1) float64 Gram matrix of the basis; pairs are oldest first.
        m: number of stored pairs (0 gives steepest descent).
    Returns:
        delta: (2m+1,) float64 with ``d = sum_l delta_l b_l = -H g`` (a descent direction
        when every stored pair has s.y > 0). Nocedal & Wright Alg. 7.4 in
        coefficient space (Chen et al. 2014, Alg. 3).
    """
    n = 2 * m + 1
    delta = np.zeros(n)
    delta[2 * m] = 1.0  # q = g
    alpha = np.zeros(m)
    for i in range(m - 1, -1, -1):  # newest to oldest
        sy = gram[i, m + i]
        alpha[i] = delta @ gram[:, i] / sy  # s_i . q / s_i . y_i
        delta[m + i] -= alpha[i]  # q -= alpha_i y_i
    if m:
        delta *= gram[m - 1, 2 * m - 1] / gram[2 * m - 1, 2 * m - 1]  # H0 = (s.y / y.y) I
    for i in range(m):  # oldest to newest
        beta = delta @ gram[:, m + i] / gram[i, m + i]  # y_i . r / s_i . y_i
        delta[i] += alpha[i] - beta  # r += s_i (alpha_i - beta)
    return -delta


def first_step(gnorm: float) -> float:
    """Initial trial step of the first iteration (d = -g): 1 / ||g||, at most 1."""
    return min(1.0, 1.0 / max(gnorm, 1e-12))


@dataclass
class Iterate:
    """One accepted L-BFGS iterate: loss after it, step length, evaluations so far."""

    loss: float
    step: float
    evaluations: int
    x: np.ndarray | None = None


def lbfgs_serial(
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    m: int = 10,
    max_evals: int = 30,
    keep_x: bool = False,
) -> list[Iterate]:
    """Serial L-BFGS with backtracking Armijo line search (the oracle).

    Classic two-loop recursion on full vectors (Nocedal & Wright Alg. 7.4).
    Each accepted step appends an :class:`Iterate`. Stops after ``max_evals``
    function+gradient evaluations (the first, at ``x0``, included).

    Args:
        fg: returns (f(x), grad f(x)) for (n,) float64 x.
        x0: (n,) starting point.
    """
    x = np.asarray(x0, np.float64).copy()
    f, g = fg(x)
    evals = 1
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    out = [Iterate(f, 0.0, evals, x.copy() if keep_x else None)]
    while evals < max_evals:
        q = g.copy()
        alphas = []
        for s, y in zip(reversed(S), reversed(Y), strict=True):
            a = (s @ q) / (s @ y)
            alphas.append(a)
            q -= a * y
        if S:
            q *= (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1])
        for (s, y), a in zip(zip(S, Y, strict=True), reversed(alphas), strict=True):
            b = (y @ q) / (s @ y)
            q += s * (a - b)
        d = -q
        gd = g @ d
        if gd >= 0:  # not a descent direction: forget the history
            S, Y = [], []
            d, gd = -g, -(g @ g)
        t = 1.0 if S else first_step(np.sqrt(g @ g))
        accepted = False
        for _ in range(MAX_TRIALS):
            if evals >= max_evals:
                break
            f_t, g_t = fg(x + t * d)
            evals += 1
            if f_t <= f + ARMIJO_C1 * t * gd:
                accepted = True
                break
            t *= SHRINK
        if not accepted:
            if not S:
                break
            S, Y = [], []
            continue
        s, y = t * d, g_t - g
        if s @ y > CURVATURE_EPS * (y @ y):
            S.append(s)
            Y.append(y)
            if len(S) > m:
                S.pop(0)
                Y.pop(0)
        x, f, g = x + s, f_t, g_t
        out.append(Iterate(f, t, evals, x.copy() if keep_x else None))
    return out
