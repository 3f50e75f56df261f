"""The update rules of :mod:`hpcnet.optim` (SGD with momentum, Adagrad) against their
formulas written in float64 NumPy, and :func:`~hpcnet.optim.rules.make_rule`'s names."""

import numpy as np
import pytest

from hpcnet.errors import ConfigError
from hpcnet.optim.adagrad import Adagrad
from hpcnet.optim.rules import make_rule
from hpcnet.optim.sgd import SGD
from tests.close import assert_close

RNG = np.random.default_rng(77)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_sgd_optimizer_matches_the_numpy_formula():
    """The optimizer (fused Numba pass) against PyTorch's momentum update written in NumPy."""
    n = 1000
    p1, g = rand(n), rand(n)
    p2, v = p1.astype(np.float64), np.zeros(n)
    opt = SGD(n, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        g1, g2 = g.copy(), g.astype(np.float64)
        opt.step(p1, g1, 0.05)
        g2 = g2 + 1e-3 * p2
        v = 0.9 * v + g2
        p2 = p2 - 0.05 * v
        assert_close(g1, g2, rtol=1e-5, scale=1e-6)
    assert_close(p1, p2, rtol=1e-5, scale=1e-6)
    assert_close(opt.velocity, v, rtol=1e-5, scale=1e-6)
    plain = SGD(n)  # no momentum: p -= lr g
    p3, g3 = rand(n), rand(n)
    want = p3 - np.float32(0.1) * g3
    plain.step(p3, g3, 0.1)
    np.testing.assert_allclose(p3, want, rtol=1e-6)


def test_adagrad_matches_the_numpy_formula():
    """Adagrad (fused Numba pass) against Duchi et al.'s diagonal update in NumPy."""
    n = 1000
    p1 = rand(n)
    p2, a = p1.astype(np.float64), np.full(n, 0.1)
    opt = Adagrad(n)
    for _ in range(3):
        g = rand(n)
        g_in = g.copy()
        opt.step(p1, g, 0.05)
        np.testing.assert_array_equal(g, g_in)  # the gradient is only read
        a = a + g.astype(np.float64) ** 2
        p2 = p2 - 0.05 * g / (np.sqrt(a) + 1e-8)
    assert_close(opt.accum, a, rtol=1e-5, scale=1e-6)
    assert_close(p1, p2, rtol=1e-5, scale=1e-6)


def test_adagrad_is_the_float32_formula_bit_for_bit():
    """The vectorised pass (Numba's numpy error model) computes the same IEEE float32
    operations, in the same order, as NumPy: equal bits, zeros and tiny values included."""
    from hpcnet.kernels._cpu_optim import adagrad_update_zero

    n = 10_007  # not a multiple of any vector width: the loop's tail is checked too
    rng = np.random.default_rng(3)
    p = rng.standard_normal(n).astype(np.float32)
    a = np.zeros(n, np.float32)
    p_ref, a_ref = p.copy(), a.copy()
    lr, eps = np.float32(0.05), np.float32(1e-8)
    for k in range(3):
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-20, 3, n)).astype(np.float32)
        g[k::7] = 0.0  # a zero gradient on a zero accumulator: 0 / eps
        g_ref = g.copy()
        a_ref = a_ref + g_ref * g_ref
        p_ref = p_ref - lr * g_ref / (np.sqrt(a_ref) + eps)
        adagrad_update_zero(p, g, a, lr, eps)
        assert not g.any()  # the slot emptied in the same pass
    np.testing.assert_array_equal(a, a_ref)
    np.testing.assert_array_equal(p, p_ref)


@pytest.mark.parametrize("name,cls", [("sgd", SGD), ("adagrad", Adagrad)])
def test_make_rule_by_name(name, cls):
    rule = make_rule(name, 7)
    assert type(rule) is cls
    if name == "sgd":  # the shards' plain SGD: no momentum state, no weight decay
        assert rule.velocity is None and rule.weight_decay == 0.0


def test_make_rule_unknown_name_says_the_choices():
    with pytest.raises(ConfigError, match="--ps-rule 'adam'.*sgd, adagrad"):
        make_rule("adam", 7)


@pytest.mark.parametrize(
    "make", [lambda n: SGD(n), lambda n: Adagrad(n), lambda n: SGD(n, momentum=0.9)]
)
def test_step_and_zero_equals_step_then_zeroing_exactly(make):
    """A shard's fused apply-and-empty pass gives bit for bit what the step followed by
    ``grads[:] = 0`` gives (same float32 arithmetic, same order), over several pushes."""
    n = 1001
    fused, plain = make(n), make(n)
    p1 = rand(n)
    p2 = p1.copy()
    for lr in (0.05, 0.01, 0.2):
        g = rand(n)
        g1, g2 = g.copy(), g.copy()
        fused.step_and_zero(p1, g1, lr)
        plain.step(p2, g2, lr)
        g2[:] = 0.0
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_array_equal(g1, np.zeros(n, np.float32))
    if hasattr(fused, "accum"):
        np.testing.assert_array_equal(fused.accum, plain.accum)
