"""FlatIndex: exact search over the stored float32 vectors (``faiss.IndexFlat``), the ground truth.

k-NN comes from :func:`vqlib.quantizers.nearest` (blocked fp32 matmul,
``‖q − x‖² = ‖q‖² − 2⟨q, x⟩ + ‖x‖²``) and range search from
:func:`vqlib.quantizers.pairwise_distances` (the same formula), so distances
agree with FAISS's to float32 rounding, and ties go to the lower storage position.
"""

from __future__ import annotations

import torch

from ..quantizers import nearest, pairwise_distances
from .base import Index, SearchParams

__all__ = ["FlatIndex"]


class FlatIndex(Index):
    """Exact k-NN index. ``metric``: ``"l2"`` (squared distances) or ``"ip"`` (inner products).

    It takes no search parameters: every stored vector is compared exactly.
    """

    search_params = ()

    def __init__(self, d: int, metric: str = "l2"):
        super().__init__(d, metric)
        self.vectors = torch.zeros(0, self.d)

    @property
    def code_size(self) -> int:
        """Bytes per vector: the float32 vector and the 8-byte id."""
        return 4 * self.d + 8

    def _add(self, x, ids):
        self.vectors = torch.cat([self.vectors, x])
        self.ids = torch.cat([self.ids, ids])

    def _search(self, x, k, params: SearchParams):
        return nearest(x, self.vectors, k=k, metric=self.metric)

    def _range_search(self, x, radius, params):
        d = pairwise_distances(x, self.vectors, self.metric)[0]
        hit = d < radius if self.metric == "l2" else d > radius
        return d[hit], hit.nonzero()[:, 0]

    def _reconstruct(self, pos):
        return self.vectors[pos].clone()

    def _keep(self, keep):
        self.vectors, self.ids = self.vectors[keep], self.ids[keep]

    def _merge(self, other):
        self._add(other.vectors, other.ids)

    def _state(self):
        return {**self._recorded_params(), "next_id": self.next_id}, {"vectors": self.vectors, "ids": self.ids}

    @classmethod
    def _from_state(cls, params, arrays):
        index = cls(params["d"], params["metric"])
        index.vectors, index.ids, index.next_id = arrays["vectors"], arrays["ids"], params["next_id"]
        return index
