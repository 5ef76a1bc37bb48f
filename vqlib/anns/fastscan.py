"""Fast scan of SAQ codes (SAQ, arXiv 2509.12086; 4-bit look-up tables as in FAISS's fast scan, arXiv 1812.09162).

The stored SAQ codes stay as they are; :func:`build_layout` derives a search layout from them once per change
of an index, and :func:`search` scans it with one compiled call (numba) per chunk of queries.

For a coded segment ``j`` with ``B`` bits, the CAQ reconstruction is ``ō = Δ(c + ½) − 1``, ``Δ = 2/2^B``, and the
estimate is ``e_j = r_j⟨ō, u_j⟩`` (``r_j`` the stored rescale factor, ``u_j`` the rotated query residual). The sign
of ``ō`` is the code's most significant bit, so ``s = bit − ½`` is RaBitQ's 1-bit code *of ō*, and with
``g = ⟨s, ō⟩/(‖s‖‖ō‖)`` RaBitQ's estimator and error bound give, with ``m`` standard deviations (``bound_m``),

    e_j ≤ f1·⟨s, u_j⟩ + m·fe·‖u_j‖,   f1 = r_j‖ō‖²/⟨s, ō⟩,   fe = r_j‖ō‖·√(1 − g²)/(g·√(L_j − 1)).

The same estimator holds for any quantised ``ō'`` of ``ō`` (RaBitQ, arXiv 2405.12497, Sec. 3.2): with
``g = cos(ō', ō)``, ``f1 = r_j‖ō‖²/⟨ō', ō⟩`` and ``fe`` as above. By default (``stage_bits=2``) the first stage
reads the top *two* bits, ``c' = c >> (B − 2)``, ``ō' = ½(c' + ½) − 1``: ``g`` rises from about 0.80 (one bit)
to 0.94–0.96, so ``√(1 − g²)/g`` and the bound's slack fall about 2.5×, for a second table look-up per 4
dimensions (the same tables: ``⟨c', u⟩ = 2⟨bit₁, u⟩ + ⟨bit₂, u⟩``). Segments of 1 or 2 bits use all their bits.

Guarantee: under RaBitQ's model (the rotation makes the query's part orthogonal to ``ō`` uniform on its sphere)
the error ``⟨ō_n, u⟩ − ⟨ō'_n, u⟩/g`` is ``√(1 − g²)/g·‖w‖·Z``, ``Z`` a coordinate of a uniform unit vector in
``L − 1`` dimensions times ``√(L − 1)`` (sub-Gaussian, ``P(Z > m) ≤ exp(−m²/2)``). A true top-k code is pruned
only if its error exceeds ``m`` such units, so with ``m = 4`` (``bound_m``, the default) each of them is kept
with probability ≥ 1 − 3.4·10⁻⁴ (≈ 1 − 3·10⁻⁵ for Gaussian tails). RaBitQ's ``ε0 = 1.9`` would be a 2.9 % chance
per neighbour (Gaussian tails): too weak for a scan that must return the full scan's top k.

Stage 1 computes ``⟨bit, u_j⟩`` for 32 codes at once from the bit planes packed FAISS-style (blocks of 32 vectors
per list, 16-entry uint8 tables per 4 dimensions, uint16 sums). The tables are rounded: each entry is off by at
most half a quantisation step, so ``n_sq/2`` steps (times 1 + ½ for two planes) are added to the bound, which
therefore holds for the rounded sums too.

For l2 the error's scale is tighter than ``‖u_j‖``: ``⟨s, u_j⟩`` errs only through ``w_j``, the part of ``u_j``
orthogonal to ``ō_j``, and ``‖w_j‖ ≤ ‖u_j − õ_j‖`` with ``õ_j = r_jō_j`` (CAQ's reconstruction). Summed over
segments, ``‖u_j − õ_j‖² ≤ d + excess`` where ``d`` is the code's estimated squared distance and
``excess = Σ_j ‖õ_j‖² − ‖o_j‖² ≥ 0`` (stored per code). The bound ``d ≥ X − 2m·Σ_j fe_j·min(‖u_j‖, √(d + excess))``
increases in ``d``, so ``d < thr`` needs ``X − 2m·Σ_j fe_j·min(‖u_j‖, √(thr + excess)) < thr``: candidates are
tested with ``√(thr + excess)`` in place of ``‖u_j‖`` wherever smaller (the k-th distance ``thr`` of the block's
start: it only decreases). A code whose lower bound on the distance (all segments at their bound) is not below the current k-th
distance is dropped; the others get the exact estimate segment by segment (SAQ's stages: after each segment the
bound is tightened by its exact value and checked again), and the top k is kept inside the kernel. Until a
query has k results (its first block) there is nothing to prune against, but the bounds still order the block's
exact estimates: the most promising first, so the k-th distance exists after about k of them rather than 32. ``bound_m=0``
scans every code exactly (the full scan the pruned one must agree with).

Layout arrays (all C-contiguous numpy, built by :func:`build_layout`):

- ``codes``: uint8, per block ``stage_bits·D'/8`` pairs × 32 bytes (``D'``: coded dimensions, each segment padded
  to 16): the top bit plane of all segments, then (``stage_bits=2``) the second one;
- ``fblk``: float32 ``(blocks, 3S + 1, 32)``: ``f1`` and ``fe`` per segment and code, then ``excess``, then
  ``⟨c'_j/2^(stage_bits−1), c_l − anchor⟩`` per segment (``anchor``: the centroids' mean; the tables are built once per query
  from ``q − anchor``, and ``⟨bit, u⟩ = ⟨bit, q − anchor⟩ − ⟨bit, c_l − anchor⟩``; ip: tables of ``q``);
- ``ucodes``: ``(32·blocks, D')`` the integer codes unpacked (uint8, uint16 where a segment has over 8 bits),
  each segment zero-padded like the queries: the exact estimate is one 16-lane multiply-add pass per segment;
- ``rescale`` ``(32·blocks, S)``, ``norm2`` (+inf marks padding), ``pos`` (storage position, −1 for padding).
"""

from __future__ import annotations

import math
import platform
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .base import get_num_threads

__all__ = ["FastScanLayout", "available", "build_layout", "default_simd", "pad_segments", "search"]

#: dimensions per look-up-table group: its uint16 sums stay below 2^16 (256 tables × 255)
GROUP_DIMS = 1024
_PERM = np.array([(j >> 1) + 8 * (j & 1) for j in range(16)])  # vector held by byte j of a 16-byte half


def available() -> bool:
    """Whether numba is installed (``pip install 'vqlib[anns]'``)."""
    try:
        import llvmlite  # noqa: F401
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def default_simd() -> str:
    """``"avx512"``, ``"avx2"`` or ``"portable"``: the widest byte shuffle numba can emit for its target CPU."""
    if _simd_cache is None:
        globals()["_simd_cache"] = _detect_simd()  # asking LLVM for the CPU's features costs ~1 ms
    return _simd_cache


_simd_cache: str | None = None


def _detect_simd() -> str:
    if not available() or platform.machine().lower() not in ("x86_64", "amd64"):
        return "portable"
    from llvmlite import binding
    from numba.core import config

    if config.CPU_NAME and config.CPU_NAME != "host":  # a portable cache was asked for (NUMBA_CPU_NAME)
        features = set((config.CPU_FEATURES or "").split(","))
    else:
        features = {f"+{name}" for name, on in binding.get_host_cpu_features().items() if on}
    if {"+avx512f", "+avx512bw"} <= features:
        return "avx512"
    if "+avx2" in features:
        return "avx2"
    return "portable"


@dataclass
class FastScanLayout:
    """Search layout of one index's SAQ codes (see the module docstring for the arrays)."""

    seg_len: np.ndarray  # true length of each coded segment
    seg_dims: np.ndarray  # padded length (multiple of 16)
    seg_start: np.ndarray  # start in the padded query vector
    seg_bits: np.ndarray
    grp_seg: np.ndarray
    grp_start: np.ndarray
    grp_dims: np.ndarray
    blk_off: np.ndarray
    anchor: np.ndarray
    centroids: np.ndarray
    codes: np.ndarray
    fblk: np.ndarray
    ucodes: np.ndarray
    rescale: np.ndarray
    norm2: np.ndarray
    pos: np.ndarray
    stage_bits: int = 1

    @property
    def dims(self) -> int:
        return int(self.seg_dims.sum())

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))


def build_layout(segments, codes, rescale, norm2, offsets, seg_norm2=None, centroids=None,
                 stage_bits: int = 2) -> FastScanLayout:
    """Search layout from stored SAQ codes.

    Args:
        segments: ``(length, bits)`` of each coded segment, in order.
        codes: unpacked integer codes per coded segment, ``(n, length)`` each (tensors or arrays).
        rescale: ``(n, S)`` rescale factor ``‖o_j‖²/⟨ō_j, o_j⟩`` per segment.
        norm2: ``(n,)`` ``‖o‖²`` of the whole vector (dropped segments included).
        offsets: ``(nlist + 1,)`` start of each inverted list in storage order.
        seg_norm2: ``(n, S)`` ``‖o_j‖²`` per coded segment; gives each code its ``excess`` (module docstring).
            Without it the l2 bound uses ``‖u_j‖`` alone.
        centroids: ``(nlist, D')`` list centroids cut into rotated, padded segments as the queries are
            (:func:`pad_segments`; default: all at the origin). l2 searches must pass the same to :func:`search`.
        stage_bits: top bit planes of each segment that the first stage scores (1 or 2; segments with fewer bits
            use all of theirs). 2 costs a second table look-up per 4 dimensions and shrinks the bound's error
            factor about 2.5× (module docstring).
    """
    if stage_bits not in (1, 2):
        raise ValueError(f"stage_bits must be 1 or 2, got {stage_bits!r}")
    codes = [_np(c).astype(np.int64) for c in codes]
    rescale = _np(rescale).astype(np.float64).reshape(len(norm2), -1)
    norm2, offsets = _np(norm2).astype(np.float32), _np(offsets).astype(np.int64)
    n, ns = len(norm2), len(segments)
    if len(codes) != ns or rescale.shape[1] != ns or ns == 0:
        raise ValueError(f"expected codes and rescale factors for {ns} coded segments (at least one), got {len(codes)}")
    seg_len = np.array([length for length, _ in segments], np.int64)
    seg_bits = np.array([b for _, b in segments], np.int64)
    if not (1 <= seg_bits).all() or not (seg_bits <= 16).all():
        raise ValueError(f"coded segments need 1 to 16 bits, got {seg_bits.tolist()}")
    seg_dims = (seg_len + 15) // 16 * 16
    seg_start = np.concatenate([[0], np.cumsum(seg_dims)[:-1]]).astype(np.int64)
    grp = [(j, s, min(GROUP_DIMS, e - s)) for j in range(ns) for e in [seg_start[j] + seg_dims[j]]
           for s in range(int(seg_start[j]), int(e), GROUP_DIMS)]  # fmt: skip
    dp = int(seg_dims.sum())

    sizes = np.diff(offsets)
    blk_off = np.concatenate([[0], np.cumsum((sizes + 31) // 32)]).astype(np.int64)
    nblk = int(blk_off[-1])
    lists = np.repeat(np.arange(len(sizes)), sizes)
    dest = blk_off[lists] * 32 + np.arange(n) - offsets[lists]  # slot of each stored vector

    msb = np.zeros((n, stage_bits * dp), np.uint8)  # top bit plane, then (stage_bits 2) the next one
    ucodes = np.zeros((nblk * 32, dp), np.uint8 if seg_bits.max() <= 8 else np.uint16)
    fblk = np.zeros((nblk * 32, 3 * ns + 1), np.float32)
    nlist = len(offsets) - 1
    centroids = np.zeros((nlist, dp), np.float32) if centroids is None else np.array(_np(centroids), np.float32)
    if centroids.shape != (nlist, dp):
        raise ValueError(f"centroids: expected shape {(nlist, dp)}, got {centroids.shape}")
    anchor = centroids.mean(0) if nlist else np.zeros(dp, np.float32)
    shifted = (centroids - anchor).astype(np.float64)
    seg_norm2 = None if seg_norm2 is None else _np(seg_norm2).astype(np.float64).reshape(n, ns)
    excess = np.zeros(n) if seg_norm2 is not None else np.full(n, np.inf)
    for j, (c, length, b) in enumerate(zip(codes, seg_len, seg_bits)):
        if c.shape != (n, length):
            raise ValueError(f"segment {j}: expected codes of shape {(n, int(length))}, got {c.shape}")
        s0 = int(seg_start[j])
        top = min(int(b), stage_bits)  # bits the first stage reads: c' = c >> (b − top)
        msb[:, s0 : s0 + length] = c >> (b - 1)
        if top == 2:
            msb[:, dp + s0 : dp + s0 + length] = (c >> (b - 2)) & 1
        ucodes[dest, s0 : s0 + length] = c
        fblk[dest, 2 * j : 2 * j + 2] = _bound_factors(c, int(b), top, rescale[:, j])
        # ⟨c'/2^(top−1), c_l − anchor⟩: stage 1's tables hold ⟨bit, q − anchor⟩, bit planes weighted 1 and ½
        cw = (c >> (b - top)).astype(np.float64) / (1 << (top - 1))
        fblk[dest, 2 * ns + 1 + j] = np.einsum("nd,nd->n", cw, shifted[lists, s0 : s0 + length])
        if seg_norm2 is not None:  # ‖õ_j‖² − ‖o_j‖² of the CAQ reconstruction õ_j = r_j·ō_j (≥ 0 up to rounding)
            ob = (2.0 / (1 << int(b))) * (c + 0.5) - 1.0
            excess += np.maximum(np.square(rescale[:, j]) * np.square(ob).sum(1) - seg_norm2[:, j], 0.0)
    fblk[dest, 2 * ns] = excess * (1 + 1e-6) + 1e-6 * norm2  # float32 rounding of the distances, to be safe
    dq = stage_bits * dp
    nib = (msb.reshape(n, dq // 4, 4) << np.arange(4, dtype=np.uint8)).sum(-1).astype(np.uint8)
    slots = np.zeros((nblk * 32, dq // 4), np.uint8)
    slots[dest] = nib
    # FAISS's block order: per pair of sub-codes, 16 bytes per sub-code; byte j: vector PERM[j] | vector PERM[j]+16 << 4
    x = slots.reshape(nblk, 32, dq // 8, 2)
    packed = x[:, _PERM] | (x[:, _PERM + 16] << 4)  # (block, 16, pair, sub-code)
    block_codes = np.ascontiguousarray(packed.transpose(0, 2, 3, 1)).reshape(-1)

    pos = np.full(nblk * 32, -1, np.int64)
    pos[dest] = np.arange(n)
    norm2_p = np.full(nblk * 32, np.inf, np.float32)
    norm2_p[dest] = norm2
    rescale_p = np.zeros((nblk * 32, ns), np.float32)
    rescale_p[dest] = rescale
    return FastScanLayout(
        seg_len=seg_len, seg_dims=seg_dims, seg_start=seg_start, seg_bits=seg_bits,
        grp_seg=np.array([g[0] for g in grp], np.int64), grp_start=np.array([g[1] for g in grp], np.int64),
        grp_dims=np.array([g[2] for g in grp], np.int64), blk_off=blk_off, codes=block_codes,
        fblk=np.ascontiguousarray(fblk.reshape(nblk, 32, 3 * ns + 1).transpose(0, 2, 1)),
        anchor=anchor.astype(np.float32), centroids=centroids,
        ucodes=ucodes, rescale=rescale_p, norm2=norm2_p, pos=pos, stage_bits=stage_bits,
    )  # fmt: skip


def _bound_factors(c: np.ndarray, bits: int, top: int, rescale: np.ndarray) -> np.ndarray:
    """``(f1, fe)`` per vector: the scale of the ``top``-bit estimate and its error factor (module docstring)."""
    length = c.shape[1]
    ob = (2.0 / (1 << bits)) * (c + 0.5) - 1.0  # never 0: odd multiples of Δ/2
    ot = (2.0 / (1 << top)) * ((c >> (bits - top)) + 0.5) - 1.0  # ō' of the truncated code: same signs as ō
    n2 = np.square(ob).sum(1)
    dot = (ot * ob).sum(1)  # ⟨ō', ō⟩ > 0
    g = np.clip(dot / np.sqrt(np.square(ot).sum(1) * n2), 1e-12, 1.0)
    f1 = rescale * n2 / dot
    fe = rescale * np.sqrt(n2) * np.sqrt(np.maximum(1.0 - g * g, 0.0)) / (g * math.sqrt(max(length - 1, 1)))
    return np.stack([f1, fe], 1)


def pad_segments(parts) -> np.ndarray:
    """Rotated segments ``(n, length_j)`` of each coded segment side by side, each zero-padded to a multiple of 16
    (the layout's ``seg_start`` / ``seg_dims``)."""
    widths = [(p.shape[1] + 15) // 16 * 16 for p in parts]
    out = np.zeros((len(parts[0]) if parts else 0, sum(widths)), np.float32)
    a = 0
    for part, w in zip(parts, widths):
        out[:, a : a + part.shape[1]] = _np(part)
        a += w
    return out


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="vqlib-fastscan")
        return _pool


def search(qseg, cseg, qtail, ctail, qconst, probe, layout: FastScanLayout, k: int, bound_m: float, metric: str,
           simd: str | None = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:  # fmt: skip
    """Top-k of each query over its probed lists: ``(scores, positions, stats)``, best first.

    Args:
        qseg: ``(nq, D')`` queries (l2: minus SAQ's mean) cut into rotated segments (:func:`pad_segments`).
        cseg: ``(nlist, D')`` centroids the same way (l2; ignored for ip).
        qtail, ctail: ``(nq, t)`` / ``(nlist, t)`` PCA coordinates of the dropped dimensions (l2), ``t`` may be 0.
        qconst: ``(nq, nprobe)`` for ip: ``⟨q, c_l⟩ + ⟨q, μ⟩`` of each probed list (ignored for l2).
        probe: ``(nq, nprobe)`` int64 lists to scan (−1: none).
        k: results per query; bound_m: pruning bound in standard deviations (0: full scan).
        metric: ``"l2"`` (scores: estimated squared distances) or ``"ip"`` (scores: −estimated inner products).
        simd: ``"avx512"``, ``"avx2"`` or ``"portable"`` (default: :func:`default_simd`).
        threads: query chunks searched in parallel (default: :func:`vqlib.anns.get_num_threads`).

    Returns positions −1 (score +inf) where fewer than ``k`` codes were found. ``stats``: ``"bounded"`` codes
    scored by stage 1 and ``"exact"`` codes whose segment ``j`` was estimated exactly.
    """
    if not available():
        raise ImportError("the compiled fast scan needs numba: pip install 'vqlib[anns]'")
    from ._fastscan_kernels import KERNELS

    simd = default_simd() if simd is None else simd
    if simd not in KERNELS:
        raise ValueError(f"simd must be one of {sorted(KERNELS)}, got {simd!r}")
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
    if not k >= 1 or not bound_m >= 0:
        raise ValueError(f"need k >= 1 and bound_m >= 0, got k={k}, bound_m={bound_m}")
    f32 = [np.ascontiguousarray(_np(a), dtype=np.float32) for a in (qseg, cseg, qtail, ctail, qconst)]
    probe = np.ascontiguousarray(_np(probe), dtype=np.int64)
    nq, nprobe = probe.shape
    if f32[0].shape != (nq, layout.dims) or f32[1].shape[1] != layout.dims:
        raise ValueError(f"query segments: expected (nq, {layout.dims}) rows, got {f32[0].shape} and {f32[1].shape}")
    if metric == "l2" and not np.array_equal(f32[1], layout.centroids):
        raise ValueError("cseg differs from the centroids the layout was built with: rebuild it (build_layout)")
    if probe.size and int(probe.max()) >= len(layout.blk_off) - 1:
        raise ValueError(f"probe: list {int(probe.max())} out of range for {len(layout.blk_off) - 1} lists")
    if f32[4].shape != (nq, nprobe):
        f32[4] = np.zeros((nq, nprobe), np.float32)
    out_d = np.empty((nq, k), np.float32)
    out_p = np.empty((nq, k), np.int64)
    stats = np.zeros((nq, 1 + len(layout.seg_dims)), np.int64)
    kernel = KERNELS[simd]
    lay = layout

    def run(a, b):
        kernel(f32[0][a:b], f32[1], f32[2][a:b], f32[3], f32[4][a:b], probe[a:b], metric == "ip", float(bound_m), k,
               lay.grp_seg, lay.grp_start, lay.grp_dims, lay.seg_start, lay.seg_dims, lay.seg_bits,
               lay.blk_off, lay.anchor, lay.codes, lay.fblk, lay.rescale, lay.norm2, lay.ucodes.reshape(-1), lay.pos,
               out_d[a:b], out_p[a:b], stats[a:b])  # fmt: skip

    threads = get_num_threads() if threads is None else int(threads)
    if threads <= 1 or nq < 2:
        run(0, nq)
    else:  # the kernels release the GIL: chunks of queries run in parallel, each chunk one compiled call
        step = max(1, -(-nq // (4 * threads)))
        list(_executor(threads).map(lambda a: run(a, min(a + step, nq)), range(0, nq, step)))
    total = stats.sum(0)
    return out_d, out_p, {"bounded": int(total[0]), "exact": [int(v) for v in total[1:]]}


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)

