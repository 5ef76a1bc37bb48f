"""Codebook primitives: one contract (:class:`Quantizer`) for every method."""

from .base import GRADIENTS, Quantizer, QuantizerOutput, Usage
from .bsq import BSQ
from .codec import Codec, CodesMismatchError, NotFittedError
from .config import ConfigMixin, PretrainedFileError
from .fsq import FSQ
from .fvq import FVQ, VQBridge, learning_annealing, learning_annealing_lambda
from .grouped import GroupedQuantizer
from .kmeans import KMeansResult, kmeans, subsample
from .lfq import LFQ
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
from .pvq import (
    PVQCodes,
    PVQWeight,
    PyramidVQ,
    hadamard_transform,
    pvq_index,
    pvq_nearest,
    pvq_point,
    pvq_quantize_weight,
    pvq_size,
    pvq_words,
)
from .residual import ResidualFSQ, ResidualQuantizer
from .saq import CAQ, SAQ, SAQCodes
from .simvq import SimVQ
from .vq import VectorQuantizer

__all__ = [
    "BSQ",
    "CAQ",
    "FSQ",
    "FVQ",
    "GRADIENTS",
    "LFQ",
    "METRICS",
    "SAQ",
    "Codec",
    "CodesMismatchError",
    "ConfigMixin",
    "GroupedQuantizer",
    "KMeansResult",
    "LR2VQConv2d",
    "LR2VQLayerReport",
    "LR2VQLinear",
    "LR2VQReport",
    "LR2VQWeight",
    "NotFittedError",
    "PVQCodes",
    "PVQWeight",
    "PretrainedFileError",
    "PyramidVQ",
    "Quantizer",
    "QuantizerOutput",
    "ResidualFSQ",
    "ResidualQuantizer",
    "SAQCodes",
    "SimVQ",
    "Usage",
    "VQBridge",
    "VectorQuantizer",
    "compress_model",
    "compression_report",
    "decompress_model",
    "finetune",
    "hadamard_transform",
    "kmeans",
    "learning_annealing",
    "learning_annealing_lambda",
    "nearest",
    "pack_bits",
    "packed_size",
    "pvq_index",
    "pvq_nearest",
    "pvq_point",
    "pvq_quantize_weight",
    "pvq_size",
    "pvq_words",
    "subsample",
    "unpack_bits",
]
