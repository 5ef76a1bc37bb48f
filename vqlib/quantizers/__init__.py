"""Codebook primitives: one contract (:class:`Quantizer`) for every method."""

from .base import GRADIENTS, Quantizer, QuantizerOutput, Usage
from .bsq import BSQ
from .codec import Codec, CodesMismatchError, NotFittedError
from .config import ConfigMixin, PretrainedFileError
from .fsq import FSQ
from .fvq import FVQ, VQBridge, learning_annealing, learning_annealing_lambda
from .gptq import gptq_quantize
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
from .module_swap import SwappedModule, SwapReport, swap_modules
from .nearest import METRICS, nearest, pairwise_distances
from .packing import pack_bits, packed_size, unpack_bits
from .pvq import (
    PVQCodes,
    PVQWeight,
    PyramidVQ,
    pvq_index,
    pvq_nearest,
    pvq_point,
    pvq_quantize_weight,
    pvq_size,
    pvq_words,
)
from .residual import ResidualFSQ, ResidualQuantizer
from .rotations import hadamard_transform, random_orthogonal
from .saq import CAQ, SAQ, SAQCodes, Segment
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
    "Segment",
    "SimVQ",
    "SwapReport",
    "SwappedModule",
    "Usage",
    "VQBridge",
    "VectorQuantizer",
    "compress_model",
    "compression_report",
    "decompress_model",
    "finetune",
    "gptq_quantize",
    "hadamard_transform",
    "kmeans",
    "learning_annealing",
    "learning_annealing_lambda",
    "nearest",
    "pack_bits",
    "pairwise_distances",
    "packed_size",
    "pvq_index",
    "pvq_nearest",
    "pvq_point",
    "pvq_quantize_weight",
    "pvq_size",
    "pvq_words",
    "random_orthogonal",
    "subsample",
    "swap_modules",
    "unpack_bits",
]
