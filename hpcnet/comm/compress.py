"""Fewer bytes on the wire: gradients cast to 16-bit floats for the allreduce.

``fp16`` (IEEE half precision) and ``bf16`` (bfloat16: float32's exponent, 8 bits of
mantissa; Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training") halve
the bytes of every allreduce, as Horovod's ``Compression.fp16`` and PyTorch DDP's
``fp16_compress_hook`` / ``bf16_compress_hook`` do. Both travel as 2-byte words
(``uint16``) with a user-defined ``MPI_SUM`` (MPI has no 16-bit float type): each
reduction step decodes both operands to float32, adds in float32 and rounds the sum back
to 16 bits (round to nearest, ties to even), so a sum over R ranks is rounded at most
``ceil(log2 R)`` + 1 times. The mean is taken in float32 after decoding.

fp16 covers +-65504 with 11 significant bits: a gradient larger than that overflows
to infinity (the step then fails loudly: the loss turns NaN), one below 6e-8 flushes to
zero. bf16 covers float32's range with 8 significant bits (~2-3 decimal digits).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

METHODS = ("none", "fp16", "bf16")


_CODE = {"fp16": 0, "bf16": 1}


def _code(method: str) -> int:
    if method not in _CODE:
        raise ValueError(f"unknown compression {method!r}; known: {', '.join(METHODS[1:])}")
    return _CODE[method]


def encode(x: np.ndarray, method: str) -> np.ndarray:
    """``x`` (float32, any shape) as 16-bit words: (same shape,) uint16, the nearest
    value (ties to even); beyond fp16's range infinity, a NaN a quiet NaN. Compiled
    (:mod:`hpcnet.kernels._cpu_cast`).

    Raises:
        ValueError: an unknown ``method``.
    """
    from hpcnet.kernels._cpu_cast import encode_words

    code = _code(method)
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty(x.shape, np.uint16)
    encode_words(x.reshape(-1).view(np.uint32), code, out.reshape(-1))
    return out


def decode(words: np.ndarray, method: str, out: np.ndarray | None = None) -> np.ndarray:
    """16-bit words back to float32 (into ``out`` when given, same shape)."""
    from hpcnet.kernels._cpu_cast import decode_words

    code = _code(method)
    words = np.ascontiguousarray(words, np.uint16)
    bits = np.empty(words.shape, np.uint32)
    decode_words(words.reshape(-1), code, bits.reshape(-1))
    value = bits.view(np.float32)
    if out is None:
        return value
    out[...] = value
    return out


def _sum_op(method: str) -> MPI.Op:
    def add(inbuf, inoutbuf, datatype) -> None:  # MPI calls it on chunks of words
        a = np.frombuffer(inbuf, np.uint16)
        b = np.frombuffer(inoutbuf, np.uint16)
        b[...] = encode(decode(a, method) + decode(b, method), method)

    return MPI.Op.Create(add, commute=True)


_OPS: dict[str, MPI.Op] = {}


def sum_op(method: str) -> MPI.Op:
    """The ``MPI_SUM`` of ``method``'s 16-bit words (created once per process)."""
    if method not in _OPS:
        _OPS[method] = _sum_op(method)
    return _OPS[method]


@dataclass
class Traffic:
    """What compression saved on one rank: ``raw_bytes`` the float32 payloads would
    have been, ``sent_bytes`` what was handed to MPI, ``compress_s`` the seconds spent
    encoding and decoding."""

    method: str
    raw_bytes: int = 0
    sent_bytes: int = 0
    compress_s: float = 0.0
    calls: int = field(default=0)

    def summary(self) -> dict:
        """For summary.json's ``compression``."""
        return {
            "method": self.method,
            "raw_bytes": self.raw_bytes,
            "sent_bytes": self.sent_bytes,
            "ratio": self.raw_bytes / self.sent_bytes if self.sent_bytes else None,
            "compress_s": round(self.compress_s, 4),
            "allreduces": self.calls,
        }


class CompressedAllreduce:
    """Starts and completes the mean of a float32 buffer over ``comm`` with its payload
    as 16-bit words (``method``: ``fp16`` or ``bf16``).

    :meth:`start` encodes and starts one ``Iallreduce`` (returns the request);
    :meth:`finish` decodes the sum into the buffer and divides by the ranks. Collective
    over ``comm``: every rank starts the same buffers in the same order.
    """

    def __init__(self, method: str, comm: MPI.Intracomm, traffic: Traffic):
        _code(method)  # an unknown method: ValueError now, not at the first allreduce
        self.method, self.comm, self.traffic = method, comm, traffic

    def start(self, buf: np.ndarray) -> tuple[MPI.Request, np.ndarray]:
        """Encodes ``buf`` ((n,) float32) and starts the sum; (request, the words)."""
        t = time.perf_counter()
        words = encode(buf, self.method)
        self.traffic.compress_s += time.perf_counter() - t
        self.traffic.raw_bytes += buf.nbytes
        self.traffic.sent_bytes += words.nbytes
        self.traffic.calls += 1
        req = self.comm.Iallreduce(MPI.IN_PLACE, [words, MPI.UINT16_T], op=sum_op(self.method))
        return req, words

    def finish(self, buf: np.ndarray, words: np.ndarray) -> None:
        """After the request completed: ``buf`` = the mean over ``comm`` (float32)."""
        t = time.perf_counter()
        decode(words, self.method, out=buf)
        buf *= np.float32(1.0 / self.comm.Get_size())
        self.traffic.compress_s += time.perf_counter() - t
