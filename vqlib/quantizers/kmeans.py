"""Lloyd's k-means on torch tensors, with the exact blocked search of :mod:`nearest`.

Used to initialise codebooks (VQ-VAE practice since Łańcucki et al. 2020,
arXiv 2005.08520) and reused by the vector codecs and the ANN index.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .nearest import nearest

__all__ = ["KMeansResult", "kmeans", "subsample"]


class KMeansResult(NamedTuple):
    """``centroids (k, d)``; ``assignment (N,)``: each row of ``x`` to its nearest final
    centroid; ``counts (k,)``: the cluster sizes of that assignment (float)."""

    centroids: torch.Tensor
    assignment: torch.Tensor
    counts: torch.Tensor


def subsample(x: torch.Tensor, max_samples: int | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """At most ``max_samples`` distinct rows of ``x``, drawn without replacement (all of ``x`` when it fits)."""
    if max_samples is None or x.shape[0] <= max_samples:
        return x
    if max_samples < 1:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    pick = torch.randperm(x.shape[0], generator=generator, device="cpu")[:max_samples]
    return x[pick.to(x.device)]


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 10,
    metric: str = "l2",
    generator: torch.Generator | None = None,
    max_samples: int | None = None,
) -> KMeansResult:
    """Cluster the rows of ``x`` into ``k`` centroids.

    Lloyd runs on at most ``max_samples`` rows drawn at random (all rows when
    ``None``); the returned assignment covers every row of ``x`` and is made
    against the final centroids, so callers need no second search. Centroids
    start from ``k`` distinct random rows (with repeats only when there are
    fewer than ``k`` rows); a cluster that empties keeps its previous centroid.
    With ``metric="cosine"`` the data and centroids live on the unit sphere
    (spherical k-means). Deterministic for a given ``generator``.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, d) tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if metric not in ("l2", "cosine"):
        raise ValueError(f"kmeans metric must be 'l2' or 'cosine', got {metric!r}")
    x = x.float()
    if metric == "cosine":
        x = F.normalize(x, dim=-1)
    sample = subsample(x, max_samples, generator)
    n = sample.shape[0]
    if n >= k:
        start = torch.randperm(n, generator=generator, device="cpu")[:k]
    else:
        start = torch.randint(n, (k,), generator=generator, device="cpu")
    centroids = sample[start.to(x.device)].clone()
    for _ in range(iters):
        assign = nearest(sample, centroids, metric=metric)[1][:, 0]
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        if metric == "cosine":
            centroids = F.normalize(centroids, dim=-1)
    assign = nearest(x, centroids, metric=metric)[1][:, 0]
    return KMeansResult(centroids, assign, torch.bincount(assign, minlength=k).float())
