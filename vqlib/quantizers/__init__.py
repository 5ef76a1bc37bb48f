"""Codebook primitives: one contract (:class:`Quantizer`) for every method."""

from .base import GRADIENTS, Quantizer, QuantizerOutput, Usage
from .fsq import FSQ
from .fvq import FVQ, VQBridge, learning_annealing, learning_annealing_lambda
from .kmeans import kmeans
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
    "METRICS",
    "Quantizer",
    "QuantizerOutput",
    "SAQ",
    "SAQCodes",
    "SimVQ",
    "Usage",
    "VQBridge",
    "VectorQuantizer",
    "kmeans",
    "learning_annealing",
    "learning_annealing_lambda",
    "nearest",
    "pack_bits",
    "packed_size",
    "unpack_bits",
]
