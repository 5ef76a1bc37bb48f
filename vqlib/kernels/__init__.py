"""Codebook-compressed linear layers and their kernels.

:class:`VQLinear` stores a weight as codes into a codebook (format in :mod:`.vq_linear`);
on CUDA with Triton its forward runs the kernels of :mod:`.vq_triton`, elsewhere a torch
reference. Triton is optional (``pip install 'vqlib[kernels]'``).
"""

from .vq_linear import (
    KERNELS,
    VQLinear,
    choose_kernel,
    code_dtype,
    quantize_linear,
    vq_dequantize_reference,
    vq_linear_reference,
    vq_lut_linear_reference,
)
from .vq_triton import HAS_TRITON

__all__ = [
    "HAS_TRITON",
    "KERNELS",
    "VQLinear",
    "choose_kernel",
    "code_dtype",
    "quantize_linear",
    "vq_dequantize_reference",
    "vq_linear_reference",
    "vq_lut_linear_reference",
]
