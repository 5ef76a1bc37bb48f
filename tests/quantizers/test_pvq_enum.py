import math
import random
import re

import pytest
import torch

from vqlib.quantizers.pvq import pvq_nearest
from vqlib.quantizers.pvq_enum import (
    WORD_BITS,
    ints_to_words,
    pvq_index,
    pvq_point,
    pvq_size,
    pvq_words,
    words_to_ints,
)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def all_points(N: int, K: int) -> list[list[int]]:
    """Every point of P(N, K), by recursion on the first coordinate (independent of the library)."""
    if N == 1:
        return [[K], [-K]] if K else [[0]]
    out = []
    for m in range(K + 1):
        for s in (1, -1) if m else (1,):
            out += [[s * m] + rest for rest in all_points(N - 1, K - m)]
    return out


def reference_rank(y: list[int]) -> int:
    """Fischer's rank in plain Python ints: count the points that come before ``y``, coordinate by coordinate."""
    rank, k = 0, sum(abs(v) for v in y)
    size = lambda n, k: 1 if k == 0 else (0 if n == 0 else pvq_size(n, k))  # noqa: E731
    for i, v in enumerate(y):
        n, m = len(y) - 1 - i, abs(v)
        if m:
            rank += size(n, k) + 2 * sum(size(n, k - t) for t in range(1, m))
            rank += size(n, k - m) if v < 0 else 0
        k -= m
    return rank


# ---- sizes and enumeration -------------------------------------------------------


def test_size_matches_closed_form_and_counting():
    # V(N, K) = Σ_i 2^i C(N, i) C(K−1, i−1): the i nonzero coordinates, their signs, K split into i parts
    def closed(N, K):
        return sum(2**i * math.comb(N, i) * math.comb(K - 1, i - 1) for i in range(1, min(N, K) + 1))

    for N, K in [(1, 1), (1, 7), (2, 5), (3, 2), (5, 5), (16, 16), (64, 64), (128, 128)]:
        assert pvq_size(N, K) == closed(N, K)
    assert pvq_size(3, 2) == len(all_points(3, 2)) == 18
    assert pvq_size(7, 1) == 14 and pvq_size(2, 9) == 36
    assert math.log2(pvq_size(64, 64)) > 63 and pvq_words(64, 64) == 3
    assert pvq_words(8, 8) == 1 and pvq_words(16, 16) == 1  # log2 V(16, 16) ≈ 37.1


@pytest.mark.parametrize("N, K", [(1, 1), (1, 4), (2, 3), (3, 4), (4, 3), (5, 5), (6, 6), (3, 11)])
def test_enumeration_is_a_bijection_onto_the_range(N, K):
    points = torch.tensor(all_points(N, K))
    assert len(points) == pvq_size(N, K)
    index = pvq_index(points)
    assert index.shape == (len(points), 1) and index.dtype == torch.int64
    ranks = words_to_ints(index)
    assert sorted(ranks) == list(range(len(points)))
    assert ranks == [reference_rank(p) for p in points.tolist()]
    assert torch.equal(pvq_point(index, N, K), points)
    assert torch.equal(pvq_point(ints_to_words(range(len(points)), 1), N, K)[torch.tensor(ranks).argsort()], points)


def test_multi_word_round_trip():
    N, K = 64, 64  # log2 V ≈ 158.2: three 62-bit words
    V, words = pvq_size(N, K), pvq_words(N, K)
    rng = random.Random(0)
    ranks = [rng.randrange(V) for _ in range(300)]
    ranks += [0, 1, V - 1, V // 2, 2**62 - 1, 2**62, 2**124 - 1, 2**124, 2**124 + 2**62 - 1]  # carries across words
    points = pvq_point(ints_to_words(ranks, words), N, K)
    assert torch.equal(points.abs().sum(-1), torch.full((len(ranks),), K))
    assert words_to_ints(pvq_index(points)) == ranks
    # and from points that quantization actually produces, against plain Python ints
    y = pvq_nearest(torch.randn(50, N), K)
    index = pvq_index(y)
    assert index.shape == (50, words) and int(index.min()) >= 0 and int(index.max()) < 2**WORD_BITS
    assert words_to_ints(index) == [reference_rank(p) for p in y.tolist()]
    assert torch.equal(pvq_point(index, N, K), y)


def test_index_keeps_leading_dims():
    y = pvq_nearest(torch.randn(2, 3, 10), 7)
    index = pvq_index(y)
    assert index.shape == (2, 3, 1)
    assert torch.equal(pvq_point(index, 10, 7), y)
    assert pvq_index(torch.zeros(0, 5, dtype=torch.long), pulses=3).shape == (0, 1)


def test_bad_input_raises_value_errors():
    for N, K in [(0, 3), (3, 0), (-1, 2), (2, True), (2, 1.5)]:
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            pvq_size(N, K)
    with pytest.raises(ValueError, match="pulses must be an integer >= 1, got 0"):
        pvq_words(3, 0)
    with pytest.raises(ValueError, match="integer tensor"):
        pvq_index(torch.randn(2, 3))
    with pytest.raises(ValueError, match=re.escape("every row must have Σ|y_i| = pulses = 2, got sums in [1, 2]")):
        pvq_index(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match=re.escape("every row must have Σ|y_i| = pulses = 3, got sums in [2, 2]")):
        pvq_index(torch.tensor([[1, 1, 0]]), pulses=3)
    with pytest.raises(ValueError, match="pass pulses"):
        pvq_index(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, V\(3, 2\) = 18\)"):
        pvq_point(torch.tensor([[18]]), 3, 2)
    with pytest.raises(ValueError, match="3 words"):
        pvq_point(torch.zeros(2, 1, dtype=torch.long), 64, 64)
    with pytest.raises(ValueError, match="does not fit in 1 words"):
        ints_to_words([2**62], 1)
