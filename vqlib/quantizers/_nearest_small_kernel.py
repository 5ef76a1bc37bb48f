"""numba kernel of :mod:`vqlib.quantizers.nearest_small` (imported only when numba is installed).

Four rows against 16 codes per step: the codebook is stored transposed (``(d, K)``, K padded to 16), so a step
loads 16 codes of one dimension as one vector, multiplies by the row's value (``llvm.fma``) and adds; after ``d``
steps the 16 scores are compared with the lanes' best so far. Lanes keep their first best (strict ``<``); the block's
best is the smallest value, at the lowest index among the lanes that hold it. Emitted as LLVM vector IR through
llvmlite (no C compiler); LLVM lowers it to the widest vectors the CPU has (portable to any target LLVM supports).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_F32, _I32, _I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
_VF, _VI = ir.VectorType(_F32, 16), ir.VectorType(_I32, 16)


def _addr(context, builder, aty, aval, offset):
    data = cgutils.create_struct_proxy(aty)(context, builder, value=aval).data
    return builder.gep(data, [offset])


def _splat(builder, value, vty):
    v = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(_VI, [0] * 16))


def _halves(builder, v, n):
    lo = ir.Constant(ir.VectorType(_I32, n), list(range(n)))
    hi = ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n)))
    return builder.shuffle_vector(v, v, lo), builder.shuffle_vector(v, v, hi)


@intrinsic
def _best16(typingctx, ct, coff, stride, x, xoff, d, bias, nchunks, out_v, out_i):
    """For 4 rows ``x[xoff + r·d : xoff + (r+1)·d]``: best of ``bias[coff + j] + Σ_t x_t·ct[t·stride + coff + j]``
    over ``j < 16·nchunks``, value and index into ``out_v[r]``, ``out_i[r]``. Each 16-code load serves 4 rows (four
    independent multiply-add chains)."""
    sig = types.void(ct, coff, stride, x, xoff, d, bias, nchunks, out_v, out_i)
    rows = 4

    def codegen(context, builder, signature, args):
        ct_v, coff_v, stride_v, x_v, xoff_v, d_v, bias_v, n_v, outv_v, outi_v = args
        ty = signature.args
        pc = _addr(context, builder, ty[0], ct_v, coff_v)
        px = _addr(context, builder, ty[3], x_v, xoff_v)
        pb = builder.bitcast(_addr(context, builder, ty[6], bias_v, coff_v), _VF.as_pointer())
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF, _VF, _VF]), "llvm.fma.v16f32")
        inf = ir.Constant(_VF, [ir.Constant(_F32, float("inf"))] * 16)
        best = [cgutils.alloca_once_value(builder, inf) for _ in range(rows)]
        bidx = [cgutils.alloca_once_value(builder, ir.Constant(_VI, [0] * 16)) for _ in range(rows)]
        acc = [cgutils.alloca_once(builder, _VF) for _ in range(rows)]
        lane = cgutils.alloca_once_value(builder, ir.Constant(_VI, list(range(16))))
        with cgutils.for_range(builder, n_v) as chunk:
            b0 = builder.load(builder.gep(pb, [chunk.index]), align=4)
            for r in range(rows):
                builder.store(b0, acc[r])
            base = builder.mul(chunk.index, ir.Constant(chunk.index.type, 16))
            with cgutils.for_range(builder, d_v) as dim:
                row = builder.gep(pc, [builder.add(builder.mul(dim.index, stride_v), base)])
                cv = builder.load(builder.bitcast(row, _VF.as_pointer()), align=4)
                for r in range(rows):
                    xi = builder.add(dim.index, builder.mul(d_v, ir.Constant(d_v.type, r)))
                    xt = _splat(builder, builder.load(builder.gep(px, [xi])), _VF)
                    builder.store(builder.call(fma, [xt, cv, builder.load(acc[r])]), acc[r])
            ln = builder.load(lane)
            for r in range(rows):
                a, b = builder.load(acc[r]), builder.load(best[r])
                better = builder.fcmp_ordered("<", a, b)
                builder.store(builder.select(better, a, b), best[r])
                builder.store(builder.select(better, ln, builder.load(bidx[r])), bidx[r])
            builder.store(builder.add(ln, ir.Constant(_VI, [16] * 16)), lane)
        big = ir.Constant(_VI, [2**31 - 1] * 16)
        for r in range(rows):
            b, idx = builder.load(best[r]), builder.load(bidx[r])
            m, n = b, 16
            while n > 1:  # smallest value
                n //= 2
                lo, hi = _halves(builder, m, n)
                m = builder.select(builder.fcmp_ordered("<=", lo, hi), lo, hi)
            mval = builder.extract_element(m, ir.Constant(_I32, 0))
            cand = builder.select(builder.fcmp_ordered("==", b, _splat(builder, mval, _VF)), idx, big)
            n = 16
            while n > 1:  # lowest index holding it
                n //= 2
                lo, hi = _halves(builder, cand, n)
                cand = builder.select(builder.icmp_signed("<", lo, hi), lo, hi)
            builder.store(mval, _addr(context, builder, ty[8], outv_v, ir.Constant(_I64, r)))
            ix = builder.sext(builder.extract_element(cand, ir.Constant(_I32, 0)), _I64)
            builder.store(ix, _addr(context, builder, ty[9], outi_v, ir.Constant(_I64, r)))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def best_codes(x, ct, bias, out_d, out_i, block):
    """Per row of ``x`` (``(n, d)`` padded to a multiple of 4 rows, flattened): the smallest score and its first
    index, in blocks of ``block`` codes; ``out_d``/``out_i`` hold ``n`` entries (padding rows are dropped).

    ``ct``: ``(d, K)`` transposed, scaled codebook, ``K`` a multiple of 16 (padding: ``bias`` +inf).
    """
    d = ct.shape[0]
    num_codes = ct.shape[1]
    n = out_d.shape[0]
    tv = np.empty(4, np.float32)
    ti = np.empty(4, np.int64)
    for i in range(n):
        out_d[i] = np.inf
        out_i[i] = 0
    for j0 in range(0, num_codes, block):
        nch = min(block, num_codes - j0) // 16
        for i0 in range(0, n, 4):
            _best16(ct, j0, num_codes, x, i0 * d, d, bias, nch, tv, ti)
            for r in range(min(4, n - i0)):
                if tv[r] < out_d[i0 + r]:  # strict: an earlier block keeps a tie
                    out_d[i0 + r] = tv[r]
                    out_i[i0 + r] = j0 + ti[r]
