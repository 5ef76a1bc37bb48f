"""Image generation over tokenizer indices: LlamaGen (arXiv 2406.06525) with REPA (arXiv 2410.06940).

Stands on :mod:`vqlib.tokenizers` and :mod:`vqlib.quantizers`; nothing below imports it. Training:
:class:`vqlib.generation.module.ARModule` (``vqlib fit --config configs/generation/<name>.yaml``).
"""

from .llamagen import PRESETS, KVCache, LlamaGen, tokenizer_factors
from .repa import DINOv2Encoder, InceptionEncoder, repa_loss, resample_to_grid

__all__ = [
    "DINOv2Encoder",
    "InceptionEncoder",
    "KVCache",
    "LlamaGen",
    "PRESETS",
    "repa_loss",
    "resample_to_grid",
    "tokenizer_factors",
]
