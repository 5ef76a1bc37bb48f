"""Fischer's enumeration of the pyramid ``P(N, K)`` in multi-word integers.

T. R. Fischer, "A pyramid vector quantizer", IEEE Trans. Inf. Theory 32(4),
1986; used by Pyramid VQ (arXiv 2410.16926, :mod:`vqlib.quantizers.pvq`).
The pyramid of ``N``-vectors (``N = vector_size``) with ``K`` pulses
(``K = pulses``) and its size:

    P(N, K) = {y ∈ Z^N : Σ|y_i| = K},   |P(N, K)| = V(N, K)
    V(N, K) = V(N−1, K) + V(N, K−1) + V(N−1, K−1),  V(N, 0) = 1,  V(0, K>0) = 0

:func:`pvq_index` maps each point to its rank in ``[0, V(N, K))`` and
:func:`pvq_point` back, with no codebook in memory: a few table gathers per
coordinate for a whole batch.

Ranks outgrow int64 (``log2 V(128, 128) ≈ 320``), so a rank ``b < V`` is a
little-endian row of ``words`` int64 words of 62 bits each,
``b = Σ_j w_j · 2^(62 j)``. 62 and not 63 bits so that the sum of two words
plus a carry stays below ``2^63``: word arithmetic is plain int64 adds and
shifts, vectorised over the batch, with no overflow.
"""

from __future__ import annotations

import functools
import itertools

import torch

__all__ = ["WORD_BITS", "ints_to_words", "pvq_index", "pvq_point", "pvq_size", "pvq_words", "words_to_ints"]

WORD_BITS = 62
_WORD_MASK = (1 << WORD_BITS) - 1


# ---- sizes -----------------------------------------------------------------


def _check_nk(N: int, K: int) -> None:
    for name, v in (("vector_size", N), ("pulses", K)):
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


def pvq_size(vector_size: int, pulses: int) -> int:
    """``V(N, K) = |P(N, K)|`` for ``N = vector_size``, ``K = pulses``: the points with ``Σ|y_i| = K``, exactly."""
    _check_nk(vector_size, pulses)
    return _size_table(vector_size, pulses)[vector_size][pulses]


def pvq_words(vector_size: int, pulses: int) -> int:
    """Number of 62-bit words that hold any rank in ``[0, V(vector_size, pulses))``."""
    return max(1, -(-(pvq_size(vector_size, pulses) - 1).bit_length() // WORD_BITS))


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


def pvq_index(y: torch.Tensor, pulses: int | None = None) -> torch.Tensor:
    """Rank of each point of ``P(N, K)``: ``(..., N)`` integers → ``(..., words)`` int64 62-bit words.

    Fischer's enumeration: coordinates are read left to right, and a coordinate
    with ``n`` coordinates after it and ``k`` pulses left takes the values
    ``0, +1, −1, +2, −2, …`` in that order; ``y_i = ±m`` skips every point with
    a smaller value there,

        V(n, k) + 2 Σ_{t=1}^{m−1} V(n, k−t) + [y_i < 0] V(n, k−m)
        = V(n, k) + 2 (C(n, k−1) − C(n, k−m)) + [y_i < 0] V(n, k−m),

    with the cumulative ``C(n, k) = Σ_{t≤k} V(n, t)``, so each coordinate is a
    few table gathers for the whole batch. ``pulses`` (``K``) defaults to
    ``Σ|y_i|`` (it must then agree across rows, and is needed for an empty batch).
    """
    K = pulses
    _check_int_tensor(y, "y")
    if y.dim() < 1 or y.shape[-1] < 1:
        raise ValueError(f"y must have shape (..., N) with N >= 1, got {tuple(y.shape)}")
    lead, N = y.shape[:-1], y.shape[-1]
    y = y.reshape(-1, N).long()
    l1 = y.abs().sum(-1)
    if K is None:
        if y.shape[0] == 0:
            raise ValueError("pulses cannot be read from an empty batch; pass pulses")
        K = int(l1[0])
    _check_nk(N, K)
    if bool((l1 != K).any()):
        raise ValueError(f"every row must have Σ|y_i| = pulses = {K}, got sums in [{int(l1.min())}, {int(l1.max())}]")
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


def pvq_point(index: torch.Tensor, vector_size: int, pulses: int) -> torch.Tensor:
    """Inverse of :func:`pvq_index`: ``(..., words)`` ranks in ``[0, V(N, K))`` → ``(..., N)`` int64 points.

    Per coordinate, for the whole batch: a rank below ``V(n, k)`` means 0;
    otherwise, with ``r = b − V(n, k)``, the magnitude ``m`` is the number of
    ``j < k`` with ``C(n, j) ≥ C(n, k−1) − ⌊r/2⌋`` (the largest ``m`` whose
    skipped count ``2(C(n, k−1) − C(n, k−m))`` is at most ``r``), and the sign
    is negative when what is left is at least ``V(n, k−m)``. ``N = vector_size``, ``K = pulses``.
    """
    N, K = vector_size, pulses
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
