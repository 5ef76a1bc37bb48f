"""IVFSAQIndex: inverted lists of SAQ codes of residuals, searched in stages (SAQ, arXiv 2509.12086).

A k-means coarse quantiser with ``nlist`` centroids ``c_l`` assigns each vector
``x`` to a list; the list stores the SAQ code of the residual ``r = x − c_l``
(one SAQ codec, trained on the residuals). A query visits its ``nprobe``
nearest lists. With SAQ's mean ``μ`` and principal axes, ``o = (r − μ)B`` and
the query's ``u = (q − c_l − μ)B`` give ``‖q − x‖² = ‖u‖² + ‖o‖² − 2⟨o, u⟩``;
for inner products ``⟨q, x⟩ = ⟨q, c_l⟩ + ⟨q, μ⟩ + ⟨o, qB⟩``. ``⟨o, u⟩`` is a sum
over SAQ's segments, each estimated from that segment's integer codes.

Multi-stage search (the paper's Sec. 5): segments are scored in order of
decreasing variance. Over the data, an unseen segment's term ``⟨o_j, u_j⟩`` has
variance ``σ_j² = Σ_{i∈j} u_i² σ_i²`` (PCA coordinates are uncorrelated), so
``|⟨o_j, u_j⟩| ≤ m·σ_j`` with high probability (``m = 4``, the reference code's
``searcher_vars_bound_m``). A candidate whose distance, with every unseen term
at its most favourable bound, is still above the current k-th distance cannot
enter the top k and its remaining segments are never read. ``bound_m=0`` turns
pruning off (a full scan of the same codes).

The scan is vectorised in torch: queries probing the same list form a group,
the list is read in blocks, and each stage computes only the code columns that
some query of the group still needs. Lists are visited in rounds of probe rank
(the nearest list of every query first), so thresholds tighten early.
"""

from __future__ import annotations

import inspect
import time

import torch

from ..quantizers import SAQ, SAQCodes, kmeans, nearest
from ..quantizers.saq import caq_inner_products
from . import fastscan
from .base import Index, SearchParams

__all__ = ["IVFSAQIndex"]

# Codes per block of a list: the (queries × block) score matrices of a group stay a few MiB.
_BLOCK = 4096
# A query's first block is small: until k candidates are scored there is no threshold to prune with.
_FIRST_BLOCK = 256


class IVFSAQIndex(Index):
    """Inverted-file index over SAQ codes of residuals (FAISS-style ``"IVF{nlist},SAQ{bits}"``).

    Args:
        d: vector dimension.
        nlist: number of inverted lists (k-means centroids).
        bits: SAQ's average bits per dimension (may be fractional).
        metric: ``"l2"`` or ``"ip"``.
        nprobe: lists visited per query (a search parameter, as in FAISS).
        refine: keep the float32 vectors and re-rank ``k·k_factor`` candidates exactly (``",Refine"``).
        k_factor: candidates per result re-ranked when ``refine``.
        bound_m: multi-stage pruning bound in standard deviations (0: full scan).
        granularity, rounds, seed: passed to :class:`~vqlib.quantizers.SAQ`.
        kmeans_iters: Lloyd iterations of the coarse quantiser.
        max_train_per_list: k-means trains on at most this many vectors per list (FAISS's 256).

    Attribute ``backend`` (not saved): ``"auto"`` (default) searches with the compiled fast scan of
    :mod:`vqlib.anns.fastscan` when numba is installed, ``"numba"`` requires it, ``"torch"`` uses the torch scan
    below (the reference). ``range_search`` always uses the torch scan.
    """

    backend = "auto"

    def __init__(
        self,
        d: int,
        nlist: int,
        bits: float,
        metric: str = "l2",
        nprobe: int = 1,
        refine: bool = False,
        k_factor: int = 4,
        bound_m: float = 4.0,
        granularity: int | None = None,
        rounds: int = 6,
        seed: int = 0,
        kmeans_iters: int = 10,
        max_train_per_list: int = 256,
    ):
        super().__init__(d, metric)
        if not isinstance(nlist, int) or nlist < 1:
            raise ValueError(f"nlist must be a positive integer, got {nlist!r}")
        self.nlist = nlist
        self.saq = SAQ(self.d, bits, granularity=granularity, rounds=rounds, seed=seed)  # validates bits
        self.bits, self.granularity, self.rounds, self.seed = float(bits), granularity, rounds, seed
        self.nprobe, self.refine, self.k_factor, self.bound_m = nprobe, bool(refine), k_factor, float(bound_m)
        self._check_params(SearchParams(nprobe=nprobe, k_factor=k_factor, bound_m=bound_m))
        self.kmeans_iters, self.max_train_per_list = kmeans_iters, max_train_per_list
        self.centroids = torch.zeros(nlist, self.d)
        self.lists = torch.zeros(0, dtype=torch.int64)  # list of each stored vector; storage is sorted by it
        self.offsets = torch.zeros(nlist + 1, dtype=torch.int64)
        self.codes: SAQCodes | None = None
        self.vectors = torch.zeros(0, self.d) if self.refine else None
        self.last_search_stats: dict = {}
        self._cache = None

    @property
    def is_trained(self) -> bool:
        return self.saq.is_trained

    @property
    def code_size(self) -> int:
        """Bytes per vector in the lists: SAQ code and factors, plus the 8-byte id (as FAISS counts IVF)."""
        return self.saq.code_size + 8

    # ---- training and adding ---------------------------------------------------

    def _train(self, x):
        g = torch.Generator().manual_seed(self.seed)
        centroids, assign, _ = self._train_coarse(x, g)
        saq = SAQ(self.d, self.bits, granularity=self.granularity, rounds=self.rounds, seed=self.seed)
        saq.fit(x - centroids[assign])
        self.centroids, self.saq = centroids, saq  # only once everything succeeded
        self.codes = saq.encode(torch.zeros(0, self.d))
        self._cache = None

    def _train_coarse(self, x, g):
        if len(x) < self.nlist:
            raise ValueError(f"need at least nlist={self.nlist} training vectors, got {len(x)}")
        cap = self.max_train_per_list * self.nlist
        return kmeans(x, self.nlist, iters=self.kmeans_iters, generator=g, max_samples=cap)

    def _assign(self, x):
        return nearest(x, self.centroids, k=1)[1][:, 0]

    def _add(self, x, ids):
        lists = self._assign(x)
        codes = self.saq.encode(x - self.centroids[lists])
        self._store(
            SAQCodes.cat([self.codes, codes]),
            torch.cat([self.ids, ids]),
            torch.cat([self.lists, lists]),
            None if self.vectors is None else torch.cat([self.vectors, x]),
        )

    def _store(self, codes, ids, lists, vectors):
        order = torch.argsort(lists, stable=True)
        self.codes, self.ids, self.lists = codes[order], ids[order], lists[order]
        self.vectors = None if vectors is None else vectors[order]
        self.offsets = torch.zeros(self.nlist + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(torch.bincount(self.lists, minlength=self.nlist), 0)
        self._cache = None

    def _keep(self, keep):
        self._store(self.codes[keep], self.ids[keep], self.lists[keep], None if self.vectors is None else self.vectors[keep])

    def _merge(self, other):
        self._store(
            SAQCodes.cat([self.codes, other.codes]),
            torch.cat([self.ids, other.ids]),
            torch.cat([self.lists, other.lists]),
            None if self.vectors is None else torch.cat([self.vectors, other.vectors]),
        )

    def _check_compatible(self, other):
        mine, theirs = self._state()[0], other._state()[0]
        for key in ("nlist", "bits", "refine", "plan", "granularity", "rounds", "seed"):
            if mine[key] != theirs[key]:
                raise ValueError(f"cannot merge indexes with different {key}: {theirs[key]!r} vs {mine[key]!r}")
        if not (other.is_trained and self.is_trained):
            raise ValueError("both indexes must be trained to merge")
        same = torch.equal(self.centroids, other.centroids) and all(
            torch.equal(a, b) for a, b in zip(self.saq.state_dict().values(), other.saq.state_dict().values()) if torch.is_tensor(a)
        )
        if not same:
            raise ValueError("cannot merge indexes trained separately (centroids or SAQ codec differ)")

    def _reconstruct(self, pos):
        r = self.saq.decode(self.codes[pos])[0]
        return r + self.centroids[self.lists[pos]]

    # ---- search ------------------------------------------------------------------

    def _search(self, x, k, params):
        nprobe, m = self._settings(params)
        kk = min(k * (params.k_factor or self.k_factor), self.ntotal) if self.refine else k
        scores, pos = (self._scan_compiled if self._compiled() else self._scan)(x, kk, nprobe, m)
        if self.refine:
            return self._rerank(x, pos, k)
        return (scores if self.metric == "l2" else -scores), pos

    def _range_search(self, x, radius, params):
        nprobe, m = self._settings(params)
        thr = radius if self.metric == "l2" else -radius
        prep = self._prepare(x, nprobe)
        self.last_search_stats = _new_stats(len(self._segments()))
        found_s, found_p = [], []
        for l in prep["probe"][0].tolist():
            for a in range(int(self.offsets[l]), int(self.offsets[l + 1]), _BLOCK):
                b = min(a + _BLOCK, int(self.offsets[l + 1]))
                s = self._score_block(prep, torch.zeros(1, dtype=torch.int64), l, a, b, torch.tensor([thr]), m)[0]
                hit = s < thr
                found_s.append(s[hit])
                found_p.append(hit.nonzero()[:, 0] + a)
        scores, pos = torch.cat(found_s), torch.cat(found_p)
        d = scores if self.metric == "l2" else -scores
        if self.refine:  # exact distances of the estimated hits, filtered again
            d = _exact(x, self.vectors[pos][None], self.metric)[0]
            hit = d < radius if self.metric == "l2" else d > radius
            d, pos = d[hit], pos[hit]
        return d, pos

    def _settings(self, params):
        nprobe = min(params.nprobe or self.nprobe, self.nlist)
        m = self.bound_m if params.bound_m is None else float(params.bound_m)
        return nprobe, m

    def _compiled(self) -> bool:
        if self.backend not in ("auto", "numba", "torch"):
            raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {self.backend!r}")
        if self.backend == "numba" and not fastscan.available():
            raise ImportError("backend='numba' needs numba: pip install 'vqlib[anns]' (or set backend='auto')")
        return self.backend != "torch" and fastscan.available() and bool(self._segments())

    def _scan_compiled(self, x, k, nprobe, m):
        """:meth:`_scan` by the compiled fast scan (same codes, same estimates; its own bound, see fastscan)."""
        saq, segs, ip = self.saq, self._segments(), self.metric == "ip"
        if getattr(self, "_fastscan", (None,))[0] is not self.codes:  # the layout follows the stored codes
            unpacked, norms2 = self._codes_cache()
            rescale = self.codes.factors[:, [s[4] for s in segs]]
            layout = fastscan.build_layout([s[1:3] for s in segs], unpacked, rescale, norms2, self.offsets)
            self._fastscan = (self.codes, layout)
        layout = self._fastscan[1]
        t0 = time.perf_counter()
        probe = nearest(x, self.centroids, k=nprobe, metric=self.metric)[1]
        qo, co = (x if ip else x - saq.mean) @ saq.basis, self.centroids @ saq.basis
        tail = torch.ones(self.d, dtype=torch.bool)
        for start, length, *_ in segs:
            tail[start : start + length] = False
        cut = ([s[0] for s in segs], [s[1] for s in segs], [s[3] for s in segs], layout)
        qc = (x @ self.centroids.T + (x @ saq.mean)[:, None]).gather(1, probe) if ip else torch.zeros(len(x), nprobe)
        scores, pos, stats = fastscan.search(fastscan.segment_queries(qo, *cut), fastscan.segment_queries(co, *cut),
                                             qo[:, tail], co[:, tail], qc, probe, layout, k, m, self.metric)  # fmt: skip
        counts = [stats["bounded"]] + stats["exact"]  # stage 0: 1-bit bound of every code; then exact segments
        self.last_search_stats = {"pairs": counts, "needed": counts,
                                  "seconds": [time.perf_counter() - t0] + [0.0] * len(segs)}  # fmt: skip
        return torch.from_numpy(scores), torch.from_numpy(pos)

    def _rerank(self, x, pos, k):
        d = _exact(x, self.vectors[pos.clamp_min(0)], self.metric)
        worst = float("inf") if self.metric == "l2" else float("-inf")
        d = torch.where(pos >= 0, d, worst)
        d, sel = d.topk(k, dim=1, largest=self.metric == "ip")
        return d, pos.gather(1, sel)

    def _segments(self):
        """(start, length, bits, rotation, factor column of the rescale) per coded segment."""
        out = []
        for j, (start, length, b, rot) in enumerate(s for s in self.saq._segments() if s[2] > 0):
            out.append((start, length, b, rot, 2 * j + 1))
        return out

    def _codes_cache(self):
        """Unpacked codes per coded segment (uint8/int16) and ``‖o‖²`` per vector, rebuilt after changes.

        Unpacking a bit stream costs more than the matmul it feeds, so it is done
        once per change of the index rather than once per search; the packed
        codes stay the stored (and counted) form.
        """
        if self._cache is None:
            unpacked = []
            for _, _, b, _, c, _, _ in self.saq._unpacked(self.codes):
                unpacked.append(c.to(torch.uint8 if b <= 8 else torch.int32))
            self._cache = (unpacked, self.saq.norms2(self.codes))
        return self._cache

    def _prepare(self, x, nprobe):
        """Per-call query data: probed lists, query (and centroid) segments in each segment's rotation."""
        saq, segs = self.saq, self._segments()
        ip = self.metric == "ip"
        coarse_metric = "ip" if ip else "l2"
        probe = nearest(x, self.centroids, k=nprobe, metric=coarse_metric)[1]
        qo = (x if ip else x - saq.mean) @ saq.basis
        co = self.centroids @ saq.basis
        seg_sum = torch.zeros(self.d, len(segs))  # sums the weighted squares of each segment's dimensions
        for j, (start, length, *_) in enumerate(segs):
            seg_sum[start : start + length, j] = saq.variances[start : start + length]
        prep = {
            "probe": probe,
            "qo": qo,
            "co": co,
            "qs": [qo[:, s : s + n] @ rot for s, n, _, rot, _ in segs],
            "cs": [co[:, s : s + n] @ rot for s, n, _, rot, _ in segs],
            "seg_var": seg_sum,
        }
        if ip:
            prep["qc"] = x @ self.centroids.T + (x @ saq.mean)[:, None]
        return prep

    def _scan(self, x, k, nprobe, m):
        """Top-k (scores, positions) over the probed lists; score is the squared distance or −⟨q, x⟩."""
        nq = len(x)
        prep = self._prepare(x, nprobe)
        best_s = torch.full((nq, k), float("inf"))
        best_p = torch.full((nq, k), -1, dtype=torch.int64)
        thr = torch.full((nq,), float("inf"))
        self.last_search_stats = _new_stats(len(self._segments()))
        r0, width = 0, 1
        while r0 < nprobe:  # rounds of probe rank 0, 1, 2-3, 4-7, ...: near lists first
            r1 = min(r0 + width, nprobe)
            pairs_q = torch.arange(nq).repeat_interleave(r1 - r0)
            pairs_l = prep["probe"][:, r0:r1].reshape(-1)
            order = torch.argsort(pairs_l, stable=True)
            pairs_q, pairs_l = pairs_q[order], pairs_l[order]
            lists, counts = torch.unique_consecutive(pairs_l, return_counts=True)
            for l, qi in zip(lists.tolist(), torch.split(pairs_q, counts.tolist())):
                start, end = int(self.offsets[l]), int(self.offsets[l + 1])
                for a, b in _blocks(start, end, first=_FIRST_BLOCK if torch.isinf(thr[qi]).any() else _BLOCK):
                    s = self._score_block(prep, qi, l, a, b, thr[qi], m)
                    cand_s = torch.cat([best_s[qi], s], 1)
                    cand_p = torch.cat([best_p[qi], torch.arange(a, b).expand(len(qi), -1)], 1)
                    top_s, sel = cand_s.topk(k, dim=1, largest=False, sorted=False)
                    best_s[qi], best_p[qi] = top_s, cand_p.gather(1, sel)
                    thr[qi] = top_s.amax(1)
            r0, width = r1, width * 2 if r0 > 0 else 1
        best_s, order = best_s.sort(dim=1, stable=True)
        best_p = best_p.gather(1, order)
        best_p[~torch.isfinite(best_s)] = -1
        return best_s, best_p

    def _score_block(self, prep, qi, l, a, b, thr, m):
        """Scores ``(len(qi), b − a)`` of queries ``qi`` against codes ``a:b`` of list ``l``; +inf where pruned."""
        unpacked, norms2 = self._codes_cache()
        segs, stats = self._segments(), self.last_search_stats
        rescale = self.codes.factors[a:b]
        g, n = len(qi), b - a
        if self.metric == "l2":
            u = prep["qo"][qi] - prep["co"][l]
            beta, const = 2.0, u.square().sum(1)[:, None] + norms2[a:b][None, :]
        else:
            u = prep["qo"][qi]
            beta, const = 1.0, -prep["qc"][qi, l][:, None].expand(g, n)
        prune = m > 0 and bool(torch.isfinite(thr).any())
        if prune:
            slack = m * ((u.square() @ prep["seg_var"]).sqrt())  # (g, S): m·σ_j per segment
            # rest[:, j]: the most the segments after j can still add to ⟨o, u⟩
            rest = slack.flip(1).cumsum(1).flip(1)[:, 1:]
        acc = torch.zeros(g, n)
        alive = torch.ones(g, n, dtype=torch.bool)
        cols = None
        for j, (_, _, bits, _, fcol) in enumerate(segs):
            t0 = time.perf_counter()
            if cols is not None and len(cols) == 0:
                break
            uq = prep["qs"][j][qi] - (prep["cs"][j][l] if self.metric == "l2" else 0)
            if cols is None:
                acc += caq_inner_products(uq, unpacked[j][a:b], rescale[:, fcol], bits)
                stats["pairs"][j] += g * n
            else:
                acc[:, cols] += caq_inner_products(uq, unpacked[j][a + cols], rescale[cols, fcol], bits)
                stats["pairs"][j] += g * len(cols)
            stats["needed"][j] += int(alive.sum())
            if prune and j + 1 < len(segs):
                lower = const - beta * (acc + rest[:, j : j + 1])
                alive &= lower <= thr[:, None]
                cols = alive.any(0).nonzero()[:, 0]
            stats["seconds"][j] += time.perf_counter() - t0
        scores = const - beta * acc
        return scores.masked_fill_(~alive, float("inf"))

    # ---- state -----------------------------------------------------------------------

    def _state(self):
        params = {
            "d": self.d,
            "metric": self.metric,
            "nlist": self.nlist,
            "bits": self.bits,
            "granularity": self.granularity,
            "rounds": self.rounds,
            "seed": self.seed,
            "nprobe": self.nprobe,
            "refine": self.refine,
            "k_factor": self.k_factor,
            "bound_m": self.bound_m,
            "kmeans_iters": self.kmeans_iters,
            "max_train_per_list": self.max_train_per_list,
            "next_id": self.next_id,
            "plan": [list(p) for p in self.saq.plan],
        }
        arrays = {"centroids": self.centroids}
        if self.is_trained:
            arrays |= {f"saq.{k}": v for k, v in self.saq.state_dict().items() if torch.is_tensor(v)}
            arrays |= {f"codes.packed.{j}": p for j, p in enumerate(self.codes.packed)}
            arrays |= {"codes.factors": self.codes.factors, "ids": self.ids, "lists": self.lists}
            if self.vectors is not None:
                arrays["vectors"] = self.vectors
        return params, arrays

    @classmethod
    def _from_state(cls, params, arrays):
        index = cls._construct(params)
        index.next_id = params["next_id"]
        index.centroids = arrays["centroids"]
        if params["plan"]:
            state = {k[4:]: v for k, v in arrays.items() if k.startswith("saq.")}
            state["_extra_state"] = {"plan": params["plan"]}
            index.saq.load_state_dict(state)
            packed = [arrays[f"codes.packed.{j}"] for j in range(sum(1 for _, b in params["plan"] if b > 0))]
            codes = SAQCodes(packed, arrays["codes.factors"], len(arrays["ids"]))
            index.saq._check_codes(codes)
            index._store(codes, arrays["ids"], arrays["lists"], arrays.get("vectors"))
        return index

    @classmethod
    def _construct(cls, params):
        # the saved parameters are the constructor's (a subclass takes a subset of them)
        names = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in params.items() if k in names})

def _exact(x, v, metric):
    """Exact scores of queries ``x`` (nq, d) against their own candidates ``v`` (nq, c, d)."""
    ip = torch.einsum("qd,qcd->qc", x, v)
    if metric == "ip":
        return ip
    return (x.square().sum(1, keepdim=True) - 2 * ip + v.square().sum(2)).clamp_min_(0)


def _blocks(start: int, end: int, first: int):
    """Block boundaries ``(a, b)`` covering ``start:end``: one block of ``first`` codes, then blocks of ``_BLOCK``."""
    out, a = [], start
    while a < end:
        b = min(a + (first if a == start else _BLOCK), end)
        out.append((a, b))
        a = b
    return out


def _new_stats(stages: int) -> dict:
    """Counters of one search: (query, code) pairs computed and still needed per stage, seconds per stage."""
    return {"pairs": [0] * stages, "needed": [0] * stages, "seconds": [0.0] * stages}


def pruning_summary(stats: dict) -> str:
    """One line per stage: share of the first stage's pairs that each stage still had to read."""
    total = max(stats["pairs"][0], 1) if stats.get("pairs") else 1
    return "; ".join(
        f"stage {j}: {p / total:.1%} computed, {n / total:.1%} needed, {s * 1e3:.0f} ms"
        for j, (p, n, s) in enumerate(zip(stats["pairs"], stats["needed"], stats["seconds"]))
    ) or "no stages"

