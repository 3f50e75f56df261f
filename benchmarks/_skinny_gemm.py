"""Experiment (issue 3, not used by hpcnet): a register-blocked float32 GEMM for the
convolution's skinny im2col products, written in LLVM IR through Numba.

OpenBLAS runs the three GEMMs of an im2col convolution, where one dimension is the
filter count O (16-96), at 40-60 GFLOP/s per thread against ~105 on square shapes.
Numba cannot express a register-blocked GEMM micro-kernel in Python code (LLVM keeps
no array of accumulators in registers and does not SLP-vectorise scalar ones; see
``conv_gemm_shapes.py``), so the micro-kernel is written here in LLVM IR through
:func:`numba.extending.intrinsic`: a tile of MR x NV*16 of C held in ``<16 x float>``
registers (MR <= 6, NV <= 4: up to 24 zmm accumulators), one row of B loaded as NV
vectors and one element of A broadcast per row at each step of the reduction,
``llvm.fma`` in between (the BLIS/GotoBLAS micro-kernel: Van Zee and van de Geijn,
"BLIS", ACM TOMS 41(3), 2015, sec. 3). The last vector of a tile may be partial
(masked loads and stores), so no shape needs padding. :func:`gemm` walks the tiles,
``parallel=True`` over (rows, 64 columns) blocks.

Measured (``conv_gemm_shapes.py``) it beats OpenBLAS on the forward and input-gradient
GEMMs of 2conv's second convolution by ~1.2x but not on the weight gradient, whose
long reduction streams the im2col matrix: not enough for hpcnet to adopt it. Cold
compile of all 24 tile shapes: ~5 s (cached afterwards). Requires AVX-512 (the
``<16 x float>`` type compiles to two 256-bit halves without it).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

MR = 6  # rows of a full tile (6 x 4 vectors = 24 of the 32 zmm registers)
NV = 4  # vectors of 16 floats in a full tile's row (64 columns)
NB = 16 * NV  # columns of a full tile

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_VT = ir.VectorType(_F32, 16)
_MT = ir.VectorType(ir.IntType(1), 16)


def _make_tile(mr: int, nv: int):
    """An intrinsic ``tile(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last,
    acc)``: C[0:mr, 0:16 nv] (+)= A[0:mr, 0:kc] @ B[0:kc, 0:16 nv] on flat float32
    arrays, where element (i, p) of A is ``a[a_off + i a_rs + p a_cs]``, (p, j) of B is
    ``b[b_off + p ldb + j]`` and (i, j) of C is ``c[c_off + i ldc + j]``; ``last``
    (1-16) lanes of the last vector are valid; ``acc`` adds to C instead of storing.
    kc >= 1."""

    @intrinsic
    def tile(typingctx, a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc):
        i64 = types.int64
        sig = types.void(a, i64, i64, i64, b, i64, i64, c, i64, i64, i64, i64, types.boolean)

        def codegen(context, builder, sig, args):
            a_, a_off, a_rs, a_cs, b_, b_off, ldb, c_, c_off, ldc, kc, last, accf = args
            mod = builder.module
            fma = cgutils.get_or_insert_function(
                mod, ir.FunctionType(_VT, [_VT, _VT, _VT]), "llvm.fma.v16f32"
            )
            vptr = _VT.as_pointer()
            mload = cgutils.get_or_insert_function(
                mod, ir.FunctionType(_VT, [vptr, _I32, _MT, _VT]), "llvm.masked.load.v16f32.p0"
            )
            mstore = cgutils.get_or_insert_function(
                mod,
                ir.FunctionType(ir.VoidType(), [_VT, vptr, _I32, _MT]),
                "llvm.masked.store.v16f32.p0",
            )
            ap = builder.gep(context.make_array(sig.args[0])(context, builder, a_).data, [a_off])
            bp = builder.gep(context.make_array(sig.args[4])(context, builder, b_).data, [b_off])
            cp = builder.gep(context.make_array(sig.args[7])(context, builder, c_).data, [c_off])
            zero = ir.Constant(_VT, None)
            lanes = ir.Constant(ir.VectorType(_I64, 16), list(range(16)))
            lastv = builder.insert_element(
                ir.Constant(ir.VectorType(_I64, 16), ir.Undefined), last, ir.Constant(_I32, 0)
            )
            lastv = builder.shuffle_vector(lastv, lastv, ir.Constant(ir.VectorType(_I32, 16), None))
            mask = builder.icmp_signed("<", lanes, lastv)  # valid lanes of the last vector
            align = ir.Constant(_I32, 4)

            def vload(ptr, v):
                ptr = builder.bitcast(ptr, vptr)
                if v < nv - 1:
                    return builder.load(ptr, align=4)
                return builder.call(mload, [ptr, align, mask, zero])

            def vstore(val, ptr, v):
                ptr = builder.bitcast(ptr, vptr)
                if v < nv - 1:
                    builder.store(val, ptr, align=4)
                else:
                    builder.call(mstore, [val, ptr, align, mask])

            pre = builder.block
            loop = builder.append_basic_block("tile_loop")
            done = builder.append_basic_block("tile_done")
            builder.branch(loop)
            builder.position_at_end(loop)
            p = builder.phi(_I64)
            p.add_incoming(ir.Constant(_I64, 0), pre)
            accs = [[builder.phi(_VT) for _ in range(nv)] for _ in range(mr)]
            for row in accs:
                for ph in row:
                    ph.add_incoming(zero, pre)
            brow = builder.gep(bp, [builder.mul(p, ldb)])
            bv = [vload(builder.gep(brow, [ir.Constant(_I64, 16 * v)]), v) for v in range(nv)]
            acol = builder.gep(ap, [builder.mul(p, a_cs)])
            new = []
            for r in range(mr):
                av = builder.load(builder.gep(acol, [builder.mul(a_rs, ir.Constant(_I64, r))]))
                sp = builder.insert_element(
                    ir.Constant(_VT, ir.Undefined), av, ir.Constant(_I32, 0)
                )
                sp = builder.shuffle_vector(sp, sp, ir.Constant(ir.VectorType(_I32, 16), None))
                new.append([builder.call(fma, [sp, bv[v], accs[r][v]]) for v in range(nv)])
            pn = builder.add(p, ir.Constant(_I64, 1))
            end = builder.block
            p.add_incoming(pn, end)
            for r in range(mr):
                for v in range(nv):
                    accs[r][v].add_incoming(new[r][v], end)
            builder.cbranch(builder.icmp_signed("<", pn, kc), loop, done)
            builder.position_at_end(done)
            ptrs = [
                [
                    builder.gep(
                        cp,
                        [
                            builder.add(
                                builder.mul(ldc, ir.Constant(_I64, r)), ir.Constant(_I64, 16 * v)
                            )
                        ],
                    )
                    for v in range(nv)
                ]
                for r in range(mr)
            ]
            with builder.if_else(accf) as (then, otherwise):
                with then:
                    for r in range(mr):
                        for v in range(nv):
                            old = vload(ptrs[r][v], v)
                            vstore(builder.fadd(old, new[r][v]), ptrs[r][v], v)
                with otherwise:
                    for r in range(mr):
                        for v in range(nv):
                            vstore(new[r][v], ptrs[r][v], v)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_T = {(mr, nv): _make_tile(mr, nv) for mr in range(1, MR + 1) for nv in range(1, NV + 1)}
_t1_1 = _T[1, 1]
_t1_2 = _T[1, 2]
_t1_3 = _T[1, 3]
_t1_4 = _T[1, 4]
_t2_1 = _T[2, 1]
_t2_2 = _T[2, 2]
_t2_3 = _T[2, 3]
_t2_4 = _T[2, 4]
_t3_1 = _T[3, 1]
_t3_2 = _T[3, 2]
_t3_3 = _T[3, 3]
_t3_4 = _T[3, 4]
_t4_1 = _T[4, 1]
_t4_2 = _T[4, 2]
_t4_3 = _T[4, 3]
_t4_4 = _T[4, 4]
_t5_1 = _T[5, 1]
_t5_2 = _T[5, 2]
_t5_3 = _T[5, 3]
_t5_4 = _T[5, 4]
_t6_1 = _T[6, 1]
_t6_2 = _T[6, 2]
_t6_3 = _T[6, 3]
_t6_4 = _T[6, 4]


@njit(cache=True)
def _tile(
    mr, nv, a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc
):  # pragma: no cover
    """Dispatches to the compiled tile of mr (1-6) rows and nv (1-4) vectors."""
    if mr == 6:
        if nv == 4:
            _t6_4(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 3:
            _t6_3(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 2:
            _t6_2(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        else:
            _t6_1(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
    elif mr == 5:
        if nv == 4:
            _t5_4(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 3:
            _t5_3(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 2:
            _t5_2(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        else:
            _t5_1(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
    elif mr == 4:
        if nv == 4:
            _t4_4(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 3:
            _t4_3(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 2:
            _t4_2(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        else:
            _t4_1(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
    elif mr == 3:
        if nv == 4:
            _t3_4(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 3:
            _t3_3(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 2:
            _t3_2(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        else:
            _t3_1(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
    elif mr == 2:
        if nv == 4:
            _t2_4(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 3:
            _t2_3(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 2:
            _t2_2(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        else:
            _t2_1(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
    elif mr == 1:
        if nv == 4:
            _t1_4(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 3:
            _t1_3(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        elif nv == 2:
            _t1_2(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)
        else:
            _t1_1(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, kc, last, acc)


KB = 256  # reduction steps per block: a 256 x 64 panel of B (64 KB) stays in L2 across tiles
RB = 48  # rows of A per task when M is large (8 tiles)


@njit(parallel=True, cache=True)
def gemm(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, m, n, k, kb=KB):  # pragma: no cover
    """C (m, n) = A (m, k) @ B (k, n), float32, on flat arrays with element strides.

    Element (i, p) of A is ``a[a_off + i a_rs + p a_cs]`` (any strides: A may be a
    transposed view), (p, j) of B is ``b[b_off + p ldb + j]`` and (i, j) of C is
    ``c[c_off + i ldc + j]`` (unit stride along rows). C is overwritten. Tasks are
    (rows of A, 64 columns of B) blocks, in parallel; with m <= 128 one task takes all
    the rows, so B is read once. Within a task the reduction runs in blocks of KB.
    """
    rb = m if m <= 128 else RB
    nrb = (m + rb - 1) // rb
    ncb = (n + NB - 1) // NB
    for t in prange(nrb * ncb):
        i_lo = (t // ncb) * rb
        i_hi = min(m, i_lo + rb)
        j0 = (t % ncb) * NB
        w = min(NB, n - j0)
        nv = (w + 15) // 16
        last = w - 16 * (nv - 1)
        for k0 in range(0, k, kb):
            kc = min(kb, k - k0)
            for i0 in range(i_lo, i_hi, MR):
                mr = min(MR, i_hi - i0)
                _tile(
                    mr,
                    nv,
                    a,
                    a_off + i0 * a_rs + k0 * a_cs,
                    a_rs,
                    a_cs,
                    b,
                    b_off + k0 * ldb + j0,
                    ldb,
                    c,
                    c_off + i0 * ldc + j0,
                    ldc,
                    kc,
                    last,
                    k0 > 0,
                )
