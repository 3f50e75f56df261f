"""AlexNet-family layers: grouped convolution, LRN, parallel towers, dropout.

Oracles: central finite differences (the helper of test_layers_grad), the plain-NumPy
reference kernels, separate convolutions concatenated, the LRN formula evaluated
element by element, and one wide convolution for towers of convolutions.
"""

import numpy as np
import pytest

from hpcnet.errors import ConfigError
from hpcnet.kernels import cpu, get_backend, reference
from hpcnet.nn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Towers
from hpcnet.nn.model import Model
from hpcnet.nn.norm import LRN
from tests.close import assert_close
from tests.unit.test_layers_grad import _check

RNG = np.random.default_rng(4321)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------- finite differences


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize(
    "case",
    [
        ("conv_groups2", lambda: [Conv2D(4, 3, padding=1, groups=2)], (4, 5, 5)),
        ("conv_groups3_stride", lambda: [Conv2D(3, 3, stride=2, groups=3)], (3, 7, 7)),
        ("lrn_paper", lambda: [Conv2D(6, 3), LRN()], (2, 5, 5)),
        ("lrn_strong", lambda: [LRN(size=3, alpha=0.5, beta=0.75, k=1.0)], (5, 3, 3)),
        (
            "towers",
            lambda: [Towers([[Conv2D(2, 3, padding=1), ReLU()], [Conv2D(3, 3, padding=1)]])],
            (2, 5, 5),
        ),
        (
            "towers_flat",
            lambda: [Towers([[Flatten(), Dense(3)], [MaxPool2D(2), Flatten(), Dense(2)]])],
            (1, 4, 4),
        ),
    ],
    ids=lambda c: c[0] if isinstance(c, tuple) else c,
)
def test_backward_matches_finite_differences(case, backend):
    _, make, shape = case
    _check(make(), shape, backend)


def test_dropout_backward_matches_finite_differences_cpu():
    _check([Flatten(), Dense(6), Dropout(0.5)], (5,), "cpu", dropout_seed=7)


# ----------------------------------------------------------------- grouped convolution


@pytest.mark.parametrize(
    "n,c,h,o,k,stride,pad,groups",
    [(2, 4, 7, 6, 3, 1, 1, 2), (1, 6, 8, 3, 3, 2, 0, 3), (2, 2, 5, 4, 5, 1, 2, 2)],
)
def test_grouped_conv_cpu_matches_reference(n, c, h, o, k, stride, pad, groups):
    x, w, b = rand(n, c, h, h), rand(o, c // groups, k, k), rand(o)
    y_ref, cache_ref = reference.conv2d_forward(x, w, b, stride, pad, groups)
    y, cache = cpu.conv2d_forward(x, w, b, stride, pad, groups)
    assert_close(y, y_ref, rtol=1e-4, scale=1e-4)
    dy = rand(*y.shape)
    grads = {}
    for name, mod, cch in (("ref", reference, cache_ref), ("cpu", cpu, cache)):
        dw, db = np.empty_like(w), np.empty_like(b)
        dx = mod.conv2d_backward(dy, x.shape, cch, w, stride, pad, dw, db, groups)
        grads[name] = (dx, dw, db)
    for a, r in zip(grads["cpu"], grads["ref"], strict=True):
        assert_close(a, r, rtol=1e-4, scale=1e-4)


@pytest.mark.parametrize("mod", [reference, cpu], ids=["reference", "cpu"])
def test_grouped_conv_equals_separate_convs_concatenated(mod):
    n, c, h, o, k, groups = 2, 6, 6, 4, 3, 2
    x, w, b = rand(n, c, h, h), rand(o, c // groups, k, k), rand(o)
    y, cache = mod.conv2d_forward(x, w, b, 1, 1, groups)
    dy = rand(*y.shape)
    dw, db = np.empty_like(w), np.empty_like(b)
    dx = mod.conv2d_backward(dy, x.shape, cache, w, 1, 1, dw, db, groups)
    cg, og = c // groups, o // groups
    ys, dxs, dws, dbs = [], [], [], []
    for g in range(groups):
        xg = np.ascontiguousarray(x[:, g * cg : (g + 1) * cg])
        wg, bg = np.ascontiguousarray(w[g * og : (g + 1) * og]), b[g * og : (g + 1) * og].copy()
        yg, cg_cache = mod.conv2d_forward(xg, wg, bg, 1, 1)
        dwg, dbg = np.empty_like(wg), np.empty_like(bg)
        dxs.append(
            mod.conv2d_backward(
                np.ascontiguousarray(dy[:, g * og : (g + 1) * og]),
                xg.shape,
                cg_cache,
                wg,
                1,
                1,
                dwg,
                dbg,
            )
        )
        ys.append(yg)
        dws.append(dwg)
        dbs.append(dbg)
    assert_close(y, np.concatenate(ys, axis=1), rtol=1e-5, scale=1e-5)
    assert_close(dx, np.concatenate(dxs, axis=1), rtol=1e-5, scale=1e-5)
    assert_close(dw, np.concatenate(dws), rtol=1e-5, scale=1e-5)
    assert_close(db, np.concatenate(dbs), rtol=1e-5, scale=1e-5)


def test_conv_groups_must_divide_channels():
    with pytest.raises(ConfigError, match="groups"):
        Model([Conv2D(4, 3, groups=2)], (3, 5, 5))
    with pytest.raises(ConfigError, match="groups"):
        Conv2D(3, 3, groups=2)


# ----------------------------------------------------------------- LRN


def _lrn_naive(x, size, alpha, beta, k):
    """Krizhevsky et al. 2012, sec. 3.3, one element at a time."""
    n, c, h, w = x.shape
    y = np.empty(x.shape, np.float64)
    for a in range(n):
        for i in range(c):
            lo, hi = max(0, i - size // 2), min(c - 1, i + size // 2)
            for p in range(h):
                for q in range(w):
                    s = sum(float(x[a, j, p, q]) ** 2 for j in range(lo, hi + 1))
                    y[a, i, p, q] = x[a, i, p, q] / (k + alpha * s) ** beta
    return y


@pytest.mark.parametrize(
    "size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (3, 0.3, 0.75, 1.0), (5, 1.0, 0.5, 0.5)]
)
def test_lrn_equals_naive_formula(size, alpha, beta, k):
    x = rand(2, 7, 3, 4) * 3
    want = _lrn_naive(x, size, alpha, beta, k)
    for mod in (reference, cpu):
        y, scale = mod.lrn_forward(x, size, alpha, beta, k)
        assert_close(y, want, rtol=2e-5, scale=1e-6)
        assert scale.shape == x.shape and (scale >= k).all()


def test_lrn_cpu_backward_matches_reference():
    x, dy = rand(3, 9, 4, 5) * 2, rand(3, 9, 4, 5)
    args = (5, 0.2, 0.75, 1.0)
    y_r, s_r = reference.lrn_forward(x, *args)
    y_c, s_c = cpu.lrn_forward(x, *args)
    np.testing.assert_allclose(s_c, s_r, rtol=1e-5)
    assert_close(
        cpu.lrn_backward(dy, x, y_c, s_c, *args),
        reference.lrn_backward(dy, x, y_r, s_r, *args),
        rtol=1e-4,
        scale=1e-5,
    )


# ----------------------------------------------------------------- towers and concat


def test_concat_and_dropout_kernels_match_reference():
    xs = [rand(2, 3, 4, 4), rand(2, 1, 4, 4), rand(2, 2, 4, 4)]
    y = cpu.concat_forward(xs)
    np.testing.assert_array_equal(y, reference.concat_forward(xs))
    for a, b, x in zip(
        cpu.concat_backward(y, [3, 1, 2]), reference.concat_backward(y, [3, 1, 2]), xs, strict=True
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, x)
    x = rand(4, 6)
    mask = (RNG.random((4, 6)) < 0.5).astype(np.float32) * 2
    np.testing.assert_array_equal(cpu.dropout_forward(x, mask), reference.dropout_forward(x, mask))
    np.testing.assert_array_equal(cpu.dropout_backward(x, mask), x * mask)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_towers_of_convs_equal_one_wide_conv(backend):
    be = get_backend(backend)
    towers = Model([Towers([[Conv2D(2, 3, padding=1)], [Conv2D(3, 3, padding=1)]])], (2, 5, 5))
    wide = Model([Conv2D(5, 3, padding=1)], (2, 5, 5))
    towers.init(3)
    t0, t1 = towers.layers[0].towers[0][0], towers.layers[0].towers[1][0]
    wide.layers[0].params["w"][...] = np.concatenate([t0.params["w"], t1.params["w"]])
    wide.layers[0].params["b"][...] = np.concatenate([t0.params["b"], t1.params["b"]])
    x = rand(3, 2, 5, 5)
    assert_close(towers.forward(x, be), wide.forward(x, be), rtol=1e-5, scale=1e-5)
    dy = rand(3, 5, 5, 5)
    dx_t = towers.layers[0].backward(dy, be)
    dx_w = wide.layers[0].backward(dy, be)
    assert_close(dx_t, dx_w, rtol=1e-5, scale=1e-5)
    dw_t = np.concatenate([t0.grads["w"], t1.grads["w"]])
    assert_close(dw_t, wide.layers[0].grads["w"], rtol=1e-5, scale=1e-5)


def test_towers_params_live_in_the_flat_vector_one_range_per_tower():
    layer = Towers([[Conv2D(2, 3), ReLU(), Conv2D(2, 3)], [Conv2D(4, 5), Dropout(0.5)]])
    model = Model([layer, Flatten(), Dense(3)], (1, 7, 7))
    model.init(0)
    segs = [(name, a, b) for name, a, b in model.segments if name.startswith("0.Towers")]
    assert [s[0] for s in segs] == [
        "0.Towers.0.0.w", "0.Towers.0.0.b", "0.Towers.0.2.w", "0.Towers.0.2.b",
        "0.Towers.1.0.w", "0.Towers.1.0.b",
    ]  # fmt: skip
    assert all(
        a1 == b0 for (_, _, b0), (_, a1, _) in zip(segs, segs[1:], strict=False)
    )  # contiguous
    for _, _, sub in layer.sublayers():
        for name, arr in sub.params.items():
            assert np.shares_memory(arr, model.params)
            assert np.shares_memory(sub.grads[name], model.grads)
    assert model.n_params == (18 + 2 + 36 + 2) + (100 + 4) + (3 * 6 * 9 + 3)
    # nested dropout gets its own stream per replica
    model.seed_dropout(1, 0)
    a = layer.towers[1][1].rng.random()
    model.seed_dropout(1, 1)
    assert layer.towers[1][1].rng.random() != a


def test_towers_shapes_must_agree():
    with pytest.raises(ConfigError, match="tower 1"):
        Model([Towers([[Conv2D(2, 3)], [Conv2D(2, 5)]])], (1, 7, 7))


@pytest.mark.parametrize("size", [10, 70_000])  # NumPy below PARALLEL_MIN_SIZE, Numba above
def test_relu_both_paths_match_reference(size):
    assert (size < cpu.PARALLEL_MIN_SIZE) == (size == 10)
    x, dy = rand(size), rand(size)
    y = cpu.relu_forward(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, reference.relu_forward(x))
    np.testing.assert_array_equal(cpu.relu_backward(dy, y), reference.relu_backward(dy, y))


def test_softmax_gradient_flushes_subnormals():
    # z - max = -95 gives p ~ 5e-42: a float32 subnormal that slows every GEMM after it
    logits = np.array([[0.0, -95.0, -20.0], [3.0, 2.0, -200.0]], np.float32)
    labels = np.array([0, 1])
    loss, d = cpu.softmax_xent(logits, labels)
    ref_loss, ref_d = reference.softmax_xent(logits, labels)
    assert abs(loss - ref_loss) < 1e-6
    tiny = (d != 0) & (np.abs(d) < np.finfo(np.float32).tiny)
    assert not tiny.any() and d[0, 1] == 0.0
    assert_close(d, ref_d, rtol=1e-5, scale=1e-12)
