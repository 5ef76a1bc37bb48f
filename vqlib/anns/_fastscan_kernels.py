"""Compiled kernels of the SAQ fast scan (numba); see :mod:`vqlib.anns.fastscan` for the layout and the bound.

Everything here is a top-level function with ``cache=True``: the compiled code is written next to this file
(or to numba's user cache directory) and a second process loads it instead of compiling again. Three
instruction sets are compiled from one kernel body, chosen by a literal ``mode``:

- ``AVX512`` / ``AVX2``: the 4-bit look-up of 32 codes per block by byte shuffles (``vpshufb``, emitted as the
  LLVM x86 intrinsic through llvmlite: no C compiler), exact dot products of the unpacked codes by 16-lane multiply-adds;
- ``PORTABLE``: the same integer sums and the same float dot products in plain numba (any CPU numba supports).

All modes give the same uint16 sums, hence the same pruning decisions and the same results.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import literally, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

PORTABLE, AVX2, AVX512 = 0, 1, 2

_I1, _I8, _I16, _I32 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32)
_F32 = ir.FloatType()


def _splat(vty, value):
    return ir.Constant(vty, [ir.Constant(vty.element, value)] * vty.count)


def _indices(values):
    return ir.Constant(ir.VectorType(_I32, len(values)), [ir.Constant(_I32, v) for v in values])


def _address(context, builder, aty, aval, offset):
    """``i8*`` to element ``offset`` of a C-contiguous array."""
    data = cgutils.create_struct_proxy(aty)(context, builder, value=aval).data
    return builder.bitcast(builder.gep(data, [offset]), _I8.as_pointer())


def _shuffle_sums(width):
    """Intrinsic: 32 uint16 sums of one block over ``npairs`` pairs of 4-bit sub-codes, ``width``-byte shuffles.

    A pair occupies 32 code bytes (low nibbles: codes of vectors ``[0, 8, 1, 9, ..., 7, 15]`` of the first
    sub-code in bytes 0-15, of the second in bytes 16-31; high nibbles: vectors + 16) and 32 table bytes (the
    two 16-entry tables). One shuffle per nibble looks up 32 (or 64) bytes at once; the bytes are widened to
    uint16 lanes as even/odd halves and, at the end, the halves are recombined into vector order.
    """
    vb, vw = ir.VectorType(_I8, width), ir.VectorType(_I16, width // 2)
    name = "llvm.x86.avx2.pshuf.b" if width == 32 else "llvm.x86.avx512.pshuf.b.512"

    def typer(typingctx, codes, coff, lut, loff, npairs, out, ooff):
        sig = types.void(codes, coff, lut, loff, npairs, out, ooff)

        def codegen(context, builder, signature, args):
            codes_v, coff_v, lut_v, loff_v, npairs_v, out_v, ooff_v = args
            ty = signature.args
            pc = builder.bitcast(_address(context, builder, ty[0], codes_v, coff_v), vb.as_pointer())
            pl = builder.bitcast(_address(context, builder, ty[2], lut_v, loff_v), vb.as_pointer())
            shuffle = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vb, [vb, vb]), name)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vw, None)) for _ in range(4)]
            steps = npairs_v if width == 32 else builder.lshr(npairs_v, ir.Constant(npairs_v.type, 1))
            with cgutils.for_range(builder, steps) as loop:
                c = builder.load(builder.gep(pc, [loop.index]), align=1)
                table = builder.load(builder.gep(pl, [loop.index]), align=1)
                nibbles = (builder.and_(c, _splat(vb, 15)), builder.lshr(c, _splat(vb, 4)))
                for half, idx in enumerate(nibbles):
                    r = builder.bitcast(builder.call(shuffle, [table, idx]), vw)
                    even, odd = accs[2 * half], accs[2 * half + 1]
                    builder.store(builder.add(builder.load(even), builder.and_(r, _splat(vw, 0xFF))), even)
                    builder.store(builder.add(builder.load(odd), builder.lshr(r, _splat(vw, 8))), odd)
            sums = [builder.load(a) for a in accs]
            if width == 64:  # the upper 256 bits hold the second pair of each step: same lane order
                lo, hi = _indices(range(16)), _indices(range(16, 32))
                sums = [builder.add(builder.shuffle_vector(s, s, lo), builder.shuffle_vector(s, s, hi)) for s in sums]
            # 16-bit lane e of the first 128 bits: vector e (even byte) and e+8 (odd byte) of the first sub-code;
            # lane 8+e: vector e and e+8 of the second sub-code.
            first, second = _indices([*range(8), *range(16, 24)]), _indices([*range(8, 16), *range(24, 32)])
            po = builder.bitcast(_address(context, builder, ty[5], out_v, ooff_v), ir.VectorType(_I16, 16).as_pointer())
            for half in range(2):
                even, odd = sums[2 * half], sums[2 * half + 1]
                v = builder.add(builder.shuffle_vector(even, odd, first), builder.shuffle_vector(even, odd, second))
                builder.store(v, builder.gep(po, [ir.Constant(_I32, half)]), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return intrinsic(typer)


_sums_avx2 = _shuffle_sums(32)
_sums_avx512 = _shuffle_sums(64)


@intrinsic
def _code_dot_simd(typingctx, ucodes, coff, u, uoff, nchunks):
    """``Σ_i c_i · u_i`` over ``16·nchunks`` unsigned integer codes: 16 codes → 16 floats → multiply and add."""
    sig = types.float32(ucodes, coff, u, uoff, nchunks)
    vf = ir.VectorType(_F32, 16)

    def codegen(context, builder, signature, args):
        codes_v, coff_v, u_v, uoff_v, n_v = args
        ty = signature.args
        vc = ir.VectorType(ir.IntType(ty[0].dtype.bitwidth), 16)
        pc = builder.bitcast(_address(context, builder, ty[0], codes_v, coff_v), vc.as_pointer())
        pu = builder.bitcast(_address(context, builder, ty[2], u_v, uoff_v), vf.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(vf, None))
        with cgutils.for_range(builder, n_v) as loop:
            c = builder.uitofp(builder.load(builder.gep(pc, [loop.index]), align=1), vf)
            uv = builder.load(builder.gep(pu, [loop.index]), align=1)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(c, uv)), acc)
        v, n = builder.load(acc), 16
        while n > 1:  # pairwise horizontal sum; the portable path adds in the same order
            n //= 2
            v = builder.fadd(builder.shuffle_vector(v, v, _indices(range(n))), builder.shuffle_vector(v, v, _indices(range(n, 2 * n))))
        return builder.extract_element(v, ir.Constant(_I32, 0))

    return sig, codegen


@njit(cache=True, nogil=True)
def _code_dot_portable(ucodes, coff, u, uoff, nchunks):
    """``_code_dot_simd`` in plain numba, with its 16 lanes and its order of additions."""
    lanes = np.zeros(16, np.float32)
    for c in range(nchunks):
        for i in range(16):
            lanes[i] += np.float32(ucodes[coff + 16 * c + i]) * u[uoff + 16 * c + i]
    n = 16
    while n > 1:
        n //= 2
        for i in range(n):
            lanes[i] = lanes[i] + lanes[i + n]
    return lanes[0]


def _code_dot(mode, ucodes, coff, u, uoff, nchunks):
    raise NotImplementedError  # replaced by the overload below inside compiled code


@overload(_code_dot)
def _code_dot_impl(mode, ucodes, coff, u, uoff, nchunks):
    if not isinstance(mode, types.IntegerLiteral):
        return None
    kernel = _code_dot_portable if mode.literal_value == PORTABLE else _code_dot_simd
    return lambda mode, ucodes, coff, u, uoff, nchunks: kernel(ucodes, coff, u, uoff, nchunks)


@njit(cache=True, nogil=True)
def _sums_portable(codes, coff, lut, loff, npairs, out, ooff):
    """The shuffle kernels' uint16 sums in plain numba (same layout, same integers)."""
    for t in range(32):
        out[ooff + t] = 0
    for p in range(npairs):
        c = coff + 32 * p
        t0 = loff + 32 * p
        for j in range(16):
            v = (j >> 1) + 8 * (j & 1)  # byte j holds vector v (low nibble) and v + 16 (high nibble)
            b0 = codes[c + j]
            b1 = codes[c + 16 + j]
            out[ooff + v] += np.uint16(lut[t0 + (b0 & 15)]) + np.uint16(lut[t0 + 16 + (b1 & 15)])
            out[ooff + v + 16] += np.uint16(lut[t0 + (b0 >> 4)]) + np.uint16(lut[t0 + 16 + (b1 >> 4)])


def _block_sums(mode, codes, coff, lut, loff, npairs, out, ooff):
    raise NotImplementedError  # replaced by the overload below inside compiled code


@overload(_block_sums)
def _block_sums_impl(mode, codes, coff, lut, loff, npairs, out, ooff):
    if not isinstance(mode, types.IntegerLiteral):
        return None
    kernel = {AVX512: _sums_avx512, AVX2: _sums_avx2}.get(mode.literal_value, _sums_portable)
    return lambda mode, codes, coff, lut, loff, npairs, out, ooff: kernel(codes, coff, lut, loff, npairs, out, ooff)


@njit(nogil=True, inline="never")
def _insert(hd, hp, dist, p, k):
    i = k - 1
    while i > 0 and hd[i - 1] > dist:
        hd[i] = hd[i - 1]
        hp[i] = hp[i - 1]
        i -= 1
    hd[i] = dist
    hp[i] = p


@njit(nogil=True, fastmath={"nnan", "ninf", "nsz"}, boundscheck=False)
def _scan(mode, qseg, cseg, qtail, ctail, qconst, probe, ip, bound_m, k,
          grp_seg, grp_start, grp_dims, seg_start, seg_dims, seg_bits,
          blk_off, anchor, codes, fblk, rescale, norm2, ucodes, pos, out_d, out_p, stats):  # fmt: skip
    """Top-k over the probed lists of each query (rows of ``qseg``); see fastscan.py for the arrays and the bound."""
    literally(mode)
    nq, dp = qseg.shape
    nprobe = probe.shape[1]
    ns, ng = seg_dims.shape[0], grp_dims.shape[0]
    nblk = blk_off[blk_off.shape[0] - 1]
    bpb = codes.shape[0] // nblk if nblk > 0 else dp * 4  # code bytes per block of 32 (dp/8 pairs of 32 bytes per plane)
    two = bpb == dp * 8  # the first stage reads the top two bit planes (build_layout's stage_bits)
    w2 = np.zeros(ns, np.float32)  # weight of the second plane per segment, and Δ'/2 − 1 of ō' = Δ'(c' + ½) − 1
    hd2 = np.full(ns, np.float32(-0.5))
    for j in range(ns):
        if two and seg_bits[j] >= 2:
            w2[j] = np.float32(0.5)
            hd2[j] = np.float32(-0.75)
    inf = np.float32(np.inf)
    z = np.float32(0.0)
    u = np.zeros(dp, np.float32)
    qa = np.zeros(dp, np.float32)
    lut = np.zeros(dp * 4, np.uint8)  # 16 entries per 4 dimensions
    tab = np.zeros(16, np.float32)
    ginv = np.zeros(ng, np.float32)
    gadd = np.zeros(ng, np.float32)
    sumu = np.zeros(ns, np.float32)
    normsq = np.zeros(ns, np.float32)
    slack = np.zeros(ns, np.float32)
    sadd = np.zeros(ns, np.float32)
    acc = np.zeros(2 * ng * 32, np.uint16)
    up = np.zeros((ns, 32), np.float32)
    tot = np.zeros(32, np.float32)
    lb = np.zeros(32, np.float32)
    order = np.arange(32)
    base = np.zeros(32, np.float32)
    wmax = np.zeros(32, np.float32)
    beta = np.float32(1.0) if ip else np.float32(2.0)
    prune = bound_m > 0
    m = np.float32(bound_m)
    for qi in range(nq):
        hd = out_d[qi]
        hp = out_p[qi]
        for i in range(k):
            hd[i] = inf
            hp[i] = -1
        built = False
        if prune:  # tables of ⟨bit, q − anchor⟩, once per query (l2: ⟨bit, c_l − anchor⟩ is stored per code)
            for d in range(dp):
                qa[d] = qseg[qi, d] if ip else qseg[qi, d] - anchor[d]
            for g in range(ng):  # uint8 tables: per group one scale, per 4 dimensions one offset
                g0 = grp_start[g]
                nsq = grp_dims[g] // 4
                span = z
                bias = z
                for sq in range(nsq):
                    a = g0 + 4 * sq
                    bias += min(qa[a], z) + min(qa[a + 1], z) + min(qa[a + 2], z) + min(qa[a + 3], z)
                    span = max(span, abs(qa[a]) + abs(qa[a + 1]) + abs(qa[a + 2]) + abs(qa[a + 3]))
                scale = np.float32(255.0) / span if span > 0 else z
                inv = span / np.float32(255.0)
                for sq in range(nsq):
                    a = g0 + 4 * sq
                    lo = min(qa[a], z) + min(qa[a + 1], z) + min(qa[a + 2], z) + min(qa[a + 3], z)
                    # entry e = Σ of qa[a + b] over the set bits b of e, added in increasing b
                    tab[0] = z
                    tab[1] = qa[a]
                    tab[2] = qa[a + 1]
                    tab[3] = qa[a] + qa[a + 1]
                    for e in range(4):
                        tab[4 + e] = tab[e] + qa[a + 2]
                    for e in range(8):
                        tab[8 + e] = tab[e] + qa[a + 3]
                    for e in range(16):
                        lut[4 * a + e] = np.uint8(np.int32((tab[e] - lo) * scale + np.float32(0.5)))
                ginv[g] = inv
                # each table entry is off by at most half a step: nsq/2 steps per sum (+ float slack)
                gadd[g] = bias + (np.float32(0.5) * nsq + np.float32(0.05)) * inv
        for r in range(nprobe):
            l = probe[qi, r]
            if l < 0 or blk_off[l] == blk_off[l + 1]:
                continue
            if not (ip and built):  # u = rotated query residual (l2) or rotated query (ip)
                for d in range(dp):
                    u[d] = qseg[qi, d] if ip else qseg[qi, d] - cseg[l, d]
                for j in range(ns):
                    s = z
                    s2 = z
                    for d in range(seg_start[j], seg_start[j] + seg_dims[j]):
                        s += u[d]
                        s2 += u[d] * u[d]
                    sumu[j] = s
                    normsq[j] = s2
                if prune:
                    for j in range(ns):
                        sadd[j] = hd2[j] * sumu[j]
                    for g in range(ng):
                        sadd[grp_seg[g]] += gadd[g] * (np.float32(1.0) + w2[grp_seg[g]])
                    for j in range(ns):  # m standard deviations of the 1-bit estimate's error, per segment
                        slack[j] = np.sqrt(normsq[j])
                built = True
            if ip:
                const = -qconst[qi, r]
            else:
                const = z
                for j in range(ns):
                    const += normsq[j]
                for d in range(qtail.shape[1]):
                    t = qtail[qi, d] - ctail[l, d]
                    const += t * t
            for blk in range(blk_off[l], blk_off[l + 1]):
                p0 = blk * 32
                for t in range(32):
                    nb = norm2[p0 + t]
                    base[t] = nb if not ip else (z if nb < inf else inf)
                thr = hd[k - 1]
                # with no k-th distance yet (a query's first codes) the bounds still order the exact estimates:
                # the most promising first, so the k-th distance exists after about k of them
                warm = prune and not thr < inf
                bounded = prune
                if bounded:
                    stats[qi, 0] += 32
                    for g in range(ng):
                        _block_sums(mode, codes, blk * bpb + 4 * grp_start[g], lut, 4 * grp_start[g], grp_dims[g] // 8, acc, 32 * g)
                        if w2[grp_seg[g]] > 0:  # the second plane: same tables, codes dp dimensions further on
                            _block_sums(mode, codes, blk * bpb + 4 * (dp + grp_start[g]), lut, 4 * grp_start[g],
                                        grp_dims[g] // 8, acc, 32 * (ng + g))  # fmt: skip
                    for j in range(ns):
                        for t in range(32):
                            up[j, t] = z
                    for g in range(ng):
                        j = grp_seg[g]
                        if w2[j] > 0:
                            for t in range(32):
                                up[j, t] += (np.float32(acc[32 * g + t]) + w2[j] * np.float32(acc[32 * (ng + g) + t])) * ginv[g]
                        else:
                            for t in range(32):
                                up[j, t] += np.float32(acc[32 * g + t]) * ginv[g]
                    for t in range(32):
                        tot[t] = z
                    for t in range(32):  # l2: the error's scale ‖w_j‖ is at most √(d + excess) for a code at distance d
                        wmax[t] = np.sqrt(max(thr + fblk[blk, 2 * ns, t], z)) if not ip else inf
                    for j in range(ns):
                        for t in range(32):
                            cd = z if ip else fblk[blk, 2 * ns + 1 + j, t]
                            v = fblk[blk, 2 * j, t] * (up[j, t] + sadd[j] - cd) + fblk[blk, 2 * j + 1, t] * m * min(slack[j], wmax[t])
                            up[j, t] = v
                            tot[t] += v
                    anyp = False
                    for t in range(32):
                        lb[t] = base[t] + const - beta * tot[t]
                        anyp |= lb[t] < thr
                    if not anyp:
                        continue
                if warm:
                    order[:] = np.argsort(lb)
                for tt in range(32):
                    t = order[tt] if warm else tt
                    if base[t] == inf or (bounded and not lb[t] < hd[k - 1]):
                        continue
                    p = p0 + t
                    est = z
                    upper = tot[t]
                    alive = True
                    for j in range(ns):
                        stats[qi, 1 + j] += 1
                        dot = _code_dot(mode, ucodes, p * dp + seg_start[j], u, seg_start[j], seg_dims[j] // 16)
                        delta = np.float32(2.0) / np.float32(1 << seg_bits[j])
                        e = rescale[p, j] * (delta * dot + (delta * np.float32(0.5) - np.float32(1.0)) * sumu[j])
                        est += e
                        if bounded and j + 1 < ns:  # SAQ's stages: later segments still at their first-stage bound
                            upper += e - up[j, t]
                            if not base[t] + const - beta * upper < hd[k - 1]:
                                alive = False
                                break
                    if alive:
                        dist = base[t] + const - beta * est
                        if dist < hd[k - 1]:
                            _insert(hd, hp, dist, pos[p], k)


@njit(cache=True, nogil=True)
def scan_portable(qseg, cseg, qtail, ctail, qconst, probe, ip, bound_m, k, grp_seg, grp_start, grp_dims, seg_start,
                  seg_dims, seg_bits, blk_off, anchor, codes, fblk, rescale, norm2, ucodes, pos, out_d,
                  out_p, stats):  # fmt: skip
    _scan(PORTABLE, qseg, cseg, qtail, ctail, qconst, probe, ip, bound_m, k, grp_seg, grp_start, grp_dims, seg_start,
          seg_dims, seg_bits, blk_off, anchor, codes, fblk, rescale, norm2, ucodes, pos, out_d, out_p, stats)  # fmt: skip


@njit(cache=True, nogil=True)
def scan_avx2(qseg, cseg, qtail, ctail, qconst, probe, ip, bound_m, k, grp_seg, grp_start, grp_dims, seg_start,
              seg_dims, seg_bits, blk_off, anchor, codes, fblk, rescale, norm2, ucodes, pos, out_d,
              out_p, stats):  # fmt: skip
    _scan(AVX2, qseg, cseg, qtail, ctail, qconst, probe, ip, bound_m, k, grp_seg, grp_start, grp_dims, seg_start,
          seg_dims, seg_bits, blk_off, anchor, codes, fblk, rescale, norm2, ucodes, pos, out_d, out_p, stats)  # fmt: skip


@njit(cache=True, nogil=True)
def scan_avx512(qseg, cseg, qtail, ctail, qconst, probe, ip, bound_m, k, grp_seg, grp_start, grp_dims, seg_start,
                seg_dims, seg_bits, blk_off, anchor, codes, fblk, rescale, norm2, ucodes, pos, out_d,
                out_p, stats):  # fmt: skip
    _scan(AVX512, qseg, cseg, qtail, ctail, qconst, probe, ip, bound_m, k, grp_seg, grp_start, grp_dims, seg_start,
          seg_dims, seg_bits, blk_off, anchor, codes, fblk, rescale, norm2, ucodes, pos, out_d, out_p, stats)  # fmt: skip


KERNELS = {"portable": scan_portable, "avx2": scan_avx2, "avx512": scan_avx512}
