import math
import random

import pytest
import torch

from vqlib.quantizers.packing import packed_size
from vqlib.quantizers.pvq import (
    WORD_BITS,
    PVQCodes,
    PyramidVQ,
    hadamard_transform,
    ints_to_words,
    pvq_index,
    pvq_nearest,
    pvq_point,
    pvq_quantize_weight,
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


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.double(), y.double()
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))


def rounded_projection(x: torch.Tensor, K: int) -> torch.Tensor:
    """The baseline: K·x/‖x‖₁ floored, the missing pulses on the largest remainders."""
    u = K * x.double().abs() / x.double().abs().sum(-1, keepdim=True)
    y = u.floor()
    order = (u - y).argsort(dim=-1, descending=True).argsort(dim=-1)
    y = y.long() + (order < (K - y.sum(-1, keepdim=True).long())).long()
    return y * torch.where(x < 0, -1, 1)


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
    assert pvq_index(torch.zeros(0, 5, dtype=torch.long), K=3).shape == (0, 1)


# ---- nearest point ---------------------------------------------------------------


@pytest.mark.parametrize("N, K", [(1, 3), (5, 2), (8, 30), (33, 17), (128, 64)])
def test_nearest_is_on_the_pyramid_and_follows_signs(N, K):
    x = torch.randn(200, N)
    y = pvq_nearest(x, K)
    assert y.dtype == torch.int64 and y.shape == x.shape
    assert torch.equal(y.abs().sum(-1), torch.full((200,), K))
    assert bool((y * x.sign() >= 0).all())


@pytest.mark.parametrize("N, K", [(3, 4), (4, 7), (5, 5), (6, 6), (8, 4)])
def test_nearest_against_brute_force(N, K):
    torch.manual_seed(N * 100 + K)
    codebook = torch.tensor(all_points(N, K), dtype=torch.float64)
    codebook = codebook / codebook.norm(dim=-1, keepdim=True)
    x = torch.cat([torch.randn(600, N), torch.distributions.Laplace(0.0, 1.0).sample((600, N))])
    optimum = (x.double() / x.double().norm(dim=-1, keepdim=True) @ codebook.T).max(-1).values
    baseline = cosine(x, rounded_projection(x, K))
    for refine, share in [(0, 0.9), (4, 0.98)]:
        found = cosine(x, pvq_nearest(x, K, refine=refine))
        assert bool((found <= optimum + 1e-12).all())
        assert (found >= optimum - 1e-12).double().mean() >= share
        assert bool((found >= baseline - 1e-12).all()), "never worse than rounding the projection"


def test_nearest_is_exact_on_easy_cases():
    x = torch.randn(500, 9)
    # one pulse goes to the largest magnitude
    y = pvq_nearest(x, 1)
    assert torch.equal(y.abs().argmax(-1), x.abs().argmax(-1))
    # a point of the pyramid, scaled and barely perturbed, is its own nearest point
    points = torch.tensor(random.Random(1).sample(all_points(4, 6), 200))
    noisy = 0.3 * points + 1e-4 * torch.randn(200, 4)
    assert torch.equal(pvq_nearest(noisy, 6), points)
    # N = 2 and N = 1: the greedy search is exhaustive enough
    x2 = torch.randn(300, 2)
    line = torch.tensor(all_points(2, 5), dtype=torch.float64)
    line = line / line.norm(dim=-1, keepdim=True)
    best = (x2.double() / x2.double().norm(dim=-1, keepdim=True) @ line.T).max(-1).values
    torch.testing.assert_close(cosine(x2, pvq_nearest(x2, 5)), best, rtol=0, atol=1e-12)
    assert pvq_nearest(torch.tensor([[-2.5], [0.1]]), 4).tolist() == [[-4], [4]]


def test_zero_vectors():
    y = pvq_nearest(torch.zeros(3, 5), 4)
    assert y.tolist() == [[4, 0, 0, 0, 0]] * 3
    q = PyramidVQ(16, 5, group_size=8, amplitude_bits=2).fit(torch.randn(100, 16))
    x = torch.randn(4, 16)
    x[1] = 0
    x[2, :8] = 0  # one group of a vector
    out = q(x)
    assert bool((out[1] == 0).all()) and bool((out[2, :8] == 0).all())
    assert bool((out[2, 8:] != 0).any())


# ---- rotation and codec -----------------------------------------------------------------


def test_hadamard_is_orthonormal_and_self_inverse():
    x = torch.randn(5, 3, 32, dtype=torch.float64)
    hx = hadamard_transform(x)
    torch.testing.assert_close(hx.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(hadamard_transform(hx), x)
    eye = hadamard_transform(torch.eye(4, dtype=torch.float64)) * 2
    assert eye.abs().eq(1).all() and torch.equal(eye[0], torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="power-of-2"):
        hadamard_transform(torch.randn(2, 12))


@pytest.mark.parametrize("rotate", ["hadamard", None])
def test_codec_round_trip_and_sizes(rotate):
    dim, group, K, bits = 48 if rotate is None else 64, 16, 12, 5
    x = torch.randn(300, dim)
    q = PyramidVQ(dim, K, group_size=group, amplitude_bits=bits, rotate=rotate).fit(x)
    codes = q.encode(x[:7])
    groups, L = dim // group, (pvq_size(group, K) - 1).bit_length()
    assert L == math.ceil(math.log2(pvq_size(group, K)))
    assert isinstance(codes, PVQCodes) and codes.index.dtype == torch.uint8
    assert codes.code_size == packed_size(groups * L, 1) + packed_size(groups, bits)
    assert codes.nbytes == 7 * codes.code_size
    assert q.bits_per_weight == (math.log2(pvq_size(group, K)) + bits) / group
    assert q.stored_bits_per_weight == (L + bits) / group
    assert q.codebook_size == pvq_size(group, K)
    # the stored ranks are the ranks of the nearest points in coding space
    index, amp = q.unpack(codes)
    assert index.shape == (7, groups, 1) and amp.shape == (7, groups)
    assert torch.equal(q.pack(index, amp).index, codes.index)
    out = q.decode(codes)
    assert out.shape == (7, dim) and out.dtype == torch.float32
    assert torch.equal(out, q(x[:7]))
    # leading dims, a single vector, an empty batch
    assert q.decode(q.encode(x[:6].reshape(2, 3, dim))).shape == (2, 3, dim)
    assert q.decode(q.encode(x[:0])).shape == (0, dim)
    torch.testing.assert_close(q(x[0]), out[0])
    # 5 bits and K = 12 in groups of 16: a coarse but sane codec
    rel = ((q(x) - x).norm() / x.norm()).item()
    assert rel < 0.45


@pytest.mark.parametrize("rotate", ["hadamard", None])
def test_fine_codec_inverts_the_rotation(rotate):
    x = torch.randn(64, 32) * torch.linspace(0.1, 4, 32)
    q = PyramidVQ(32, 512, group_size=16, amplitude_bits=12, rotate=rotate).fit(x)
    assert ((q(x) - x).norm() / x.norm()).item() < 0.02


def test_multi_word_codec():
    x = torch.randn(20, 128)
    q = PyramidVQ(128, 64, amplitude_bits=8).fit(x)
    assert q.words == 4 and q.index_bits == 218
    codes = q.encode(x)
    assert codes.code_size == 28 + 1 and q.stored_bits_per_weight == (218 + 8) / 128
    index, _ = q.unpack(codes)
    assert index.shape == (20, 1, 4)
    assert torch.equal(q.decode(codes), q(x))
    assert (cosine(q(x), x) > 0.9).all()  # E cos ≈ 0.92 at K = D/2


def test_amplitude_levels_fit_the_gains():
    x = torch.randn(2000, 16) * torch.rand(2000, 1) * 3  # a spread of group norms
    q = PyramidVQ(16, 8, amplitude_bits=3, rotate=None).fit(x)
    levels = q.levels
    assert levels[0] == 0 and bool((levels[1:] > levels[:-1]).all())
    unit = pvq_nearest(x, 8).float()
    unit = unit / unit.norm(dim=-1, keepdim=True)
    gain = (x * unit).sum(-1)
    fitted = (gain - levels[torch.bucketize(gain, (levels[1:] + levels[:-1]) / 2)]).pow(2).mean()
    even = torch.linspace(0, gain.max().item(), 8)
    uniform = (gain - even[torch.bucketize(gain, (even[1:] + even[:-1]) / 2)]).pow(2).mean()
    assert fitted < 0.8 * uniform
    # the levels travel in the state dict
    other = PyramidVQ(16, 8, amplitude_bits=3, rotate=None)
    other.load_state_dict(q.state_dict())
    assert torch.equal(other(x[:5]), q(x[:5]))


# ---- Hessian-aware weights ------------------------------------------------------------


@pytest.mark.parametrize("rotate", [None, "hadamard"])
def test_hessian_aware_beats_plain_pvq(rotate):
    torch.manual_seed(0)
    n, d_in, d_out = 2048, 64, 48
    # strongly correlated inputs: a few latent factors plus a little noise, uneven scales
    X = torch.randn(n, 6) @ torch.randn(6, d_in) + 0.1 * torch.randn(n, d_in)
    X = X * torch.linspace(0.5, 2.0, d_in)
    W = torch.randn(d_out, d_in)
    result = pvq_quantize_weight(W, 8, X.T @ X, group_size=16, amplitude_bits=4, rotate=rotate)
    plain = PyramidVQ(d_in, 8, group_size=16, amplitude_bits=4, rotate=rotate).fit(W)
    assert result.quantizer.bits_per_weight == plain.bits_per_weight
    assert result.weight.shape == W.shape
    assert torch.equal(result.quantizer.decode(result.codes), result.weight)
    error = lambda What: ((X @ W.T - X @ What.T).norm() / (X @ W.T).norm()).item()  # noqa: E731
    assert error(result.weight) < 0.85 * error(plain(W))  # ≈ 0.7–0.76 over seeds


def test_hessian_aware_handles_dead_inputs():
    X = torch.randn(256, 32)
    X[:, 5] = 0  # an input that never fires
    result = pvq_quantize_weight(torch.randn(8, 32), 6, X.T @ X, group_size=8, amplitude_bits=3)
    assert bool(torch.isfinite(result.weight).all())


# ---- bad input ---------------------------------------------------------------------


def test_bad_input_raises_value_errors():
    for N, K in [(0, 3), (3, 0), (-1, 2), (2, True), (2, 1.5)]:
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            pvq_size(N, K)
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        pvq_nearest(torch.randn(3, 4), 0)
    with pytest.raises(ValueError, match="NaN or inf"):
        pvq_nearest(torch.tensor([[1.0, float("nan")]]), 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        pvq_nearest(torch.tensor([[1.0, float("inf")]]), 2)
    with pytest.raises(ValueError, match="floating point"):
        pvq_nearest(torch.ones(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="shape"):
        pvq_nearest(torch.tensor(1.0), 2)
    with pytest.raises(ValueError, match="integer tensor"):
        pvq_index(torch.randn(2, 3))
    with pytest.raises(ValueError, match="Σ|y_i| = K"):
        pvq_index(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="pass K"):
        pvq_index(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, V\(3, 2\) = 18\)"):
        pvq_point(torch.tensor([[18]]), 3, 2)
    with pytest.raises(ValueError, match="3 words"):
        pvq_point(torch.zeros(2, 1, dtype=torch.long), 64, 64)
    with pytest.raises(ValueError, match="K must be an integer >= 1"):
        PyramidVQ(8, 0)
    with pytest.raises(ValueError, match="group_size must be an integer >= 1"):
        pvq_quantize_weight(torch.randn(3, 8), 4, torch.eye(8), group_size=0)
    with pytest.raises(ValueError, match="multiple of group_size"):
        PyramidVQ(20, 4, group_size=8)
    with pytest.raises(ValueError, match="power-of-2 group_size"):
        PyramidVQ(24, 4, group_size=12, rotate="hadamard")
    with pytest.raises(ValueError, match="amplitude_bits"):
        PyramidVQ(8, 4, amplitude_bits=0)
    with pytest.raises(ValueError, match="rotate must be"):
        PyramidVQ(8, 4, rotate="random")
    q = PyramidVQ(8, 4)
    with pytest.raises(ValueError, match="call fit"):
        q.encode(torch.randn(2, 8))
    q.fit(torch.randn(10, 8))
    with pytest.raises(ValueError, match="expected last dim 8, got 7"):
        q.encode(torch.randn(2, 7))
    with pytest.raises(ValueError, match="NaN or inf"):
        q.encode(torch.full((1, 8), float("nan")))
    with pytest.raises(ValueError, match="W must be"):
        pvq_quantize_weight(torch.randn(8), 4, torch.eye(8), group_size=4)
    with pytest.raises(ValueError, match="H must be"):
        pvq_quantize_weight(torch.randn(3, 8), 4, torch.eye(7), group_size=4)
    with pytest.raises(ValueError, match="H contains NaN"):
        pvq_quantize_weight(torch.randn(3, 8), 4, torch.full((8, 8), float("nan")), group_size=4)
