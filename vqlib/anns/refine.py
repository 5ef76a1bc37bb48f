"""RefineIndex: exact re-ranking around any index (FAISS's ``IndexRefine`` / ``IndexRefineFlat``).

The wrapper keeps the float32 vectors beside a base index. A search asks the
base for ``k·k_factor`` candidates and re-ranks them with exact distances
(:func:`vqlib.quantizers.pairwise_distances`); a range search filters the
base's hits by their exact distances. Factory strings spell it ``",Refine"``
or ``",RFlat"``. The vectors are kept in the base's storage order, so a base
position names the same vector in both.
"""

from __future__ import annotations

import torch

from ..quantizers import pairwise_distances
from .base import Index, SearchParams, check_search_values

__all__ = ["RefineIndex"]


class RefineIndex(Index):
    """Re-ranks the candidates of ``base`` exactly.

    Args:
        base: an empty index (or its config) of any vqlib.anns type; it is trained and filled
            through the wrapper.
        k_factor: candidates per result re-ranked (a search parameter).

    Search parameters: ``k_factor`` and those of the base index.
    """

    def __init__(self, base: Index | dict, k_factor: int = 4):
        if isinstance(base, dict):
            base = Index.from_config(base)
        if not isinstance(base, Index):
            raise ValueError(f"base must be a vqlib.anns index (or its config), got {type(base).__name__}")
        if base.ntotal:
            raise ValueError(
                f"base holds {base.ntotal} vectors without their float copies; wrap an empty index and add through the wrapper"
            )
        super().__init__(base.d, base.metric)
        check_search_values(SearchParams(k_factor=k_factor))
        self.base, self.k_factor = base, k_factor
        self.vectors = torch.zeros(0, self.d)

    @property
    def search_params(self) -> tuple[str, ...]:
        return ("k_factor", *self.base.search_params)

    @property
    def is_trained(self) -> bool:
        return self.base.is_trained

    @property
    def code_size(self) -> int:
        """Bytes per vector: the base's, plus the float32 vector kept for re-ranking."""
        return self.base.code_size + 4 * self.d

    def __repr__(self) -> str:
        return f"RefineIndex({self.base!r}, k_factor={self.k_factor})"

    # ---- training and adding ---------------------------------------------------

    def _train(self, x):
        self.base.train(x)

    def _add(self, x, ids):
        self.base.add_with_ids(x, ids)
        self._align(torch.cat([self.ids, ids]), torch.cat([self.vectors, x]))

    def _align(self, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Keep ``vectors`` (labelled by ``ids``) in the base's storage order."""
        order = torch.argsort(ids)
        rows = order[torch.searchsorted(ids[order], self.base.ids)]
        self.vectors, self.ids = vectors[rows], self.base.ids.clone()

    def _keep(self, keep):
        self.base._keep(keep)  # same storage order: the same mask
        self._align(self.ids[keep], self.vectors[keep])

    def _merge(self, other):
        self.base._merge(other.base)
        self.base.next_id = max(self.base.next_id, other.base.next_id)
        self._align(torch.cat([self.ids, other.ids]), torch.cat([self.vectors, other.vectors]))

    def _check_compatible(self, other):
        if type(other.base) is not type(self.base):
            raise ValueError(f"cannot merge a refined {type(other.base).__name__} into a refined {type(self.base).__name__}")
        self.base._check_compatible(other.base)

    def reset(self) -> None:
        super().reset()
        self.base.next_id = 0

    def _reconstruct(self, pos):
        return self.vectors[pos].clone()

    # ---- search ------------------------------------------------------------------

    def _search(self, x, k, params):
        kk = min(k * (params.k_factor or self.k_factor), self.ntotal)
        _, pos = self.base._search(x, kk, params)
        d = self._exact(x, self.vectors[pos.clamp_min(0)])
        d = torch.where(pos >= 0, d, self._missing)
        d, sel = d.topk(k, dim=1, largest=self.metric == "ip")
        return d, pos.gather(1, sel)

    def _range_search(self, x, radius, params):
        _, pos = self.base._range_search(x, radius, params)
        d = self._exact(x, self.vectors[pos][None])[0]
        hit = d < radius if self.metric == "l2" else d > radius
        return d[hit], pos[hit]

    def _exact(self, x, candidates):
        """Exact scores of queries ``x`` (nq, d) against their own candidates (nq, c, d)."""
        return pairwise_distances(x[:, None], candidates, self.metric)[:, 0]

    # ---- state -----------------------------------------------------------------------

    def _state(self):
        base_params, base_arrays = self.base._state()
        params = {"k_factor": self.k_factor, "next_id": self.next_id,
                  "base": {"type": type(self.base).__name__, "params": base_params}}  # fmt: skip
        return params, {"vectors": self.vectors, **{f"base.{k}": v for k, v in base_arrays.items()}}

    @classmethod
    def _from_state(cls, params, arrays):
        from .serialize import index_class

        base_cls = index_class(params["base"]["type"])
        base = base_cls._from_state(params["base"]["params"], {k[5:]: v for k, v in arrays.items() if k.startswith("base.")})
        return cls.wrap_loaded(base, arrays["vectors"], params["k_factor"], params["next_id"])

    @classmethod
    def wrap_loaded(cls, base: Index, vectors: torch.Tensor, k_factor: int, next_id: int) -> RefineIndex:
        """A wrapper around a loaded ``base`` whose float vectors (in its storage order) are ``vectors``."""
        if vectors.shape != (base.ntotal, base.d):
            raise ValueError(f"refine vectors of shape {tuple(vectors.shape)}, expected ({base.ntotal}, {base.d})")
        index = cls(type(base).from_config(base.config), k_factor)
        index.base, index.vectors, index.ids, index.next_id = base, vectors, base.ids.clone(), next_id
        return index
