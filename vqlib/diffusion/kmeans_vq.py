"""Plain k-means weight VQ without calibration: the starting point of VQ4DiT and SSVQ, and a baseline.

A weight ``W ∈ R^{N×D}`` is divided row by row by its RMS (the stored per-output-channel
scale, so one codebook serves rows of any size), cut into sub-vectors of ``v`` inputs, and a
codebook of ``K`` codewords is fitted by Lloyd's k-means (vqlib.quantizers.kmeans); each
sub-vector is stored as the index of its nearest codeword (round to nearest, no data). With
``signs`` the codebook clusters magnitudes ``|W|`` and a sign bit per weight is stored
(SSVQ's split, arXiv 2503.08668). The result is a :class:`vqlib.kernels.VQLinear`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from vqlib.kernels import VQLinear
from vqlib.kernels.format import as_dtype
from vqlib.quantizers import kmeans

__all__ = ["KMeansInit", "kmeans_init", "to_vq_linear"]


class KMeansInit(NamedTuple):
    """A layer's k-means start: ``codebook (K, v)``, ``codes (N·D/v,)``, ``scales (N,)``, ``neg (N, D)`` or None."""

    codebook: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor | None
    neg: torch.Tensor | None
    normalised: torch.Tensor  # the weight divided by its scales (N, D), fp32


@torch.no_grad()
def kmeans_init(
    weight: torch.Tensor,
    vector_size: int,
    codebook_size: int,
    *,
    scales: bool = True,
    signs: bool = False,
    iters: int = 25,
    max_samples: int | None = 1 << 16,
    generator: torch.Generator | None = None,
) -> KMeansInit:
    """Row scales (RMS), the k-means codebook of the normalised sub-vectors (of magnitudes with ``signs``), codes."""
    w = weight.detach().float()
    n, d = w.shape
    if d % vector_size:
        raise ValueError(f"vector_size {vector_size} does not divide in_features {d}")
    s = w.pow(2).mean(1).sqrt().clamp_min(torch.finfo(torch.float32).tiny) if scales else None
    wn = w / s[:, None] if s is not None else w
    neg = wn < 0 if signs else None
    target = wn.abs() if signs else wn
    sub = target.reshape(-1, vector_size)
    result = kmeans(sub, codebook_size, iters=iters, generator=generator, max_samples=max_samples)
    return KMeansInit(result.centroids, result.assignment, s, neg, wn)


def to_vq_linear(
    linear: nn.Linear,
    codebook: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor | None,
    neg: torch.Tensor | None,
    codebook_dtype: str = "float16",
    scales_dtype: str = "float16",
) -> VQLinear:
    """The stored layer: codebook and scales in their storage dtypes, codes ``(N, D/v)``, packed signs."""
    n, d = linear.out_features, linear.in_features
    v = codebook.shape[-1]
    book = codebook.detach().to(as_dtype(codebook_dtype))
    s = scales.detach().to(as_dtype(scales_dtype)) if scales is not None else None
    layer = VQLinear.from_linear(linear, book, codes.reshape(n, d // v), s, neg)
    return layer
