"""Pyramid vector quantization (PVQ): gain–shape coding on the integer L1 sphere.

Van der Ouderaa, Croci, Hilmkil, Hensman 2024, "Pyramid Vector Quantization
for LLMs", arXiv 2410.16926; the codebook and its enumeration are from T. R.
Fischer, "A pyramid vector quantizer", IEEE Trans. Inf. Theory 32(4), 1986.
A group ``x ∈ R^D`` is coded as a direction on the pyramid and a scalar gain:

    P(D, K) = {y ∈ Z^D : Σ|y_i| = K},   |P(D, K)| = V(D, K)
    V(N, K) = V(N−1, K) + V(N, K−1) + V(N−1, K−1),  V(N, 0) = 1,  V(0, K>0) = 0
    y = argmax_{y ∈ P} cos(x, y),   g = Q(⟨x, y⟩ / ‖y‖₂),   x̂ = g · y / ‖y‖₂

``y`` is stored as its rank in ``[0, V(D, K))`` (Fischer's enumeration, no
codebook in memory) and ``g`` as one of ``2^amplitude_bits`` levels, so a group
costs ``log2 V(D, K) + amplitude_bits`` bits. An optional random Hadamard
rotation first spreads outliers over the group so that it looks Gaussian
(the paper's "coherence processing"). :func:`pvq_quantize_weight` adds the
paper's Hessian-aware variant: groups of columns are quantized in order with
GPTQ's error feedback (Frantar et al. 2022, arXiv 2210.17323).

Where this differs from the paper: the gain levels are fitted by Lloyd–Max
(1-D k-means) on the data's gains rather than derived from a Beta model of
the amplitudes, and the greedy pulse search ends with a few single-pulse
moves (see :func:`pvq_nearest`).

Indices as tensors: a rank ``b < V`` is a little-endian row of ``words`` int64
words of 62 bits each, ``b = Σ_j w_j · 2^(62 j)``. 62 and not 63 bits so that
the sum of two words plus a carry stays below ``2^63``: word arithmetic is
plain int64 adds and shifts, vectorised over the batch, with no overflow.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .packing import pack_bits, unpack_bits

__all__ = [
    "PVQCodes",
    "PVQWeight",
    "PyramidVQ",
    "ROTATIONS",
    "WORD_BITS",
    "hadamard_transform",
    "ints_to_words",
    "pvq_index",
    "pvq_nearest",
    "pvq_point",
    "pvq_quantize_weight",
    "pvq_size",
    "pvq_words",
    "words_to_ints",
]

WORD_BITS = 62
_WORD_MASK = (1 << WORD_BITS) - 1
ROTATIONS = ("hadamard", None)


# ---- sizes -----------------------------------------------------------------


def _check_nk(N: int, K: int) -> None:
    for name, v in (("N", N), ("K", K)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


@functools.lru_cache(maxsize=64)
def _size_table(N: int, K: int) -> tuple[tuple[int, ...], ...]:
    """``V(n, k)`` for ``0 ≤ n ≤ N, 0 ≤ k ≤ K`` as exact Python ints (Fischer's recursion)."""
    rows = [[1] + [0] * K]
    for _ in range(N):
        prev, row = rows[-1], [1]
        for k in range(1, K + 1):
            row.append(prev[k] + row[k - 1] + prev[k - 1])
        rows.append(row)
    return tuple(tuple(r) for r in rows)


def pvq_size(N: int, K: int) -> int:
    """``V(N, K) = |P(N, K)|``, the number of integer points with ``Σ|y_i| = K``, exactly."""
    _check_nk(N, K)
    return _size_table(N, K)[N][K]


def pvq_words(N: int, K: int) -> int:
    """Number of 62-bit words that hold any rank in ``[0, V(N, K))``."""
    return max(1, -(-(pvq_size(N, K) - 1).bit_length() // WORD_BITS))


def ints_to_words(values, words: int, device=None) -> torch.Tensor:
    """Python ints ``≥ 0`` → ``(len(values), words)`` int64, 62-bit little-endian words."""
    out = []
    for v in values:
        v = int(v)
        if v < 0 or v >> (WORD_BITS * words):
            raise ValueError(f"{v} does not fit in {words} words of {WORD_BITS} bits")
        out.append([(v >> (WORD_BITS * j)) & _WORD_MASK for j in range(words)])
    return torch.tensor(out, dtype=torch.int64, device=device).reshape(len(out), words)


def words_to_ints(words: torch.Tensor) -> list[int]:
    """``(B, words)`` 62-bit little-endian words → ``B`` Python ints (the inverse of :func:`ints_to_words`)."""
    rows = words.reshape(-1, words.shape[-1]).tolist()
    return [sum(int(w) << (WORD_BITS * j) for j, w in enumerate(row)) for row in rows]


@functools.lru_cache(maxsize=16)
def _word_tables(N: int, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``V(n, k)``, ``C(n, k) = Σ_{t ≤ k} V(n, t)`` for ``n < N``, and ``V(N, K)``, as word tensors.

    Only ``n < N`` is needed (a coordinate has at most ``N − 1`` after it), and
    there ``C(n, K) ≤ V(n + 1, K) ≤ V(N, K)``, so every entry fits the words of a rank.
    """
    table = _size_table(N, K)
    words = pvq_words(N, K)

    def stacked(rows) -> torch.Tensor:
        return ints_to_words([x for row in rows for x in row], words).reshape(N, K + 1, words)

    v = table[:N]
    return stacked(v), stacked(itertools.accumulate(row) for row in v), ints_to_words([table[N][K]], words)[0]


def _tables(N: int, K: int, device):
    return tuple(t.to(device) for t in _word_tables(N, K))


# ---- vectorised multi-word arithmetic (words on the last dim) ----------------


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # a carry past the top word never happens: every sum here is a rank < V
    out, carry = [], 0
    for j in range(a.shape[-1]):
        s = a[..., j] + b[..., j] + carry
        out.append(s & _WORD_MASK)
        carry = s >> WORD_BITS
    return torch.stack(out, -1)


def _sub(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a − b) mod 2^(62·words)`` and the final borrow (1 where ``a < b``)."""
    a, b = torch.broadcast_tensors(a, b)
    out, borrow = [], torch.zeros_like(a[..., 0])
    for j in range(a.shape[-1]):
        d = a[..., j] - b[..., j] - borrow
        borrow = (d < 0).long()
        out.append(d & _WORD_MASK)
    return torch.stack(out, -1), borrow


def _ge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _sub(a, b)[1] == 0


def _half(a: torch.Tensor) -> torch.Tensor:
    """``⌊a / 2⌋``: shift right by one across words."""
    hi = torch.cat([a[..., 1:] & 1, torch.zeros_like(a[..., :1])], -1)
    return (a >> 1) | (hi << (WORD_BITS - 1))


# ---- enumeration -------------------------------------------------------------


def _check_int_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be an integer tensor, got {got}")


def pvq_index(y: torch.Tensor, K: int | None = None) -> torch.Tensor:
    """Rank of each point of ``P(N, K)``: ``(..., N)`` integers → ``(..., words)`` int64 62-bit words.

    Fischer's enumeration: coordinates are read left to right, and a coordinate
    with ``n`` coordinates after it and ``k`` pulses left takes the values
    ``0, +1, −1, +2, −2, …`` in that order; ``y_i = ±m`` skips every point with
    a smaller value there,

        V(n, k) + 2 Σ_{t=1}^{m−1} V(n, k−t) + [y_i < 0] V(n, k−m)
        = V(n, k) + 2 (C(n, k−1) − C(n, k−m)) + [y_i < 0] V(n, k−m),

    with the cumulative ``C(n, k) = Σ_{t≤k} V(n, t)``, so each coordinate is a
    few table gathers for the whole batch. ``K`` defaults to ``Σ|y_i|`` (it
    must then agree across rows, and is needed for an empty batch).
    """
    _check_int_tensor(y, "y")
    if y.dim() < 1 or y.shape[-1] < 1:
        raise ValueError(f"y must have shape (..., N) with N >= 1, got {tuple(y.shape)}")
    lead, N = y.shape[:-1], y.shape[-1]
    y = y.reshape(-1, N).long()
    l1 = y.abs().sum(-1)
    if K is None:
        if y.shape[0] == 0:
            raise ValueError("K cannot be read from an empty batch; pass K")
        K = int(l1[0])
    _check_nk(N, K)
    if bool((l1 != K).any()):
        raise ValueError(f"every row must have Σ|y_i| = K = {K}, got sums in [{int(l1.min())}, {int(l1.max())}]")
    v, c, _ = _tables(N, K, y.device)
    acc = y.new_zeros(y.shape[0], v.shape[-1])
    k = torch.full_like(l1, K)
    for i in range(N):
        n = N - 1 - i
        m = y[:, i].abs()
        nz, neg = (m > 0).long().unsqueeze(-1), (y[:, i] < 0).long().unsqueeze(-1)
        below = (k - m).clamp_min(0)
        skipped = _sub(c[n, (k - 1).clamp_min(0)], c[n, below])[0]
        step = _add(v[n, k], _add(skipped, skipped))
        acc = _add(acc, step * nz)
        acc = _add(acc, v[n, below] * neg)
        k = k - m
    return acc.reshape(*lead, acc.shape[-1])


def pvq_point(index: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """Inverse of :func:`pvq_index`: ``(..., words)`` ranks in ``[0, V(N, K))`` → ``(..., N)`` int64 points.

    Per coordinate, for the whole batch: a rank below ``V(n, k)`` means 0;
    otherwise, with ``r = b − V(n, k)``, the magnitude ``m`` is the number of
    ``j < k`` with ``C(n, j) ≥ C(n, k−1) − ⌊r/2⌋`` (the largest ``m`` whose
    skipped count ``2(C(n, k−1) − C(n, k−m))`` is at most ``r``), and the sign
    is negative when what is left is at least ``V(n, k−m)``.
    """
    _check_nk(N, K)
    _check_int_tensor(index, "index")
    words = pvq_words(N, K)
    if index.dim() < 1 or index.shape[-1] != words:
        got = tuple(index.shape)
        raise ValueError(f"P({N}, {K}) ranks take {words} words of {WORD_BITS} bits, got index shape {got}")
    lead = index.shape[:-1]
    b = index.reshape(-1, words).long()
    v, c, size = _tables(N, K, b.device)
    if b.numel():
        if int(b.min()) < 0 or int(b.max()) > _WORD_MASK:
            raise ValueError(f"index words must lie in [0, 2^{WORD_BITS})")
        if bool(_ge(b, size).any()):
            raise ValueError(f"index must be in [0, V({N}, {K}) = {pvq_size(N, K)})")
    B = b.shape[0]
    k = b.new_full((B,), K)
    y = b.new_zeros(B, N)
    for i in range(N):
        n = N - 1 - i
        zero = ~_ge(b, v[n, k])
        r = _sub(b, v[n, k])[0]
        top = c[n, (k - 1).clamp_min(0)]
        t = _sub(top, _half(r))[0]
        # C(n, ·) increases, so m = k − (first j with C(n, j) ≥ t): a binary search, O(log K) per row
        lo, hi = torch.zeros_like(k), (k - 1).clamp_min(0)
        for _ in range(K.bit_length()):
            mid = (lo + hi) // 2
            above = _ge(c[n, mid], t)
            lo, hi = torch.where(above, lo, mid + 1), torch.where(above, mid, hi)
        m = torch.where(zero, 0, k - lo)
        below = (k - m).clamp_min(0)
        skipped = _sub(top, c[n, below])[0]
        r = _sub(r, _add(skipped, skipped))[0]
        neg = _ge(r, v[n, below]) & ~zero
        r = _sub(r, v[n, below] * neg.long().unsqueeze(-1))[0]
        b = torch.where(zero.unsqueeze(-1), b, r)
        y[:, i] = torch.where(neg, -m, m)
        k = k - m
    return y.reshape(*lead, N)


# ---- nearest point -------------------------------------------------------------


def _check_float(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _cos2(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``cos²(|x|, y) · ‖x‖²``: the quantity every step below compares (larger is closer)."""
    return (a * y).sum(-1) ** 2 / (y * y).sum(-1)


def _fill(a: torch.Tensor, y: torch.Tensor, K: int) -> torch.Tensor:
    """Add the missing pulses one at a time, each where it raises the cosine most."""
    xy, yy = (a * y).sum(-1), (y * y).sum(-1).double()
    missing = K - y.sum(-1)
    rows = torch.arange(y.shape[0], device=y.device)
    for _ in range(int(missing.max()) if missing.numel() else 0):
        best = ((xy[:, None] + a) ** 2 / (yy[:, None] + 2 * y + 1)).argmax(-1)
        add = (missing > 0).long()
        y[rows, best] += add
        xy = xy + a[rows, best] * add
        yy = yy + (2 * y[rows, best] - 1).double() * add
        missing = missing - add
    return y


def _largest_remainder(u: torch.Tensor, K: int) -> torch.Tensor:
    """The projection rounded onto the pyramid: floor, then +1 on the largest fractional parts."""
    y = torch.floor(u)
    missing = K - y.sum(-1, keepdim=True).long()
    rank = (u - y).argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    return y.long() + (rank < missing).long()


def _exchange(a: torch.Tensor, y: torch.Tensor, passes: int, candidates: int = 4) -> torch.Tensor:
    """Move one pulse ``i → j`` per pass where that raises the cosine most.

    Only the ``candidates`` best single removals × best single additions are
    scored, so a pass costs ``O(N)`` per row rather than ``O(N²)``; on
    Gaussian data (N ≤ 10) 8 candidates found no better points than 4.
    """
    N = y.shape[-1]
    t = min(candidates, N)
    rows = torch.arange(y.shape[0], device=y.device)
    for _ in range(passes if y.shape[0] else 0):
        xy, yy = (a * y).sum(-1), (y * y).sum(-1).double()
        add = (xy[:, None] + a) ** 2 / (yy[:, None] + 2 * y + 1)
        drop = ((xy[:, None] - a) ** 2 / (yy[:, None] - 2 * y + 1).clamp_min(1)).masked_fill(y == 0, -1.0)
        J, I = add.topk(t, -1).indices, drop.topk(t, -1).indices
        ai, aj = a.gather(1, I)[:, :, None], a.gather(1, J)[:, None, :]
        yi, yj = y.gather(1, I)[:, :, None], y.gather(1, J)[:, None, :]
        # ‖y'‖² = ‖y‖² − 2y_i + 1 + 2y_j + 1 for i ≠ j
        score = (xy[:, None, None] - ai + aj) ** 2 / (yy[:, None, None] - 2 * yi + 2 * yj + 2)
        score = score.masked_fill((yi == 0) | (I[:, :, None] == J[:, None, :]), -1.0)
        best, arg = score.reshape(y.shape[0], -1).max(-1)
        # a relative margin: a move that only wins by rounding could undo the last one forever
        move = (best > xy**2 / yy * (1 + 1e-12)).long()
        if not bool(move.any()):
            break
        i, j = I[rows, arg // t], J[rows, arg % t]
        y[rows, i] -= move
        y[rows, j] += move
    return y


def pvq_nearest(x: torch.Tensor, K: int, refine: int = 4) -> torch.Tensor:
    """The point of ``P(N, K)`` closest in angle to each row of ``x``: ``(..., N)`` float → ``(..., N)`` int64.

    Project onto the L1 sphere of radius ``K``, ``u = K|x|/‖x‖₁``,
    and floor (``Σ⌊u_i⌋ ≤ K``, so pulses are only ever missing, never in
    excess). The missing ``K − Σ⌊u_i⌋ < N`` pulses are placed one at a time
    where they raise ``cos(x, y)`` most, i.e. maximise
    ``(⟨|x|, y⟩ + |x_i|)² / (‖y‖² + 2 y_i + 1)``. Greedy is not always the
    optimum, and not even always better than rounding the projection by
    largest remainders, so the better of the two is kept, then up to
    ``refine`` passes move single pulses while that raises the cosine. Each
    step only raises the cosine: never worse than either start point.
    Signs follow ``x`` (``+`` where ``x_i = 0``). A zero row has no direction:
    it gets all ``K`` pulses on its first coordinate.
    """
    _check_float(x, "x")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have shape (..., N) with N >= 1, got {tuple(x.shape)}")
    lead, N = x.shape[:-1], x.shape[-1]
    _check_nk(N, K)
    if not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be an integer >= 0, got {refine!r}")
    # float64: the floor must not cross an integer through rounding, and the
    # scores of near-ties must compare like the true cosines
    a = x.reshape(-1, N).double().abs()
    l1 = a.sum(-1, keepdim=True)
    zero = l1[:, 0] == 0
    u = K * a / torch.where(zero[:, None], 1.0, l1)
    y = _fill(a, torch.floor(u).long(), K)
    rounded = _largest_remainder(u, K)
    y = torch.where((_cos2(a, rounded) > _cos2(a, y))[:, None], rounded, y)
    y = _exchange(a, y, refine)
    y[zero] = 0
    y[zero, 0] = K
    sign = torch.where(x.reshape(-1, N) < 0, -1, 1)
    return (y * sign).reshape(*lead, N)


# ---- rotation ----------------------------------------------------------------


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh–Hadamard transform over the last dim (a power of 2); its own inverse."""
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-2 last dim, got {n}")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        pairs = x.reshape(*lead, n // (2 * h), 2, h)
        x = torch.stack([pairs[..., 0, :] + pairs[..., 1, :], pairs[..., 0, :] - pairs[..., 1, :]], -2)
        h *= 2
    return x.reshape(*lead, n) / math.sqrt(n)


# ---- the codec -----------------------------------------------------------------


@dataclass
class PVQCodes:
    """What :class:`PyramidVQ` stores for a batch of vectors, bit-packed along the last dim.

    ``index``: ``(..., ceil(G·L/8))`` uint8, the ``G`` group ranks of ``L = ceil(log2 V)`` bits each;
    ``amplitude``: ``(..., ceil(G·amplitude_bits/8))`` uint8, the gain level of each group.
    """

    index: torch.Tensor
    amplitude: torch.Tensor

    @property
    def code_size(self) -> int:
        """Bytes stored per vector."""
        return self.index.shape[-1] + self.amplitude.shape[-1]

    @property
    def nbytes(self) -> int:
        """Bytes stored for the whole batch."""
        return self.index.numel() + self.amplitude.numel()


def _lloyd_max(g: torch.Tensor, n_levels: int, iters: int) -> torch.Tensor:
    """``n_levels`` ascending levels minimising ``E(g − Q(g))²`` with the first level pinned at 0.

    The zero level keeps all-zero groups (pruned weights, padding) exactly
    zero; it costs one level of ``2^amplitude_bits``.
    """
    g = g.double().flatten()
    if g.numel() == 0:
        raise ValueError("cannot fit amplitude levels on an empty input")
    free = n_levels - 1
    # start from the quantiles: Lloyd only finds a local optimum, and this one is near it
    ranks = ((torch.arange(free, dtype=torch.float64) + 0.5) / free * g.numel()).long().clamp_max(g.numel() - 1)
    levels = torch.cat([g.new_zeros(1), g.sort().values[ranks.to(g.device)]])
    for _ in range(iters):
        cell = torch.bucketize(g, (levels[1:] + levels[:-1]) / 2)
        sums = torch.zeros_like(levels).index_add_(0, cell, g)
        counts = torch.zeros_like(levels).index_add_(0, cell, torch.ones_like(g))
        new = torch.where(counts > 0, sums / counts.clamp_min(1), levels)
        new[0] = 0.0
        new = new.sort().values
        if torch.equal(new, levels):
            break
        levels = new
    return levels.float()


class PyramidVQ(nn.Module):
    """PVQ of ``dim``-vectors in groups of ``group_size``, each a pyramid point and a gain.

    ``fit(x)`` fits the gain levels, ``encode(x)`` returns bit-packed
    :class:`PVQCodes`, ``decode(codes)`` the reconstruction, and
    ``forward(x) = decode(encode(x))``. This is a codec, not a
    :class:`~vqlib.quantizers.Quantizer`: ranks outgrow int64 (``log2 V(128, 128) ≈ 320``)
    and there is no gradient estimator or usage count.

    Size: ``bits_per_weight = (log2 V(D, K) + amplitude_bits) / D`` is the
    information content; each group is stored in ``L = ceil(log2 V(D, K))``
    index bits plus ``amplitude_bits``, so ``stored_bits_per_weight`` is
    ``(L + amplitude_bits) / D`` and ``code_size`` also rounds each vector's two
    bit streams up to whole bytes.

    Args:
        dim: vector length; a multiple of ``group_size``.
        K: pulses per group (the pyramid's L1 radius); more pulses, finer directions.
        group_size: ``D``, the length of one PVQ vector (default ``dim``).
        amplitude_bits: bits of a group's gain (1–16); level 0 is pinned at 0.
        rotate: ``"hadamard"``: random signs then an orthonormal Walsh–Hadamard
            transform per group before coding (``group_size`` must be a power
            of 2; no padding, since padded coordinates would cost index bits);
            ``None`` (default): code the groups as they are. The paper rotates to
            spread outliers; measured here (runs on Gaussian, Laplace, Student-t and
            outlier-channel data at ~3 bits/weight) the rotation never lowered the
            MSE and up to doubled it on heavy-tailed groups, which PVQ's pyramid
            already suits, so it is opt-in.
        seed: seed of the random signs.
        lloyd_iters: Lloyd–Max iterations of :meth:`fit`.
    """

    def __init__(
        self,
        dim: int,
        K: int,
        group_size: int | None = None,
        amplitude_bits: int = 8,
        rotate: str | None = None,
        seed: int = 0,
        lloyd_iters: int = 50,
    ):
        super().__init__()
        group_size = dim if group_size is None else group_size
        for name, v in (("K", K), ("group_size", group_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(dim, int) or dim < 1 or dim % group_size:
            raise ValueError(f"dim must be a positive multiple of group_size {group_size}, got {dim!r}")
        if not isinstance(amplitude_bits, int) or isinstance(amplitude_bits, bool) or not 1 <= amplitude_bits <= 16:
            raise ValueError(f"amplitude_bits must be an integer in [1, 16], got {amplitude_bits!r}")
        if rotate not in ROTATIONS:
            raise ValueError(f"rotate must be one of {ROTATIONS}, got {rotate!r}")
        if rotate == "hadamard" and group_size & (group_size - 1):
            raise ValueError(f"rotate='hadamard' needs a power-of-2 group_size, got {group_size} (or pass rotate=None)")
        if lloyd_iters < 1:
            raise ValueError(f"lloyd_iters must be >= 1, got {lloyd_iters}")
        self.dim, self.K, self.group_size = dim, K, group_size
        self.groups = dim // group_size
        self.amplitude_bits, self.rotate, self.seed, self.lloyd_iters = amplitude_bits, rotate, seed, lloyd_iters
        self.words = pvq_words(group_size, K)
        self.index_bits = (pvq_size(group_size, K) - 1).bit_length()
        gen = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (dim,), generator=gen).float() * 2 - 1
        self.register_buffer("signs", signs, persistent=False)
        self.register_buffer("levels", torch.zeros(2**amplitude_bits))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # ---- sizes ---------------------------------------------------------------

    @property
    def codebook_size(self) -> int:
        """``V(D, K)``, directions per group (an exact Python int)."""
        return pvq_size(self.group_size, self.K)

    @property
    def bits_per_weight(self) -> float:
        """``(log2 V(D, K) + amplitude_bits) / D``, the exact information per weight."""
        return (math.log2(self.codebook_size) + self.amplitude_bits) / self.group_size

    @property
    def stored_bits_per_weight(self) -> float:
        """``(ceil(log2 V(D, K)) + amplitude_bits) / D``: whole bits per group, as stored."""
        return (self.index_bits + self.amplitude_bits) / self.group_size

    # ---- group-level steps (shared with pvq_quantize_weight) -------------------

    def _groups(self, x: torch.Tensor):
        """``(..., dim)`` → lead shape and ``(M, G, D)`` groups in coding space (rotated)."""
        _check_float(x, "x")
        if x.dim() < 1 or x.shape[-1] != self.dim:
            got = x.shape[-1] if x.dim() else "a scalar"
            raise ValueError(f"expected last dim {self.dim}, got {got}")
        return x.shape[:-1], self._rotate(x.reshape(-1, self.dim).float())

    def _rotate(self, z: torch.Tensor) -> torch.Tensor:
        """``(M, dim)`` → ``(M, G, D)``: random signs, then a Hadamard transform per group (``z ↦ z M``)."""
        if self.rotate == "hadamard":
            z = z * self.signs.to(z.dtype)
        z = z.reshape(-1, self.groups, self.group_size)
        return hadamard_transform(z) if self.rotate == "hadamard" else z

    def _ungroup(self, z: torch.Tensor, lead) -> torch.Tensor:
        if self.rotate == "hadamard":
            z = hadamard_transform(z)
        z = z.reshape(-1, self.dim)
        if self.rotate == "hadamard":
            z = z * self.signs
        return z.reshape(*lead, self.dim)

    @staticmethod
    def _directions(y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        return y / y.norm(dim=-1, keepdim=True)

    def _gain_codes(self, z: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        # ⟨z, ŷ⟩ is the MSE-optimal gain for the chosen direction, and ≥ 0 since ŷ follows z's signs
        gain = (z * unit).sum(-1)
        return torch.bucketize(gain, (self.levels[1:] + self.levels[:-1]) / 2)

    def _quantize_groups(self, z: torch.Tensor):
        """``(..., D)`` coding-space groups → pyramid points, gain codes, and the dequantized groups."""
        if not bool(self.fitted):
            raise ValueError("PyramidVQ has no amplitude levels yet: call fit(x) first")
        y = pvq_nearest(z, self.K)
        unit = self._directions(y)
        amp = self._gain_codes(z, unit)
        return y, amp, unit * self.levels[amp].unsqueeze(-1)

    def pack(self, index: torch.Tensor, amplitude: torch.Tensor) -> PVQCodes:
        """Pack ``(..., G, words)`` ranks and ``(..., G)`` gain codes into :class:`PVQCodes`."""
        lead = index.shape[:-2]
        shifts = torch.arange(WORD_BITS, device=index.device)
        bits = ((index.unsqueeze(-1) >> shifts) & 1).reshape(*lead, self.groups, self.words * WORD_BITS)
        return PVQCodes(
            index=pack_bits(bits[..., : self.index_bits].reshape(*lead, self.groups * self.index_bits), 1),
            amplitude=pack_bits(amplitude, self.amplitude_bits),
        )

    def unpack(self, codes: PVQCodes) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`pack`: ``(..., G, words)`` ranks and ``(..., G)`` gain codes."""
        if not isinstance(codes, PVQCodes):
            raise ValueError(f"expected PVQCodes, got {type(codes).__name__}")
        if codes.index.shape[:-1] != codes.amplitude.shape[:-1]:
            shapes = f"{tuple(codes.index.shape)} vs {tuple(codes.amplitude.shape)}"
            raise ValueError(f"index and amplitude disagree on the batch shape: {shapes}")
        lead = codes.index.shape[:-1]
        bits = unpack_bits(codes.index, 1, self.groups * self.index_bits).reshape(*lead, self.groups, self.index_bits)
        pad = bits.new_zeros(*lead, self.groups, self.words * WORD_BITS - self.index_bits)
        bits = torch.cat([bits, pad], -1).reshape(*lead, self.groups, self.words, WORD_BITS)
        index = (bits << torch.arange(WORD_BITS, device=bits.device)).sum(-1)
        return index, unpack_bits(codes.amplitude, self.amplitude_bits, self.groups)

    # ---- the codec -------------------------------------------------------------

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "PyramidVQ":
        """Fit the ``2^amplitude_bits`` gain levels (Lloyd–Max) to the gains of ``x`` (``(..., dim)``)."""
        _, z = self._groups(x)
        if z.shape[0] == 0:
            raise ValueError("cannot fit on an empty batch")
        unit = self._directions(pvq_nearest(z, self.K))
        levels = _lloyd_max((z * unit).sum(-1), 2**self.amplitude_bits, self.lloyd_iters)
        self.levels.copy_(levels.to(self.levels.device))
        self.fitted.fill_(True)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> PVQCodes:
        lead, z = self._groups(x)
        y, amp, _ = self._quantize_groups(z)
        return self.pack(pvq_index(y, self.K).reshape(*lead, self.groups, self.words), amp.reshape(*lead, self.groups))

    @torch.no_grad()
    def decode(self, codes: PVQCodes) -> torch.Tensor:
        """``(..., dim)`` float32 reconstruction."""
        if not bool(self.fitted):
            raise ValueError("PyramidVQ has no amplitude levels yet: call fit(x) first")
        index, amp = self.unpack(codes)
        lead = index.shape[:-2]
        y = pvq_point(index, self.group_size, self.K)
        z = self._directions(y) * self.levels[amp].unsqueeze(-1)
        return self._ungroup(z.reshape(-1, self.groups, self.group_size), lead)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, K={self.K}, group_size={self.group_size}, amplitude_bits={self.amplitude_bits}, "
            f"rotate={self.rotate!r}, bits_per_weight={self.bits_per_weight:.3f}"
        )


# ---- Hessian-aware weights ---------------------------------------------------------


@dataclass
class PVQWeight:
    """Result of :func:`pvq_quantize_weight`: ``quantizer.decode(codes)`` equals ``weight`` (float32) exactly."""

    weight: torch.Tensor
    codes: PVQCodes
    quantizer: PyramidVQ


@torch.no_grad()
def pvq_quantize_weight(
    W: torch.Tensor,
    K: int,
    H: torch.Tensor,
    group_size: int,
    amplitude_bits: int = 8,
    rotate: str | None = None,
    damp: float = 0.01,
    seed: int = 0,
) -> PVQWeight:
    """PVQ of a linear layer's weight ``W`` (out × in) that minimises the output error on calibration inputs.

    Each row is cut into groups of ``group_size`` input columns; the column
    groups are quantized in order and the error of each is pushed onto the
    columns not yet quantized (GPTQ, arXiv 2210.17323, for a block of columns):
    with ``H = XᵀX`` dampened by ``λ = damp · mean diag(H)`` and ``U`` the
    upper Cholesky factor of ``H⁻¹``, fixing the columns ``S`` at ``Q_S``
    moves the rest ``R`` by ``−E U_SR`` where ``E U_SS = W_S − Q_S``, the
    least-squares optimum of ``‖X(W − Ŵ)ᵀ‖`` given ``Q_S``. With
    ``rotate="hadamard"`` this happens in the rotated basis ``W M``,
    ``Mᵀ H M`` (``M`` orthogonal, block diagonal), which leaves ``XWᵀ`` unchanged.
    The gain levels are fitted on ``W`` before any update.
    """
    _check_float(W, "W")
    _check_float(H, "H")
    if W.dim() != 2:
        raise ValueError(f"W must be (out, in), got shape {tuple(W.shape)}")
    cols = W.shape[1]
    if H.shape != (cols, cols):
        raise ValueError(f"H must be (in, in) = ({cols}, {cols}) for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    q = PyramidVQ(cols, K, group_size, amplitude_bits, rotate=rotate, seed=seed).to(W.device)
    q.fit(W)
    Wr = q._rotate(W.double()).reshape(W.shape[0], cols)
    # H ↦ Mᵀ H M: rotate the rows of H, then the rows of the transpose
    H = q._rotate(q._rotate(H.double()).reshape(cols, cols).T).reshape(cols, cols).clone()
    # a column no input ever reaches is free: GPTQ's convention, avoids a singular H
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    Wr[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype, device=H.device)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    ys, amps = [], []
    for g in range(q.groups):
        s = slice(g * group_size, (g + 1) * group_size)
        y, amp, deq = q._quantize_groups(Wr[:, s].float())
        ys.append(y)
        amps.append(amp)
        err = torch.linalg.solve_triangular(U[s, s], Wr[:, s] - deq.double(), upper=True, left=False)
        Wr[:, s.stop :] -= err @ U[s, s.stop :]
    index = pvq_index(torch.stack(ys, 1), K)
    codes = q.pack(index.reshape(W.shape[0], q.groups, q.words), torch.stack(amps, 1))
    return PVQWeight(weight=q.decode(codes), codes=codes, quantizer=q)
