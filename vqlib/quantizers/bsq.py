"""Binary spherical quantization (BSQ).

Zhao, Xiong & Krähenbühl 2024, "Image and Video Tokenization with Binary
Spherical Quantization", arXiv 2406.07548. The input is projected onto the unit
sphere and binarised; the implicit codebook is the ``K = 2^d`` corners of the
hypercube scaled onto the sphere, never stored:

    u = z / ‖z‖,   û = sign(u) / √d  (−1 at 0),   k = Σ_i 2^i · [u_i > 0]   (int64)

Every code has norm 1, so the quantization error is bounded
(``‖u − û‖ < √(2 − 2/√d)``) whatever the encoder does. Loss: commitment
``β‖u − sg(û)‖²`` plus the entropy penalty of LFQ on
``q(c|u) ∝ exp(−‖u − c‖² / τ)``, ``q(c_i = 1/√d | u) = σ(4 u_i / (√d τ))``, with the
paper's factorised codebook entropy (sum of the bits' marginal entropies).
Straight-through (or rotation) gradient from ``û`` to ``u``, then through the
normalisation to ``z``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .lfq import LFQ

__all__ = ["BSQ"]


class BSQ(LFQ):
    """Binary spherical quantizer (same arguments as :class:`~vqlib.quantizers.lfq.LFQ`).

    ``temperature`` τ applies to squared distances on the unit sphere, where
    neighbouring codes are ``4/d`` apart: 0.01 keeps ``q(c|u)`` about as sharp as
    LFQ's for d ≈ 16.
    """

    # LFQ's constructor as it is; only the codes' scale differs (1/√d puts them on the unit sphere)
    @property
    def scale(self) -> float:
        return 1 / math.sqrt(self.codebook_dim)

    def _prepare_codes(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=-1)
