"""One dispatch table for CPU and GPU: which path computes ``x Wᵀ + b`` (or W) for a stored layer.

:func:`select_kernel` is the only place that decides, from the requested kernel, the device,
the number of rows and whether Triton is there; :data:`LINEAR` maps each name to the function
that runs it, and :func:`dequantize` picks the dense-weight path the same way.

=================  =====================================================================
``auto`` picks     when
=================  =====================================================================
reference-lut      no Triton on this device, rows ≤ ``CPU_LUT_MAX_ROWS``, no signs, K ≤ 256
reference          no Triton on this device, otherwise
triton-dequant     CUDA + Triton, fp32 activations, or rows > ``GEMM_MAX_ROWS``
triton-lut         CUDA + Triton, rows ≤ ``vq_triton.LUT_MAX_ROWS``, no signs, K ≤ 256
triton-gemm        CUDA + Triton, otherwise
=================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import vq_triton
from .reference import vq_dequantize_reference, vq_linear_reference, vq_lut_linear_reference
from .vq_triton import LUT_MAX_ROWS

__all__ = ["KERNELS", "LINEAR", "choose_kernel", "dequantize", "select_kernel"]

KERNELS = ("auto", "reference", "reference-lut", "triton-gemm", "triton-lut", "triton-dequant")

# Provisional thresholds, NOT yet measured on a GPU (no GPU was available when this was
# written): benchmarks/bench_kernels.py times every kernel per (M, shape) and prints the
# fastest, and these constants are to be set from its table.
LUT_MAX_CODEBOOK = 256  # tables of K fp32 entries per input group; 65536 would not stay in L2
GEMM_MAX_ROWS = 2048  # above this, dequantise once and let cuBLAS run the GEMM
# Off the GPU the torch look-up-table path beats dequantise + F.linear only for a single row
# (benchmarks/bench_kernels.py, 2-core EPYC, 1 thread: 1152→1152 at v = 4, 0.36 ms against 1.4 ms;
# at M = 8 it was 2× slower).
CPU_LUT_MAX_ROWS = 1


def _gpu_rule(rows: int, signs: bool, codebook_size: int, x_dtype: torch.dtype) -> str:
    if x_dtype not in (torch.float16, torch.bfloat16):
        return "triton-dequant"  # fp32 activations: cuBLAS on the dequantised weight keeps fp32 semantics
    if rows <= LUT_MAX_ROWS and not signs and codebook_size <= LUT_MAX_CODEBOOK:
        return "triton-lut"
    if rows <= GEMM_MAX_ROWS:
        return "triton-gemm"
    return "triton-dequant"


def choose_kernel(m: int, layer, x_dtype: torch.dtype) -> str:
    """Which kernel runs ``m`` rows through ``layer`` (a ``VQLinear``) on a GPU with Triton."""
    return _gpu_rule(m, layer.signs is not None, layer.codebook_size, x_dtype)


def select_kernel(kernel: str, x2: torch.Tensor, *, signs: bool, codebook_size: int) -> str:
    """The path that runs the ``(M, D)`` input ``x2``: ``kernel`` itself when forced (checked), else ``auto``'s pick."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    rows = x2.shape[0]
    if kernel == "auto":
        if not (x2.is_cuda and vq_triton.HAS_TRITON):
            lut = rows <= CPU_LUT_MAX_ROWS and not signs and codebook_size <= LUT_MAX_CODEBOOK
            return "reference-lut" if lut else "reference"
        return _gpu_rule(rows, signs, codebook_size, x2.dtype)
    if kernel.startswith("triton") and not (vq_triton.HAS_TRITON and (x2.is_cuda or vq_triton.INTERPRET)):
        need = "Triton and a CUDA input (or TRITON_INTERPRET=1 set before triton loads)"
        raise ValueError(f"kernel {kernel!r} needs {need}")
    if kernel == "reference-lut" and signs:
        raise ValueError("the look-up-table path does not support sign bits (a sign per weight breaks tables)")
    return kernel


def _reference_lut(x, codebook, codes, scales, signs, bias):
    return vq_lut_linear_reference(x, codebook, codes, scales, bias)


def _triton_dequant(x, codebook, codes, scales, signs, bias):
    w = vq_triton.dequantize(codebook, codes, scales, signs, dtype=x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


#: kernel name -> ``f(x2, codebook, codes, scales, signs, bias)``
LINEAR: dict[str, Callable[..., torch.Tensor]] = {
    "reference": vq_linear_reference,
    "reference-lut": _reference_lut,
    "triton-dequant": _triton_dequant,
    "triton-lut": lambda *args: vq_triton.lut_linear(*args),
    "triton-gemm": lambda *args: vq_triton.gemm(*args),
}


def dequantize(codebook, codes, scales=None, signs=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense weight: the Triton kernel for CUDA tensors when Triton is there, the torch reference elsewhere."""
    if codes.is_cuda and vq_triton.HAS_TRITON:
        return vq_triton.dequantize(codebook, codes, scales, signs, dtype=dtype)
    return vq_dequantize_reference(codebook, codes, scales, signs, dtype=dtype)
