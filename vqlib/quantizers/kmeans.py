"""Lloyd's k-means on torch tensors, with the exact blocked search of :mod:`nearest`.

Used to initialise codebooks (VQ-VAE practice since Łańcucki et al. 2020,
arXiv 2005.08520) and reused by the vector codecs and the ANN index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .nearest import nearest

__all__ = ["kmeans"]


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 10,
    metric: str = "l2",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of ``x`` into ``k`` centroids.

    Centroids start from ``k`` distinct random rows (with repeats only when
    ``x`` has fewer than ``k`` rows); a cluster that empties keeps its previous
    centroid. With ``metric="cosine"`` the data and centroids live on the unit
    sphere (spherical k-means). Deterministic for a given ``generator``.

    Returns:
        ``(centroids (k, d), counts (k,))`` where counts are the final cluster sizes.
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
    n = x.shape[0]
    if n >= k:
        start = torch.randperm(n, generator=generator, device="cpu")[:k]
    else:
        start = torch.randint(n, (k,), generator=generator, device="cpu")
    centroids = x[start.to(x.device)].clone()
    counts = torch.zeros(k, device=x.device)
    for _ in range(iters):
        _, assign = nearest(x, centroids, metric=metric)
        assign = assign[:, 0]
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        if metric == "cosine":
            centroids = F.normalize(centroids, dim=-1)
    return centroids, counts
