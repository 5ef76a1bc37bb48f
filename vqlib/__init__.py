"""vqlib: vector quantization and discrete tokenizers for generative models.

The parts load on first use (``vqlib.quantizers``, ``vqlib.anns``, ...), so
``import vqlib`` is cheap and the ``vqlib`` command can set OpenMP's
environment before PyTorch loads.
"""

import importlib

__version__ = "0.1.0"

_PARTS = ("quantizers", "tokenizers", "anns", "kernels", "diffusion", "generation")
_FROM_QUANTIZERS = ("FSQ", "FVQ", "QuantizerOutput", "SimVQ", "VectorQuantizer", "nearest")

__all__ = [*_FROM_QUANTIZERS, "quantizers", "__version__"]


def __getattr__(name: str):
    if name in _PARTS:
        return importlib.import_module(f".{name}", __name__)
    if name in _FROM_QUANTIZERS:
        return getattr(importlib.import_module(".quantizers", __name__), name)
    raise AttributeError(f"module 'vqlib' has no attribute {name!r}")
