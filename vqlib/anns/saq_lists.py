"""SAQ codes grouped in lists, and the multi-stage scan over them (SAQ, arXiv 2509.12086, Sec. 5).

Shared by :class:`~vqlib.anns.saq_index.SAQIndex` (one list, centroid at the
origin) and :class:`~vqlib.anns.ivf_saq.IVFSAQIndex` (one list per coarse
centroid, codes of residuals), which each own one :class:`SAQLists`.

With SAQ's mean ``μ`` and principal axes ``B``, a code in list ``l`` stands for
``o = (x − c_l − μ)B`` and the query gives ``u = (q − c_l − μ)B``:
``‖q − x‖² = ‖u‖² + ‖o‖² − 2⟨o, u⟩``; for inner products
``⟨q, x⟩ = ⟨q, c_l⟩ + ⟨q, μ⟩ + ⟨o, qB⟩``. ``⟨o, u⟩`` is a sum over SAQ's
segments, each estimated from that segment's integer codes.

Multi-stage search: segments are scored in order of decreasing variance. Over
the data, an unseen segment's term ``⟨o_j, u_j⟩`` has variance
``σ_j² = Σ_{i∈j} u_i² σ_i²`` (PCA coordinates are uncorrelated), so
``|⟨o_j, u_j⟩| ≤ m·σ_j`` with high probability (``m = 4``, the reference code's
``searcher_vars_bound_m``). A candidate whose distance, with every unseen term
at its most favourable bound, is still above the current k-th distance cannot
enter the top k and its remaining segments are never read. ``bound_m=0`` turns
pruning off (a full scan of the same codes).

Two implementations of :meth:`SAQLists.scan` give the same results (``backend``): the compiled fast
scan of :mod:`vqlib.anns.fastscan` (numba, ``pip install 'vqlib[anns]'``; its first stage bounds every
code from 4-bit look-up tables of each segment's top bit plane, then the stages below) and the torch
scan, the reference, which ``range_scan`` always uses.

The torch scan is vectorised: queries probing the same list form a group,
the list is read in blocks, and each stage computes only the code columns that
some query of the group still needs. Lists are visited in rounds of probe rank
(the nearest list of every query first), so thresholds tighten early. The hot
loop keeps only counters; per-stage seconds are measured when ``profile`` is set.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..quantizers import SAQ, SAQCodes
from ..quantizers.saq import caq_inner_products
from . import fastscan

__all__ = ["BACKENDS", "SAQLists", "pruning_summary"]

#: values of :attr:`SAQLists.backend`
BACKENDS = ("auto", "numba", "torch")

# Codes per block of a list: the (queries × block) score matrices of a group stay a few MiB.
_BLOCK = 4096
# A query's first block is small: until k candidates are scored there is no threshold to prune with.
_FIRST_BLOCK = 256


class SAQLists:
    """SAQ codes stored grouped by list (``offsets[l]:offsets[l+1]``), with the staged scan.

    The owning index keeps its ids in the same storage order (``store`` returns the permutation).
    Set ``profile = True`` to record seconds per stage in ``last_search_stats``.

    ``backend`` (not saved): ``"auto"`` (default) scans with the compiled fast scan when numba is
    installed and the torch scan otherwise, ``"numba"`` requires numba, ``"torch"`` always uses the torch scan.
    """

    backend = "auto"
    #: top bit planes per segment in the compiled scan's first stage (:func:`fastscan.build_layout`; not saved)
    stage_bits = 2

    def __init__(self, saq: SAQ, nlist: int, metric: str):
        self.saq, self.nlist, self.metric = saq, nlist, metric
        self.codes: SAQCodes | None = None
        self.lists = torch.zeros(0, dtype=torch.int64)  # list of each stored code; storage is sorted by it
        self.offsets = torch.zeros(nlist + 1, dtype=torch.int64)
        self.last_search_stats: dict = {}
        self.profile = False
        self._cache = None
        self._layout = None

    def set_codec(self, saq: SAQ) -> None:
        """A (newly) fitted codec; the lists start empty."""
        self.saq = saq
        self.codes = saq.encode(torch.zeros(0, saq.dim))
        self.lists = torch.zeros(0, dtype=torch.int64)
        self.offsets = torch.zeros(self.nlist + 1, dtype=torch.int64)
        self._cache = self._layout = None

    def store(self, codes: SAQCodes, lists: torch.Tensor) -> torch.Tensor:
        """Store ``codes`` of ``lists``, grouped by list; returns the permutation applied (for the ids)."""
        order = torch.argsort(lists, stable=True)
        self.codes, self.lists = codes[order], lists[order]
        self.offsets = torch.zeros(self.nlist + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(torch.bincount(self.lists, minlength=self.nlist), 0)
        self._cache = self._layout = None
        return order

    # ---- per-search data ---------------------------------------------------------

    def _coded(self):
        """Coded segments, unpacked codes per segment (uint8/int32) and ``‖o‖²``; rebuilt after changes.

        Unpacking a bit stream costs more than the matmul it feeds, so it is done
        once per change of the lists rather than once per search; the packed
        codes stay the stored (and counted) form.
        """
        if self._cache is None:
            parts = self.saq.unpack(self.codes)
            segs = [s for s, _ in parts]
            unpacked = [c.to(torch.uint8 if s.bits <= 8 else torch.int32) for s, c in parts]
            self._cache = (segs, unpacked, self.saq.norms2(self.codes))
        return self._cache

    def prepare(self, x: torch.Tensor, centroids: torch.Tensor, probe: torch.Tensor) -> dict:
        """Per-call query data: probed lists, query (and centroid) segments in each segment's rotation."""
        saq, segs = self.saq, self._coded()[0]
        ip = self.metric == "ip"
        qo = (x if ip else x - saq.mean) @ saq.basis
        co = centroids @ saq.basis
        seg_sum = torch.zeros(saq.dim, len(segs))  # sums the weighted squares of each segment's dimensions
        for j, s in enumerate(segs):
            seg_sum[s.start : s.stop, j] = saq.variances[s.start : s.stop]
        prep = {
            "probe": probe,
            "qo": qo,
            "co": co,
            "qs": [qo[:, s.start : s.stop] @ s.rotation for s in segs],
            "cs": [co[:, s.start : s.stop] @ s.rotation for s in segs],
            "seg_var": seg_sum,
        }
        if ip:
            prep["qc"] = x @ centroids.T + (x @ saq.mean)[:, None]
        return prep

    # ---- scans -------------------------------------------------------------------------

    def compiled(self) -> bool:
        """Whether :meth:`scan` uses the compiled fast scan (``backend`` and numba being installed)."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "numba" and not fastscan.available():
            raise ImportError("backend='numba' needs numba: pip install 'vqlib[anns]' (or set backend='auto')")
        return self.backend != "torch" and fastscan.available()

    def scan(self, prep: dict, k: int, nprobe: int, m: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores, positions) over the probed lists; score is the squared distance or −⟨q, x⟩."""
        if self.compiled():
            return self.scan_compiled(prep, k, m)
        return self.scan_torch(prep, k, nprobe, m)

    def layout(self, cseg: np.ndarray) -> fastscan.FastScanLayout:
        """The fast scan's search layout of the stored codes for centroids ``cseg`` (:func:`fastscan.pad_segments`).

        Built once per change of the lists (or of the centroids)."""
        lay = self._layout
        if lay is None or lay.stage_bits != self.stage_bits or not np.array_equal(lay.centroids, cseg):
            segs, unpacked, norms2 = self._coded()
            rescale = self.codes.factors[:, [s.factors[1] for s in segs]]
            seg_norm2 = self.codes.factors[:, [s.factors[0] for s in segs]]
            self._layout = fastscan.build_layout(
                [(s.length, s.bits) for s in segs], unpacked, rescale, norms2, self.offsets, seg_norm2, cseg,
                stage_bits=self.stage_bits,
            )
        return self._layout

    def scan_compiled(self, prep: dict, k: int, m: float) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`scan` by the compiled fast scan (same codes, same estimates; its own first-stage bound)."""
        t0 = time.perf_counter()
        segs = self._coded()[0]
        cseg = fastscan.pad_segments(prep["cs"])
        layout = self.layout(cseg)
        qo, co, probe = prep["qo"], prep["co"], prep["probe"]
        tail = torch.ones(qo.shape[1], dtype=torch.bool)
        for s in segs:
            tail[s.start : s.stop] = False
        if self.metric == "ip":
            qc = prep["qc"].gather(1, probe.clamp_min(0))
        else:
            qc = torch.zeros(probe.shape)
        qseg = fastscan.pad_segments(prep["qs"])
        scores, pos, stats = fastscan.search(qseg, cseg, qo[:, tail], co[:, tail], qc, probe, layout, k, m, self.metric)
        counts = [stats["bounded"], *stats["exact"]]  # stage 0: the 4-bit bound of every code; then exact segments
        seconds = [0.0] * len(counts)
        if self.profile:  # one compiled call: its time goes to the first stage
            seconds[0] = time.perf_counter() - t0
        self.last_search_stats = {"pairs": counts, "needed": counts, "seconds": seconds}
        return torch.from_numpy(scores), torch.from_numpy(pos)

    def scan_torch(self, prep: dict, k: int, nprobe: int, m: float) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`scan` in torch (the reference)."""
        nq = len(prep["qo"])
        best_s = torch.full((nq, k), float("inf"))
        best_p = torch.full((nq, k), -1, dtype=torch.int64)
        thr = torch.full((nq,), float("inf"))
        self.last_search_stats = _new_stats(len(self._coded()[0]))
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
                    s = self.score_block(prep, qi, l, a, b, thr[qi], m)
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

    def range_scan(self, prep: dict, thr: float, m: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores below ``thr`` and their positions, for the one query of ``prep``."""
        self.last_search_stats = _new_stats(len(self._coded()[0]))
        found_s, found_p = [], []
        for l in prep["probe"][0].tolist():
            for a in range(int(self.offsets[l]), int(self.offsets[l + 1]), _BLOCK):
                b = min(a + _BLOCK, int(self.offsets[l + 1]))
                s = self.score_block(prep, torch.zeros(1, dtype=torch.int64), l, a, b, torch.tensor([thr]), m)[0]
                hit = s < thr
                found_s.append(s[hit])
                found_p.append(hit.nonzero()[:, 0] + a)
        return torch.cat(found_s), torch.cat(found_p)

    def score_block(self, prep, qi, l, a, b, thr, m):
        """Scores ``(len(qi), b − a)`` of queries ``qi`` against codes ``a:b`` of list ``l``; +inf where pruned."""
        segs, unpacked, norms2 = self._coded()
        stats, profile = self.last_search_stats, self.profile
        factors = self.codes.factors[a:b]
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
        for j, seg in enumerate(segs):
            if profile:
                t0 = time.perf_counter()
            if cols is not None and len(cols) == 0:
                break
            fcol = seg.factors[1]
            uq = prep["qs"][j][qi] - (prep["cs"][j][l] if self.metric == "l2" else 0)
            if cols is None:
                acc += caq_inner_products(uq, unpacked[j][a:b], factors[:, fcol], seg.bits)
                stats["pairs"][j] += g * n
            else:
                acc[:, cols] += caq_inner_products(uq, unpacked[j][a + cols], factors[cols, fcol], seg.bits)
                stats["pairs"][j] += g * len(cols)
            stats["needed"][j] += int(alive.sum())
            if prune and j + 1 < len(segs):
                lower = const - beta * (acc + rest[:, j : j + 1])
                alive &= lower <= thr[:, None]
                cols = alive.any(0).nonzero()[:, 0]
            if profile:
                stats["seconds"][j] += time.perf_counter() - t0
        scores = const - beta * acc
        return scores.masked_fill_(~alive, float("inf"))

    # ---- state ---------------------------------------------------------------------------

    def arrays(self) -> dict[str, torch.Tensor]:
        """The codec's tensors and the stored codes, under the index file's (version 1) names."""
        out = {f"saq.{k}": v for k, v in self.saq.state_dict().items() if torch.is_tensor(v)}
        out |= {f"codes.packed.{j}": p for j, p in enumerate(self.codes.packed)}
        return out | {"codes.factors": self.codes.factors, "lists": self.lists}

    def load(self, plan: list, arrays: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        """Inverse of :meth:`arrays` (the codec was built with the same arguments); returns the storage permutation."""
        state = {k[4:]: v for k, v in arrays.items() if k.startswith("saq.")}
        state["_extra_state"] = {"plan": plan}
        self.saq.load_state_dict(state)
        packed = [arrays[f"codes.packed.{j}"] for j in range(sum(1 for _, b in plan if b > 0))]
        codes = SAQCodes(packed, arrays["codes.factors"], n)
        self.saq.check_codes(codes)
        return self.store(codes, arrays["lists"])


def same_training(a: SAQLists, b: SAQLists) -> bool:
    """Whether two lists share one fitted codec (so their codes can be merged)."""
    return all(
        torch.equal(x, y) for x, y in zip(a.saq.state_dict().values(), b.saq.state_dict().values()) if torch.is_tensor(x)
    )


def _blocks(start: int, end: int, first: int):
    """Block boundaries ``(a, b)`` covering ``start:end``: one block of ``first`` codes, then blocks of ``_BLOCK``."""
    out, a = [], start
    while a < end:
        b = min(a + (first if a == start else _BLOCK), end)
        out.append((a, b))
        a = b
    return out


def _new_stats(stages: int) -> dict:
    """Counters of one search: (query, code) pairs computed and still needed per stage, seconds per stage (profile)."""
    return {"pairs": [0] * stages, "needed": [0] * stages, "seconds": [0.0] * stages}


def pruning_summary(stats: dict) -> str:
    """One line per stage: share of the first stage's pairs that each stage still had to read."""
    total = max(stats["pairs"][0], 1) if stats.get("pairs") else 1
    return "; ".join(
        f"stage {j}: {p / total:.1%} computed, {n / total:.1%} needed, {s * 1e3:.0f} ms"
        for j, (p, n, s) in enumerate(zip(stats["pairs"], stats["needed"], stats["seconds"]))
    ) or "no stages"
