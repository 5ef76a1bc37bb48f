"""vqlib: vector quantization and discrete tokenizers for generative models."""

from . import quantizers
from .quantizers import FSQ, FVQ, QuantizerOutput, SimVQ, VectorQuantizer, nearest

__version__ = "0.1.0"

__all__ = ["FSQ", "FVQ", "QuantizerOutput", "SimVQ", "VectorQuantizer", "nearest", "quantizers", "__version__"]
