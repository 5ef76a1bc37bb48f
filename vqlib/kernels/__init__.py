"""Codebook-compressed linear layers and their kernels.

:class:`VQLinear` stores a weight as codes into a codebook (format in :mod:`.vq_linear`) and is
that format's weight codec; :func:`quantize_model` swaps a model's ``nn.Linear`` layers for it.
:mod:`.dispatch` picks the path: on CUDA with Triton the kernels of :mod:`.vq_triton`, elsewhere
the torch references of :mod:`.reference`. Triton is optional (``pip install 'vqlib[kernels]'``).
"""

from .dispatch import KERNELS, choose_kernel, select_kernel
from .format import code_dtype
from .reference import vq_dequantize_reference, vq_linear_reference, vq_lut_linear_reference
from .vq_linear import VQCodes, VQLinear, quantize_linear, quantize_model
from .vq_triton import HAS_TRITON

__all__ = [
    "HAS_TRITON",
    "KERNELS",
    "VQCodes",
    "VQLinear",
    "choose_kernel",
    "code_dtype",
    "quantize_linear",
    "quantize_model",
    "select_kernel",
    "vq_dequantize_reference",
    "vq_linear_reference",
    "vq_lut_linear_reference",
]
