"""IVFSAQIndex: inverted lists of SAQ codes of residuals, searched in stages (SAQ, arXiv 2509.12086).

A coarse quantiser with ``nlist`` centroids ``c_l`` (a component, as in FAISS's
``IndexIVF(quantizer, d, nlist)``: a :class:`~vqlib.anns.flat.FlatIndex` whose
stored vectors are the centroids, trained by k-means unless given trained)
assigns each vector ``x`` to its nearest list; the list stores the SAQ code of
the residual ``r = x − c_l`` (one SAQ codec, trained on the residuals). A query
visits its ``nprobe`` nearest lists (by the index's metric). The estimator, the
multi-stage bound and the scan are in :mod:`vqlib.anns.saq_lists`.
"""

from __future__ import annotations

import torch

from ..quantizers import SAQ, SAQCodes, kmeans, nearest
from .base import Index, SearchParams, check_search_values
from .flat import FlatIndex
from .saq_lists import BACKENDS, SAQLists, pruning_summary, same_training

__all__ = ["IVFSAQIndex", "pruning_summary"]


class IVFSAQIndex(Index):
    """Inverted-file index over SAQ codes of residuals (FAISS-style ``"IVF{nlist},SAQ{bits}"``).

    Args:
        d: vector dimension.
        nlist: number of inverted lists (coarse centroids).
        bits: SAQ's average bits per dimension (may be fractional).
        metric: ``"l2"`` or ``"ip"``.
        nprobe: lists visited per query (a search parameter, as in FAISS).
        bound_m: multi-stage pruning bound in standard deviations (0: full scan; a search parameter).
        granularity, rounds, seed: passed to :class:`~vqlib.quantizers.SAQ`.
        kmeans_iters: Lloyd iterations of the coarse quantiser.
        max_train_per_list: k-means trains on at most this many vectors per list (FAISS's 256).
        quantizer: the coarse quantiser, a :class:`FlatIndex` of dimension ``d`` (or its config):
            empty (default: a new one), ``train`` fills it with k-means centroids; holding
            ``nlist`` vectors, those are the centroids and ``train`` only fits SAQ.
        saq_plan: a fixed SAQ segmentation ``[(length, bits), ...]`` (SAQ's ``plan=``).

    Search parameters: ``nprobe``, ``bound_m``. Wrap in :class:`~vqlib.anns.refine.RefineIndex`
    (``",Refine"``) to re-rank candidates exactly. Attribute ``backend``: ``"auto"`` | ``"numba"`` | ``"torch"`` (the scan used).
    """

    search_params = ("nprobe", "bound_m")

    def __init__(
        self,
        d: int,
        nlist: int,
        bits: float,
        metric: str = "l2",
        nprobe: int = 1,
        bound_m: float = 4.0,
        granularity: int | None = None,
        rounds: int = 6,
        seed: int = 0,
        kmeans_iters: int = 10,
        max_train_per_list: int = 256,
        quantizer: FlatIndex | dict | None = None,
        saq_plan: list[tuple[int, int]] | None = None,
    ):
        super().__init__(d, metric)
        if not isinstance(nlist, int) or isinstance(nlist, bool) or nlist < 1:
            raise ValueError(f"nlist must be a positive integer, got {nlist!r}")
        self.nlist = nlist
        saq = SAQ(self.d, bits, granularity=granularity, rounds=rounds, seed=seed, plan=saq_plan)  # validates bits
        self.bits, self.granularity, self.rounds, self.seed = float(bits), granularity, rounds, seed
        check_search_values(SearchParams(nprobe=nprobe, bound_m=bound_m))
        self.nprobe, self.bound_m = nprobe, float(bound_m)
        self.kmeans_iters, self.max_train_per_list = kmeans_iters, max_train_per_list
        self.quantizer = _coarse_quantizer(quantizer, self.d, nlist)
        self.invlists = SAQLists(saq, nlist, metric)

    # ---- views --------------------------------------------------------------------

    @property
    def is_trained(self) -> bool:
        return self.saq.is_fitted

    @property
    def saq(self) -> SAQ:
        return self.invlists.saq

    @property
    def centroids(self) -> torch.Tensor:
        """The coarse quantiser's vectors (``nlist × d``; zeros before training)."""
        q = self.quantizer
        return q.vectors if q.ntotal == self.nlist else torch.zeros(self.nlist, self.d)

    @property
    def codes(self) -> SAQCodes | None:
        return self.invlists.codes

    @property
    def lists(self) -> torch.Tensor:
        return self.invlists.lists

    @property
    def offsets(self) -> torch.Tensor:
        return self.invlists.offsets

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
        """Bytes per vector in the lists: SAQ code and factors, plus the 8-byte id (as FAISS counts IVF)."""
        return self.saq.code_size + 8

    # ---- training and adding ---------------------------------------------------

    def _train(self, x):
        g = torch.Generator().manual_seed(self.seed)
        if self.quantizer.ntotal == self.nlist:  # a trained coarse quantiser: keep its centroids
            centroids = self.quantizer.vectors
            assign = nearest(x, centroids, k=1)[1][:, 0]
        else:
            if len(x) < self.nlist:
                raise ValueError(f"need at least nlist={self.nlist} training vectors, got {len(x)}")
            cap = self.max_train_per_list * self.nlist
            centroids, assign, _ = kmeans(x, self.nlist, iters=self.kmeans_iters, generator=g, max_samples=cap)
        saq = SAQ(**self.saq.config["init_args"])
        saq.fit(x - centroids[assign])
        # only once everything succeeded
        if self.quantizer.ntotal != self.nlist:
            self.quantizer.add(centroids)
        self.invlists.set_codec(saq)

    def _assign(self, x):
        return nearest(x, self.centroids, k=1)[1][:, 0]

    def _add(self, x, ids):
        lists = self._assign(x)
        codes = self.saq.encode(x - self.centroids[lists])
        self._store(SAQCodes.cat([self.codes, codes]), torch.cat([self.ids, ids]), torch.cat([self.lists, lists]))

    def _store(self, codes, ids, lists):
        self.ids = ids[self.invlists.store(codes, lists)]

    def _keep(self, keep):
        self._store(self.codes[keep], self.ids[keep], self.lists[keep])

    def _merge(self, other):
        self._store(
            SAQCodes.cat([self.codes, other.codes]), torch.cat([self.ids, other.ids]), torch.cat([self.lists, other.lists])
        )

    def _check_compatible(self, other):
        mine, theirs = self._state()[0], other._state()[0]
        for key in ("nlist", "bits", "plan", "saq_plan", "granularity", "rounds", "seed"):
            if mine[key] != theirs[key]:
                raise ValueError(f"cannot merge indexes with different {key}: {theirs[key]!r} vs {mine[key]!r}")
        if not (other.is_trained and self.is_trained):
            raise ValueError("both indexes must be trained to merge")
        if not (torch.equal(self.centroids, other.centroids) and same_training(self.invlists, other.invlists)):
            raise ValueError("cannot merge indexes trained separately (centroids or SAQ codec differ)")

    def _reconstruct(self, pos):
        r = self.saq.decode(self.codes[pos])[0]
        return r + self.centroids[self.lists[pos]]

    # ---- search ------------------------------------------------------------------

    def _search(self, x, k, params):
        nprobe, m = self._settings(params)
        scores, pos = self.invlists.scan(self._prepare(x, nprobe), k, nprobe, m)
        return (scores if self.metric == "l2" else -scores), pos

    def _range_search(self, x, radius, params):
        nprobe, m = self._settings(params)
        scores, pos = self.invlists.range_scan(self._prepare(x, nprobe), radius if self.metric == "l2" else -radius, m)
        return (scores if self.metric == "l2" else -scores), pos

    def _settings(self, params):
        nprobe = min(params.nprobe or self.nprobe, self.nlist)
        m = self.bound_m if params.bound_m is None else float(params.bound_m)
        return nprobe, m

    def _prepare(self, x, nprobe):
        probe = nearest(x, self.centroids, k=nprobe, metric="ip" if self.metric == "ip" else "l2")[1]
        return self.invlists.prepare(x, self.centroids, probe)

    # ---- state -----------------------------------------------------------------------

    def _state(self):
        params = self._recorded_params()
        params["quantizer"] = None  # the centroids array holds it
        params |= {"next_id": self.next_id, "plan": [list(p) for p in self.saq.plan]}
        params["coarse_trained"] = self.quantizer.ntotal == self.nlist
        arrays = {"centroids": self.centroids}
        if self.is_trained:
            arrays |= self.invlists.arrays() | {"ids": self.ids}
        return params, arrays

    @classmethod
    def _from_state(cls, params, arrays):
        init = {k: v for k, v in params.items() if k not in ("next_id", "plan", "coarse_trained")}
        index = cls(**init)
        index.next_id = params["next_id"]
        if params.get("coarse_trained", bool(params["plan"])):
            index.quantizer.add(arrays["centroids"])
        if params["plan"]:
            index.ids = arrays["ids"][index.invlists.load(params["plan"], arrays, len(arrays["ids"]))]
        return index


def _coarse_quantizer(quantizer, d: int, nlist: int) -> FlatIndex:
    if quantizer is None:
        return FlatIndex(d)
    if isinstance(quantizer, dict):
        quantizer = Index.from_config(quantizer)
    if not isinstance(quantizer, FlatIndex):
        raise ValueError(f"quantizer must be a FlatIndex (or its config), got {type(quantizer).__name__}")
    if quantizer.d != d:
        raise ValueError(f"quantizer has dimension {quantizer.d}, expected d={d}")
    if quantizer.ntotal not in (0, nlist):
        raise ValueError(
            f"quantizer holds {quantizer.ntotal} vectors; give an empty one (train() fills it) or one with nlist={nlist}"
        )
    return quantizer
