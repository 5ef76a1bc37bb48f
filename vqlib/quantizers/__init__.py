"""Codebook primitives: one contract (:class:`Quantizer`) for every method."""

from .base import GRADIENTS, Quantizer, QuantizerOutput, Usage
from .fsq import FSQ
from .fvq import FVQ, VQBridge, learning_annealing, learning_annealing_lambda
from .kmeans import kmeans
from .lr2vq import (
    LR2VQConv2d,
    LR2VQLayerReport,
    LR2VQLinear,
    LR2VQReport,
    LR2VQWeight,
    compress_model,
    compression_report,
    decompress_model,
    finetune,
)
from .nearest import METRICS, nearest
from .packing import pack_bits, packed_size, unpack_bits
from .saq import CAQ, SAQ, SAQCodes
from .simvq import SimVQ
from .vq import VectorQuantizer

__all__ = [
    "CAQ",
    "FSQ",
    "FVQ",
    "GRADIENTS",
    "LR2VQConv2d",
    "LR2VQLayerReport",
    "LR2VQLinear",
    "LR2VQReport",
    "LR2VQWeight",
    "METRICS",
    "Quantizer",
    "QuantizerOutput",
    "SAQ",
    "SAQCodes",
    "SimVQ",
    "Usage",
    "VQBridge",
    "VectorQuantizer",
    "compress_model",
    "compression_report",
    "decompress_model",
    "finetune",
    "kmeans",
    "learning_annealing",
    "learning_annealing_lambda",
    "nearest",
    "pack_bits",
    "packed_size",
    "unpack_bits",
]
