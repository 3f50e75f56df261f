"""Float comparisons that hold on any CPU and BLAS kernel.

Two float32 computations of the same quantity in a different summation order
(another BLAS kernel, AVX2 against AVX-512 code from Numba, another split into
micro-batches or partitions) differ by a few ulps of the *terms summed*, not of
the result: an element that cancels to nearly zero can carry an absolute error
of the size of the tensor's large elements times float32's epsilon times the
number of terms. So the absolute tolerance is scaled by the reference tensor's
magnitude (``atol = scale * max|ref|``), per tensor, never a bare constant that
holds on one machine only (docs/development.md, "Float tolerances").

Every test using these must still be able to fail: a dropped micro-batch, a
swapped partition or a missing allreduce changes the result by percent, far
above ``scale`` = 1e-4 of the tensor's largest element.
"""

from __future__ import annotations

import numpy as np

RTOL = 1e-4  # float32 results of ~1e3-1e4-term sums computed in another order
SCALE = 1e-4  # atol as a fraction of max|ref| of the same tensor


def assert_close(actual, ref, *, rtol: float = RTOL, scale: float = SCALE, err_msg: str = ""):
    """``assert_allclose`` with ``atol = scale * max|ref|`` (0 for an all-zero ``ref``)."""
    ref = np.asarray(ref)
    magnitude = float(np.abs(ref).max()) if ref.size else 0.0
    np.testing.assert_allclose(actual, ref, rtol=rtol, atol=scale * magnitude, err_msg=err_msg)


def assert_flat_close(actual, ref, model, *, rtol: float = RTOL, scale: float = SCALE, what=""):
    """Compares two flat vectors of ``model`` ((n_params,) each) tensor by tensor, each
    with its own magnitude (a conv bias and a dense weight differ by orders)."""
    actual, ref = np.asarray(actual), np.asarray(ref)
    assert actual.shape == ref.shape == (model.n_params,), (actual.shape, ref.shape)
    for name, lo, hi in model.segments:
        assert_close(actual[lo:hi], ref[lo:hi], rtol=rtol, scale=scale, err_msg=f"{what} {name}")
