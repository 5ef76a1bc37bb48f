"""SAQIndex: a flat scan over SAQ codes (arXiv 2509.12086), searched in stages.

It is :class:`~vqlib.anns.ivf_saq.IVFSAQIndex` with a single list whose
centroid is the origin: SAQ codes the vectors themselves, and every query
scans every code, segment by segment, pruning candidates whose distance bound
already exceeds the current k-th (see that module for the estimator and the bound).
"""

from __future__ import annotations

import torch

from ..quantizers import KMeansResult
from .ivf_saq import IVFSAQIndex

__all__ = ["SAQIndex"]


class SAQIndex(IVFSAQIndex):
    """Flat index over SAQ codes (FAISS-style ``"SAQ{bits}"``).

    Args:
        d: vector dimension.
        bits: SAQ's average bits per dimension (may be fractional, e.g. 0.5).
        metric: ``"l2"`` or ``"ip"``.
        refine: keep the float32 vectors and re-rank ``k·k_factor`` candidates exactly.
        k_factor, bound_m, granularity, rounds, seed: as for :class:`IVFSAQIndex`.
    """

    def __init__(
        self,
        d: int,
        bits: float,
        metric: str = "l2",
        refine: bool = False,
        k_factor: int = 4,
        bound_m: float = 4.0,
        granularity: int | None = None,
        rounds: int = 6,
        seed: int = 0,
    ):
        super().__init__(d, 1, bits, metric=metric, refine=refine, k_factor=k_factor, bound_m=bound_m,
                         granularity=granularity, rounds=rounds, seed=seed)  # fmt: skip

    @property
    def code_size(self) -> int:
        """Bytes per vector: SAQ code and factors, plus the 8-byte id."""
        return self.saq.code_size + 8

    def _train_coarse(self, x, g):
        # one list around the origin: SAQ centres the data itself
        return KMeansResult(torch.zeros(1, self.d), torch.zeros(len(x), dtype=torch.int64), torch.full((1,), float(len(x))))

    def _assign(self, x):
        return torch.zeros(len(x), dtype=torch.int64)
