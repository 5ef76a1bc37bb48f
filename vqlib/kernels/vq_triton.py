"""Triton kernels for codebook-compressed linear layers (format in :mod:`vqlib.kernels.vq_linear`).

Three kernels, each a launcher below:

- :func:`gemm`, fused dequantise-GEMM for many rows: a program owns a ``BM × BN`` output
  tile; per ``BK`` step it decodes the ``BK × BN`` weight tile in registers from codes
  (``W[n, k] = C[g(n), a[n, k // v], k mod v]``, sign applied), multiplies it with
  ``tl.dot`` (fp32 accumulation) and fuses the per-channel scale and the bias in the
  epilogue (the scale is constant along k, so it multiplies the finished dot product).
  The codebook is read by gathers from global memory: a 256 × 4 fp16 codebook is 2 KiB
  and stays in L1, so it is in effect staged per program without an explicit copy.
- :func:`lut_linear`, look-up-table GEMV for few rows: one kernel builds, per row m,
  codebook group g and input group j, the table ``T[g, m, j, c] = ⟨x[m, j·v:(j+1)·v], C[g, c]⟩``
  of every codeword; a second sums ``T[g(n), m, j, a[n, j]]`` over j for each output n. No
  weight is ever decoded; the table (M·J·K fp32 per group) is meant to live in L2.
- :func:`dequantize`, codes → dense weight, for shapes where cuBLAS on the dense weight wins.

Codes are clamped to ``[0, K)`` inside the kernels so that a code that slipped past
:meth:`VQLinear.validate` can never read outside the codebook; the module validates
codes (again after any in-place edit) so a clamped value is never silently used.

``TRITON_INTERPRET=1`` (set before triton is imported) runs the kernels on CPU tensors
with Triton's interpreter. There ``@triton.autotune`` is skipped (one fixed, large
configuration: interpreter time grows with the number of programs) and bf16 tiles are
multiplied in fp32 (bf16 ``tl.dot`` is wrong under the interpreter; fp16 is fine), and
bf16 results are written in fp32 and rounded by torch (the interpreter truncates fp32 → bf16
where a GPU rounds to nearest even).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the torch reference still runs everywhere
    triton = tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "INTERPRET", "dequantize", "gemm", "lut_linear"]

INTERPRET = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _require_triton() -> None:
    if not HAS_TRITON:
        raise RuntimeError("vqlib.kernels Triton kernels need triton: pip install 'vqlib[kernels]'")


def _check_device(*ts: torch.Tensor | None) -> None:
    for t in ts:
        if t is not None and not (t.is_cuda or INTERPRET):
            raise ValueError(f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got one on {t.device}")


def _check_layer(codebook, codes, scales, signs, bias=None) -> tuple[int, int, int, int, int]:
    """(G, K, v, N, D) of a stored layer; contiguity is required because the kernels index codes and codebook flat."""
    g, k, v = codebook.shape
    n, j = codes.shape
    if n % g:
        raise ValueError(f"{g} codebooks must split the {n} output rows evenly")
    if codes.dtype not in (torch.uint8, torch.int16):
        raise ValueError(f"codes must be uint8 or int16, got {codes.dtype}")
    for name, t in (("codebook", codebook), ("codes", codes), ("signs", signs)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    for name, t in (("scales", scales), ("bias", bias)):
        if t is not None and t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if signs is not None and (signs.dtype != torch.uint8 or signs.shape != (n, (j * v + 7) // 8)):
        need, got = (n, (j * v + 7) // 8), f"{signs.dtype} {tuple(signs.shape)}"
        raise ValueError(f"packed signs must be uint8 of shape {need}, got {got}")
    _check_device(codebook, codes, scales, signs, bias)
    return g, k, v, n, j * v


def _check_x(x: torch.Tensor, d: int) -> None:
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"expected x of shape (M, {d}), got {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"expected fp16, bf16 or fp32 x, got {x.dtype}")


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    # the interpreter truncates fp32 → bf16 (a GPU rounds to nearest even): write fp32, let torch round
    return torch.float32 if INTERPRET and dtype == torch.bfloat16 else dtype


def _dummy(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # a valid pointer for an absent optional tensor; the kernel never reads it (constexpr flag off)
    return like if t is None else t


if HAS_TRITON:

    @triton.jit
    def _decode(
        codes_ptr, cb_ptr, sign_ptr, rn, rk, mask, g, NCODES, stride_cn, stride_sn,
        V: tl.constexpr, HAS_SIGN: tl.constexpr,
    ):  # fmt: skip
        """Weights W[rn, rk] (any 2-D broadcast of rn and rk) in fp32, scale not applied."""
        code = tl.load(codes_ptr + rn * stride_cn + rk // V, mask=mask, other=0).to(tl.int32) & 0xFFFF
        code = tl.minimum(code, NCODES - 1)
        w = tl.load(cb_ptr + (g * NCODES + code) * V + rk % V, mask=mask, other=0.0).to(tl.float32)
        if HAS_SIGN:
            byte = tl.load(sign_ptr + rn * stride_sn + rk // 8, mask=mask, other=0).to(tl.int32)
            w = tl.where(((byte >> (rk % 8)) & 1) != 0, -w, w)
        return w

    @triton.jit
    def _dequant_kernel(
        codes_ptr, cb_ptr, scale_ptr, sign_ptr, out_ptr,
        N, D, NCODES, ROWS_PER_GROUP, stride_cn, stride_sn,
        V: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SIGN: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):  # fmt: skip
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        rk = tl.program_id(1) * BK + tl.arange(0, BK)
        mask = (rn < N)[:, None] & (rk < D)[None, :]
        g = (rn // ROWS_PER_GROUP)[:, None]
        w = _decode(codes_ptr, cb_ptr, sign_ptr, rn[:, None], rk[None, :], mask, g, NCODES, stride_cn, stride_sn,
                    V, HAS_SIGN)  # fmt: skip
        if HAS_SCALE:
            w *= tl.load(scale_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
        out = out_ptr + rn[:, None].to(tl.int64) * D + rk[None, :]
        tl.store(out, w.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gemm_kernel(
        x_ptr, codes_ptr, cb_ptr, scale_ptr, sign_ptr, bias_ptr, y_ptr,
        M, N, D, NCODES, ROWS_PER_GROUP, stride_xm, stride_xk, stride_cn, stride_sn, stride_ym, M_BUCKET,
        V: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SIGN: tl.constexpr, HAS_BIAS: tl.constexpr,
        DOT_FP32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    ):  # fmt: skip
        # grouped program order: GROUP_M row tiles share each decoded column band while it is in L2
        pid = tl.program_id(0)
        tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        size_m = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % size_m
        pid_n = (pid % per_group) // size_m
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        g = (rn // ROWS_PER_GROUP)[None, :]
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, D, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :] * stride_xk,
                        mask=(rm < M)[:, None] & (rk < D)[None, :], other=0.0)  # fmt: skip
            wmask = (rk < D)[:, None] & (rn < N)[None, :]
            w = _decode(codes_ptr, cb_ptr, sign_ptr, rn[None, :], rk[:, None], wmask, g, NCODES, stride_cn,
                        stride_sn, V, HAS_SIGN)  # fmt: skip
            if DOT_FP32:
                acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
            else:
                acc += tl.dot(x, w.to(x.dtype))
        if HAS_SCALE:
            acc *= tl.load(scale_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        y = y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :]
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])

    @triton.jit
    def _lut_build_kernel(
        x_ptr, cb_ptr, lut_ptr, M, J, NCODES, stride_xm, stride_xk,
        V: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr,
    ):  # fmt: skip
        gm = tl.program_id(0)  # = g * M + m
        g, m = gm // M, gm % M
        rj = tl.program_id(1) * BJ + tl.arange(0, BJ)
        rc = tl.program_id(2) * BC + tl.arange(0, BC)
        acc = tl.zeros((BJ, BC), dtype=tl.float32)
        for t in tl.static_range(V):
            xv = tl.load(x_ptr + m.to(tl.int64) * stride_xm + (rj * V + t) * stride_xk, mask=rj < J, other=0.0)
            cv = tl.load(cb_ptr + (g * NCODES + rc) * V + t, mask=rc < NCODES, other=0.0)
            acc += xv.to(tl.float32)[:, None] * cv.to(tl.float32)[None, :]
        out = lut_ptr + (gm.to(tl.int64) * J + rj[:, None]) * NCODES + rc[None, :]
        tl.store(out, acc, mask=(rj < J)[:, None] & (rc < NCODES)[None, :])

    @triton.jit
    def _lut_gather_kernel(
        lut_ptr, codes_ptr, scale_ptr, bias_ptr, y_ptr,
        M, N, J, NCODES, ROWS_PER_GROUP, stride_cn, stride_ym,
        HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr,
    ):  # fmt: skip
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        rm = tl.arange(0, BM)
        g = rn // ROWS_PER_GROUP
        # table row of (g(n), m): (BM, BN, 1)
        base = ((g[None, :] * M + rm[:, None]).to(tl.int64) * J)[:, :, None]
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for j0 in range(0, J, BJ):
            rj = j0 + tl.arange(0, BJ)
            cmask = (rn < N)[:, None] & (rj < J)[None, :]
            code = tl.load(codes_ptr + rn[:, None] * stride_cn + rj[None, :], mask=cmask, other=0).to(tl.int32)
            code = tl.minimum(code & 0xFFFF, NCODES - 1)
            ptr = lut_ptr + (base + rj[None, None, :]) * NCODES + code[None, :, :]
            vals = tl.load(ptr, mask=(rm < M)[:, None, None] & cmask[None, :, :], other=0.0)
            acc += tl.sum(vals, axis=2)
        if HAS_SCALE:
            acc *= tl.load(scale_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        y = y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :]
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])

    if INTERPRET:
        _gemm = _gemm_kernel
    else:
        # candidates, not a measured choice: no GPU was available when this was written
        _gemm = triton.autotune(
            configs=[
                triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
                for bm, bn, bk, w, s in [
                    (16, 64, 64, 4, 4),
                    (16, 128, 64, 4, 4),
                    (32, 64, 64, 4, 4),
                    (64, 64, 64, 4, 3),
                    (64, 128, 64, 4, 3),
                    (128, 64, 64, 4, 3),
                    (128, 128, 64, 8, 3),
                    (128, 256, 64, 8, 3),
                ]
            ],  # fmt: skip
            key=["M_BUCKET", "N", "D", "V", "HAS_SIGN"],
        )(_gemm_kernel)


# Block sizes under the interpreter: few, large programs (its time grows with the program count).
_INTERP_GEMM = {"BM": 32, "BN": 64, "BK": 64, "GROUP_M": 4}


def dequantize(codebook, codes, scales=None, signs=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense ``(N, D)`` weight from codes, in ``dtype`` (default the codebook's)."""
    _require_triton()
    g, k, v, n, d = _check_layer(codebook, codes, scales, signs)
    dtype = dtype or codebook.dtype
    out = torch.empty(n, d, dtype=_out_dtype(dtype), device=codes.device)
    bn, bk = (64, 128) if INTERPRET else (32, 128)
    grid = (triton.cdiv(n, bn), triton.cdiv(d, bk))
    _dequant_kernel[grid](
        codes, codebook, _dummy(scales, codebook), _dummy(signs, codes), out,
        n, d, k, n // g, codes.stride(0), signs.stride(0) if signs is not None else 0,
        V=v, HAS_SCALE=scales is not None, HAS_SIGN=signs is not None, BN=bn, BK=bk,
    )  # fmt: skip
    return out.to(dtype)


def gemm(x, codebook, codes, scales=None, signs=None, bias=None) -> torch.Tensor:
    """``x Wᵀ + b`` with W decoded tile by tile inside the GEMM; ``x`` is ``(M, D)``, the result is in x's dtype."""
    _require_triton()
    g, k, v, n, d = _check_layer(codebook, codes, scales, signs, bias)
    _check_x(x, d)
    _check_device(x)
    m = x.shape[0]
    y = torch.empty(m, n, dtype=_out_dtype(x.dtype), device=x.device)
    if m == 0:
        return y.to(x.dtype)
    # fp32 activations keep fp32 products; bf16 tl.dot is wrong under the interpreter
    dot_fp32 = x.dtype == torch.float32 or (INTERPRET and x.dtype == torch.bfloat16)
    args = (
        x, codes, codebook, _dummy(scales, codebook), _dummy(signs, codes), _dummy(bias, codebook), y,
        m, n, d, k, n // g, x.stride(0), x.stride(1), codes.stride(0),
        signs.stride(0) if signs is not None else 0, y.stride(0), min(triton.next_power_of_2(m), 4096),
    )  # fmt: skip
    flags = dict(V=v, HAS_SCALE=scales is not None, HAS_SIGN=signs is not None, HAS_BIAS=bias is not None)

    def grid(meta):
        return (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)

    if INTERPRET:
        _gemm[grid](*args, **flags, DOT_FP32=dot_fp32, **_INTERP_GEMM)
    else:
        _gemm[grid](*args, **flags, DOT_FP32=dot_fp32)
    return y.to(x.dtype)


LUT_MAX_ROWS = 8


def lut_linear(x, codebook, codes, scales=None, signs=None, bias=None) -> torch.Tensor:
    """``x Wᵀ + b`` for at most 8 rows through per-group look-up tables (no sign bits)."""
    _require_triton()
    g, k, v, n, d = _check_layer(codebook, codes, scales, signs, bias)
    _check_x(x, d)
    _check_device(x)
    if signs is not None:
        raise ValueError("the look-up-table kernel does not support sign bits (a sign per weight breaks the table)")
    m = x.shape[0]
    if m > LUT_MAX_ROWS:
        raise ValueError(f"the look-up-table kernel takes at most {LUT_MAX_ROWS} rows, got {m}")
    y = torch.empty(m, n, dtype=_out_dtype(x.dtype), device=x.device)
    if m == 0:
        return y.to(x.dtype)
    j = d // v
    lut = torch.empty(g, m, j, k, dtype=torch.float32, device=x.device)
    bj, bc = (64, 256) if INTERPRET else (32, 64)
    _lut_build_kernel[(g * m, triton.cdiv(j, bj), triton.cdiv(k, bc))](
        x, codebook, lut, m, j, k, x.stride(0), x.stride(1), V=v, BJ=bj, BC=bc
    )
    bn, bjg = (128, 64) if INTERPRET else (64, 32)
    _lut_gather_kernel[(triton.cdiv(n, bn),)](
        lut, codes, _dummy(scales, lut), _dummy(bias, lut), y,
        m, n, j, k, n // g, codes.stride(0), y.stride(0),
        HAS_SCALE=scales is not None, HAS_BIAS=bias is not None, BM=max(2, triton.next_power_of_2(m)), BN=bn, BJ=bjg,
    )  # fmt: skip
    return y.to(x.dtype)
