"""16-bit float casts for :mod:`hpcnet.comm.compress`, compiled
(``numba.njit(parallel=True, cache=True)``): float32 <-> IEEE half (fp16) and
float32 <-> bfloat16 (bf16) on the bit patterns, round to nearest with ties to even,
subnormals, infinities and NaNs kept. NumPy's ``astype(np.float16)`` gives the same
fp16 words (tests/unit/test_compress.py) at a fraction of the speed.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _f32_to_f16(b):  # pragma: no cover - compiled
    # b: the float32's bits (as int64); returns the half's bits
    sign = (b >> 16) & 0x8000
    e = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    if e == 0xFF:  # infinity, NaN (quiet)
        return sign | 0x7C00 | (0x200 if m != 0 else 0)
    big_e = e - 112  # the half's biased exponent
    if big_e >= 31:
        return sign | 0x7C00
    if big_e <= 0:  # a half subnormal, or zero
        if big_e < -10:
            return sign
        m = m | 0x800000
        shift = 14 - big_e
        h = m >> shift
        rem = m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (h & 1) == 1):
            h += 1
        return sign | h
    h = (big_e << 10) | (m >> 13)
    rem = m & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (h & 1) == 1):
        h += 1  # a carry into the exponent is right, up to infinity
    return sign | h


@njit(cache=True, inline="always")
def _f16_to_f32(h):  # pragma: no cover - compiled
    # h: the half's bits (as int64); returns the float32's bits
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        if m == 0:
            return sign
        p = 9  # a subnormal: normalise m x 2**-24 (its leading bit p)
        while (m >> p) == 0:
            p -= 1
        return sign | ((p - 24 + 127) << 23) | ((m << (23 - p)) & 0x7FFFFF)
    if e == 31:
        return sign | 0x7F800000 | (m << 13)
    return sign | ((e + 112) << 23) | (m << 13)


@njit(cache=True, inline="always")
def _f32_to_bf16(b):  # pragma: no cover - compiled
    if (b & 0x7F800000) == 0x7F800000 and (b & 0x7FFFFF) != 0:
        return ((b >> 16) & 0x8000) | 0x7FC0  # NaN stays a quiet NaN
    return (b + 0x7FFF + ((b >> 16) & 1)) >> 16


@njit(parallel=True, cache=True)
def encode_words(bits, code, out):  # pragma: no cover - compiled
    """float32 bits (uint32) -> 16-bit words (uint16): code 0 fp16, 1 bf16."""
    for i in prange(bits.size):
        b = np.int64(bits[i])
        out[i] = _f32_to_f16(b) if code == 0 else _f32_to_bf16(b)


@njit(parallel=True, cache=True)
def decode_words(words, code, out_bits):  # pragma: no cover - compiled
    """16-bit words (uint16) -> float32 bits (uint32)."""
    for i in prange(words.size):
        w = np.int64(words[i])
        out_bits[i] = _f16_to_f32(w) if code == 0 else w << 16
