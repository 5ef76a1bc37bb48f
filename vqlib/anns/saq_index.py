"""SAQIndex: a flat scan over SAQ codes (arXiv 2509.12086), searched in stages.

SAQ codes the vectors themselves (it centres them with its own mean), kept as
one list of :class:`~vqlib.anns.saq_lists.SAQLists` whose centroid is the
origin; every query scans every code, segment by segment, pruning candidates
whose distance bound already exceeds the current k-th (see that module for the
estimator and the bound).
"""

from __future__ import annotations

import torch

from ..quantizers import SAQ, SAQCodes
from .base import Index, SearchParams, check_search_values
from .saq_lists import BACKENDS, SAQLists, same_training

__all__ = ["SAQIndex"]


class SAQIndex(Index):
    """Flat index over SAQ codes (FAISS-style ``"SAQ{bits}"``).

    Args:
        d: vector dimension.
        bits: SAQ's average bits per dimension (may be fractional, e.g. 0.5).
        metric: ``"l2"`` or ``"ip"``.
        bound_m: multi-stage pruning bound in standard deviations (0: full scan; a search parameter).
        granularity, rounds, seed: passed to :class:`~vqlib.quantizers.SAQ`.
        saq_plan: a fixed SAQ segmentation ``[(length, bits), ...]`` (SAQ's ``plan=``).

    Search parameter: ``bound_m``. Wrap in :class:`~vqlib.anns.refine.RefineIndex` (``",Refine"``)
    to re-rank candidates exactly. Attribute ``backend``: ``"auto"`` | ``"numba"`` | ``"torch"`` (the scan used).
    """

    search_params = ("bound_m",)

    def __init__(
        self,
        d: int,
        bits: float,
        metric: str = "l2",
        bound_m: float = 4.0,
        granularity: int | None = None,
        rounds: int = 6,
        seed: int = 0,
        saq_plan: list[tuple[int, int]] | None = None,
    ):
        super().__init__(d, metric)
        saq = SAQ(self.d, bits, granularity=granularity, rounds=rounds, seed=seed, plan=saq_plan)  # validates bits
        self.bits, self.granularity, self.rounds, self.seed = float(bits), granularity, rounds, seed
        check_search_values(SearchParams(bound_m=bound_m))
        self.bound_m = float(bound_m)
        self.invlists = SAQLists(saq, 1, metric)
        self._origin = torch.zeros(1, self.d)  # the one list's centroid

    # ---- views --------------------------------------------------------------------

    @property
    def is_trained(self) -> bool:
        return self.saq.is_fitted

    @property
    def saq(self) -> SAQ:
        return self.invlists.saq

    @property
    def codes(self) -> SAQCodes | None:
        return self.invlists.codes

    @property
    def last_search_stats(self) -> dict:
        return self.invlists.last_search_stats

    @property
    def backend(self) -> str:
        """Scan implementation (not saved): ``"auto"`` (default; the compiled fast scan when numba is installed),
        ``"numba"`` or ``"torch"`` (the reference); see :class:`~vqlib.anns.saq_lists.SAQLists`. Range search
        always scans in torch."""
        return self.invlists.backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        self.invlists.backend = value

    @property
    def profile(self) -> bool:
        """Record seconds per scan stage in ``last_search_stats`` (off: the hot loop keeps only counters)."""
        return self.invlists.profile

    @profile.setter
    def profile(self, on: bool) -> None:
        self.invlists.profile = bool(on)

    @property
    def code_size(self) -> int:
        """Bytes per vector: SAQ code and factors, plus the 8-byte id."""
        return self.saq.code_size + 8

    # ---- training and adding ---------------------------------------------------

    def _train(self, x):
        saq = SAQ(**self.saq.config["init_args"])
        saq.fit(x)
        self.invlists.set_codec(saq)  # only once fitting succeeded

    def _add(self, x, ids):
        codes = self.saq.encode(x)
        self._store(SAQCodes.cat([self.codes, codes]), torch.cat([self.ids, ids]))

    def _store(self, codes, ids):
        self.ids = ids[self.invlists.store(codes, torch.zeros(codes.n, dtype=torch.int64))]

    def _keep(self, keep):
        self._store(self.codes[keep], self.ids[keep])

    def _merge(self, other):
        self._store(SAQCodes.cat([self.codes, other.codes]), torch.cat([self.ids, other.ids]))

    def _check_compatible(self, other):
        mine, theirs = self._state()[0], other._state()[0]
        for key in ("bits", "plan", "saq_plan", "granularity", "rounds", "seed"):
            if mine[key] != theirs[key]:
                raise ValueError(f"cannot merge indexes with different {key}: {theirs[key]!r} vs {mine[key]!r}")
        if not (other.is_trained and self.is_trained):
            raise ValueError("both indexes must be trained to merge")
        if not same_training(self.invlists, other.invlists):
            raise ValueError("cannot merge indexes trained separately (SAQ codec differs)")

    def _reconstruct(self, pos):
        return self.saq.decode(self.codes[pos])[0]

    # ---- search ------------------------------------------------------------------

    def _search(self, x, k, params):
        scores, pos = self.invlists.scan(self._prepare(x), k, 1, self._bound(params))
        return (scores if self.metric == "l2" else -scores), pos

    def _range_search(self, x, radius, params):
        thr = radius if self.metric == "l2" else -radius
        scores, pos = self.invlists.range_scan(self._prepare(x), thr, self._bound(params))
        return (scores if self.metric == "l2" else -scores), pos

    def _bound(self, params):
        return self.bound_m if params.bound_m is None else float(params.bound_m)

    def _prepare(self, x):
        return self.invlists.prepare(x, self._origin, torch.zeros(len(x), 1, dtype=torch.int64))

    # ---- state -----------------------------------------------------------------------

    def _state(self):
        params = {**self._recorded_params(), "next_id": self.next_id, "plan": [list(p) for p in self.saq.plan]}
        # "centroids" and "lists" keep the version-1 layout, which stored SAQIndex as a one-list IVF
        arrays = {"centroids": self._origin}
        if self.is_trained:
            arrays |= self.invlists.arrays() | {"ids": self.ids}
        return params, arrays

    @classmethod
    def _from_state(cls, params, arrays):
        index = cls(**{k: v for k, v in params.items() if k not in ("next_id", "plan")})
        index.next_id = params["next_id"]
        if params["plan"]:
            index.ids = arrays["ids"][index.invlists.load(params["plan"], arrays, len(arrays["ids"]))]
        return index
