"""L-BFGS: coefficient-space two-loop equals the classic recursion; shard vector ops
on slices equal the same ops on the concatenated vector; the serial oracle works."""

import numpy as np
import pytest
import scipy.optimize

from hpcnet.optim.lbfgs import lbfgs_serial, two_loop_coefficients
from hpcnet.ps.lbfgs_shard import LBFGSShardState


def classic_two_loop(S, Y, g):
    q = g.copy()
    alphas = []
    for s, y in zip(reversed(S), reversed(Y), strict=True):
        a = (s @ q) / (s @ y)
        alphas.append(a)
        q -= a * y
    q *= (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1])
    for (s, y), a in zip(zip(S, Y, strict=True), reversed(alphas), strict=True):
        q += s * (a - (y @ q) / (s @ y))
    return -q


@pytest.mark.parametrize("m", [1, 3, 5])
def test_coefficient_two_loop_equals_classic(m):
    rng = np.random.default_rng(m)
    n = 40
    A = rng.standard_normal((n, n))
    H = A @ A.T + n * np.eye(n)  # SPD: y = H s has s.y > 0
    S = [rng.standard_normal(n) for _ in range(m)]
    Y = [H @ s for s in S]
    g = rng.standard_normal(n)
    basis = np.stack(S + Y + [g])
    delta = two_loop_coefficients(basis @ basis.T, m)
    np.testing.assert_allclose(delta @ basis, classic_two_loop(S, Y, g), rtol=1e-10)


def test_shard_ops_on_slices_equal_ops_on_the_whole_vector():
    rng = np.random.default_rng(0)
    n, cuts = 30, [0, 7, 19, 30]
    x0 = rng.standard_normal(n)
    whole = LBFGSShardState(x0, m=3, weight_decay=0.01)
    parts = [
        LBFGSShardState(x0[a:b], m=3, weight_decay=0.01)
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    for it in range(4):
        t = 0.0 if it == 0 else 0.5
        np.testing.assert_allclose(np.concatenate([p.begin(t) for p in parts]), whole.begin(t))
        g = rng.standard_normal(n) * 5
        whole.add(g)
        for p, a, b in zip(parts, cuts, cuts[1:], strict=False):
            p.add(g[a:b])
        np.testing.assert_allclose(sum(p.finalize(5) for p in parts), whole.finalize(5))
        np.testing.assert_allclose(sum(p.accept() for p in parts), whole.accept())
        for st in parts + [whole]:
            st.commit(it > 0)
        k = len(whole.S)
        gram = sum(p.gram() for p in parts)
        np.testing.assert_allclose(gram, whole.gram())
        delta = two_loop_coefficients(gram.reshape(2 * k + 1, 2 * k + 1), k)
        whole.direction(delta)
        for p in parts:
            p.direction(delta)
        np.testing.assert_allclose(np.concatenate([p.d for p in parts]), whole.d)


def test_serial_lbfgs_reaches_scipy_minimum():
    rng = np.random.default_rng(1)
    A, b = rng.standard_normal((50, 8)), rng.standard_normal(50)

    def fg(x):
        r = A @ x - b
        return 0.5 * r @ r, A.T @ r

    it = lbfgs_serial(fg, np.zeros(8), m=5, max_evals=40)
    best = scipy.optimize.minimize(lambda x: fg(x)[0], np.zeros(8), jac=lambda x: fg(x)[1]).fun
    assert it[-1].loss == pytest.approx(best, rel=1e-8)
    assert all(a.loss >= b.loss for a, b in zip(it, it[1:], strict=False))  # monotone (Armijo)


def test_shard_state_survives_a_checkpoint_message():
    # a shard after two stored pairs; its packed state, unpacked into a fresh shard,
    # must give the same Gram matrix and the same next iterate
    rng = np.random.default_rng(3)
    n = 7
    a = LBFGSShardState(rng.normal(size=n), m=5)
    for _ in range(3):
        a.direction(np.array([-1.0]) if not a.S else -np.ones(2 * len(a.S) + 1))
        a.begin(0.5)
        a.add(rng.normal(size=n))
        a.finalize(1)
        a.accept()
        a.commit(True)
    b = LBFGSShardState(np.zeros(n), m=5)
    b.restore(LBFGSShardState.unpack(a.pack(), n))
    assert len(b.S) == len(a.S) == 3
    np.testing.assert_array_equal(b.gram(), a.gram())
    delta = np.linspace(-1, 1, 2 * len(a.S) + 1)
    a.direction(delta)
    b.direction(delta)
    np.testing.assert_array_equal(b.begin(0.25), a.begin(0.25))


def _iterate(st: LBFGSShardState, g: np.ndarray, reset: bool = False) -> None:
    """One shard-side iteration: direction, a pass at t=0.5, accept, commit (a RESET
    before the direction when ``reset``)."""
    if reset:
        st.reset()
    k = len(st.S)
    st.direction(np.array([-1.0]) if not k else -np.ones(2 * k + 1))
    st.begin(0.5, (7, 0.5, 0, 0))
    st.add(g)
    st.finalize(1)
    st.accept()
    st.commit(True)


@pytest.mark.parametrize("reset", [False, True])
def test_rollback_to_a_marked_boundary_equals_a_shard_that_stopped_there(reset):
    # failover (hpcnet.algos.sandblaster.failover): a shard that went one iteration past
    # boundary 2 (with a RESET in it, or not) and rolls back to it must hold exactly
    # what a shard that stopped at boundary 2 holds, and continue identically
    rng = np.random.default_rng(4)
    n = 9
    x0 = rng.normal(size=n)
    grads = [rng.normal(size=n) for _ in range(5)]
    ahead, stopped = LBFGSShardState(x0, m=2), LBFGSShardState(x0, m=2)
    for it in range(3):
        for st in (ahead, stopped):
            _iterate(st, grads[it])
            st.mark(it, {"k": len(st.S)})
    _iterate(ahead, grads[3], reset=reset)  # the iteration in progress...
    assert ahead.position == (7, 0.5, 0, 0)
    ahead.mark(3, None)  # ...which some shards marked before the coordinator died
    assert not np.array_equal(ahead.x, stopped.x)
    ahead.rollback(2)
    assert ahead.position is None and [b[0] for b in ahead.boundaries] == [2]
    np.testing.assert_array_equal(ahead.x, stopped.x)
    np.testing.assert_array_equal(ahead.g, stopped.g)
    assert len(ahead.S) == len(stopped.S) == 2
    np.testing.assert_array_equal(ahead.gram(), stopped.gram())
    for st in (ahead, stopped):
        _iterate(st, grads[4])
    np.testing.assert_array_equal(ahead.x, stopped.x)
    np.testing.assert_array_equal(ahead.gram(), stopped.gram())
    with pytest.raises(ValueError, match="no boundary at iteration 1"):
        ahead.rollback(1)  # the boundaries after 2 are forgotten, 1 was dropped at 3
