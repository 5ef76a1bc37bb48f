import math
import random
import re
import warnings

import pytest
import torch

from vqlib.quantizers.codec import Codec, CodesMismatchError, NotFittedError
from vqlib.quantizers.packing import packed_size
from vqlib.quantizers.pvq import (
    PVQCodes,
    PyramidVQ,
    pvq_index,
    pvq_nearest,
    pvq_quantize_weight,
    pvq_size,
)

from .test_pvq_enum import all_points


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


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
    q = PyramidVQ(16, 5, vector_size=8, amplitude_bits=2).fit(torch.randn(100, 16))
    x = torch.randn(4, 16)
    x[1] = 0
    x[2, :8] = 0  # one group of a vector
    out = q(x)
    assert bool((out[1] == 0).all()) and bool((out[2, :8] == 0).all())
    assert bool((out[2, 8:] != 0).any())


# ---- codec -----------------------------------------------------------------


@pytest.mark.parametrize("rotate", ["hadamard", None])
def test_codec_round_trip_and_sizes(rotate):
    dim, group, K, bits = 48 if rotate is None else 64, 16, 12, 5
    x = torch.randn(300, dim)
    q = PyramidVQ(dim, K, vector_size=group, amplitude_bits=bits, rotate=rotate).fit(x)
    codes = q.encode(x[:7])
    groups, L = dim // group, (pvq_size(group, K) - 1).bit_length()
    assert L == math.ceil(math.log2(pvq_size(group, K)))
    assert isinstance(codes, PVQCodes) and codes.index.dtype == torch.uint8
    assert codes.code_size == packed_size(groups * L, 1) + packed_size(groups, bits)
    assert codes.nbytes == 7 * codes.code_size
    assert q.information_bits_per_weight == (math.log2(pvq_size(group, K)) + bits) / group
    assert q.code_size == codes.code_size and q.bits_per_weight == 8 * codes.code_size / dim
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
    q = PyramidVQ(32, 512, vector_size=16, amplitude_bits=12, rotate=rotate).fit(x)
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


def test_codec_contract():
    x = torch.randn(200, 32)
    q = PyramidVQ(32, 9, vector_size=16, amplitude_bits=4)
    assert isinstance(q, Codec) and not q.is_fitted
    assert q.code_dim == 32 and q.code_size == packed_size(2 * q.index_bits, 1) + packed_size(2, 4)
    for call in (lambda: q.encode(x), lambda: q.decode(PVQCodes(torch.zeros(1, 5, dtype=torch.uint8),
                                                                torch.zeros(1, 1, dtype=torch.uint8)))):  # fmt: skip
        with pytest.raises(NotFittedError, match=re.escape("PyramidVQ is not fitted: call fit(x) first")):
            call()
    assert q.fit(x) is q and q.is_fitted
    assert q.bits_per_weight == q.bits_per_dim == 8 * q.code_size / 32
    # whole bytes per vector ≥ whole bits per sub-vector ≥ the information content
    assert q.bits_per_weight >= q.stored_bits_per_weight > q.information_bits_per_weight


def test_codes_from_another_codec_are_refused():
    x = torch.randn(50, 32)
    q = PyramidVQ(32, 9, vector_size=16, amplitude_bits=4).fit(x)
    other = PyramidVQ(32, 30, vector_size=16, amplitude_bits=4).fit(x)  # more pulses: longer ranks
    with pytest.raises(CodesMismatchError, match=r"not produced by this PyramidVQ \(index has \d+ bytes per vector"):
        q.decode(other.encode(x[:3]))
    with pytest.raises(CodesMismatchError, match=r"amplitude has 2 bytes per vector, this one writes 1"):
        q.decode(PyramidVQ(32, 9, vector_size=16, amplitude_bits=5).fit(x).encode(x[:3]))
    with pytest.raises(CodesMismatchError, match="expected PVQCodes, got Tensor"):
        q.decode(torch.zeros(3, 5, dtype=torch.uint8))
    with pytest.raises(CodesMismatchError, match="index must be a uint8 tensor"):
        codes = q.encode(x[:3])
        q.decode(PVQCodes(codes.index.long(), codes.amplitude))
    # the right byte counts but ranks beyond V(16, 9): codes of another pyramid
    codes = q.encode(x[:3])
    assert pvq_size(16, 9) < 2**q.index_bits - 1
    with pytest.raises(CodesMismatchError, match=r"index must be in \[0, V\(16, 9\).*other pulses or vector_size"):
        q.decode(PVQCodes(torch.full_like(codes.index, 255), codes.amplitude))


def test_coding_space_surface():
    x = torch.randn(6, 32, dtype=torch.float64)
    for rotate in ("hadamard", None):
        q = PyramidVQ(32, 9, vector_size=8, rotate=rotate, seed=1)
        z = q.to_coding_space(x)
        assert z.dtype == x.dtype and z.shape == x.shape
        torch.testing.assert_close(z.reshape(6, 4, 8).norm(dim=-1), x.reshape(6, 4, 8).norm(dim=-1))
        torch.testing.assert_close(q.from_coding_space(z), x)
        assert torch.equal(z, x) == (rotate is None)
        with pytest.raises(NotFittedError):
            q.quantize_subvectors(z.reshape(-1, 8))
        q.fit(x.float())
        y, amp, deq = q.quantize_subvectors(z.reshape(-1, 8))
        assert torch.equal(y.abs().sum(-1), torch.full((24,), 9)) and deq.dtype == torch.float32
        # encode takes the same steps (in float32): its ranks and gain codes are those of quantize_subvectors
        y, amp, _ = q.quantize_subvectors(q.to_coding_space(x.float()).reshape(-1, 8))
        index, codes_amp = q.unpack(q.encode(x.float()))
        assert torch.equal(index.reshape(24, -1), pvq_index(y, 9)) and torch.equal(codes_amp.reshape(24), amp)
        with pytest.raises(ValueError, match="expected sub-vectors of vector_size 8, got shape"):
            q.quantize_subvectors(z)


def test_state_decodes_identically_across_seeds():
    x = torch.randn(100, 32)
    q = PyramidVQ(32, 9, vector_size=16, amplitude_bits=4, rotate="hadamard", seed=0).fit(x)
    codes = q.encode(x)
    other = PyramidVQ(32, 9, vector_size=16, amplitude_bits=4, rotate="hadamard", seed=7)
    assert not torch.equal(other.signs, q.signs)  # another seed draws other signs
    other.load_state_dict(q.state_dict())
    assert torch.equal(other.signs, q.signs) and other.is_fitted
    assert torch.equal(other.decode(codes), q.decode(codes))
    encoded = other.encode(x)
    assert torch.equal(encoded.index, codes.index) and torch.equal(encoded.amplitude, codes.amplitude)


def test_state_without_or_with_damaged_signs_is_refused():
    x = torch.randn(100, 32)
    q = PyramidVQ(32, 9, vector_size=16, rotate="hadamard").fit(x)
    state = {k: v for k, v in q.state_dict().items() if k != "signs"}  # as saved before the signs were stored
    other = PyramidVQ(32, 9, vector_size=16, rotate="hadamard", seed=7)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(RuntimeError, match="'signs' is missing: the state holds no rotation signs"):
        other.load_state_dict(state)
    damaged = {**q.state_dict(), "signs": q.signs * 0.5}
    with pytest.raises(RuntimeError, match=r"'signs' must hold only \+1 and -1"):
        other.load_state_dict(damaged)
    # nothing was half-loaded
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    # without a rotation the signs are unused: such a state loads and decodes as the original
    plain = PyramidVQ(32, 9, vector_size=16).fit(x)
    unrotated = PyramidVQ(32, 9, vector_size=16, seed=7)
    unrotated.load_state_dict({k: v for k, v in plain.state_dict().items() if k != "signs"})
    assert torch.equal(unrotated(x), plain(x))


@pytest.mark.parametrize("fitted", [True, False])
def test_save_pretrained_round_trip(tmp_path, fitted):
    x = torch.randn(100, 32)
    q = PyramidVQ(32, 9, vector_size=16, amplitude_bits=4, rotate="hadamard", seed=3)
    if fitted:
        q.fit(x)
    q.save_pretrained(tmp_path)
    loaded = PyramidVQ.from_pretrained(tmp_path)
    assert type(loaded) is PyramidVQ and loaded.config == q.config
    assert loaded.config["init_args"]["pulses"] == 9 and loaded.config["init_args"]["vector_size"] == 16
    assert loaded.is_fitted == fitted and torch.equal(loaded.signs, q.signs)
    if fitted:
        codes = q.encode(x)
        assert torch.equal(loaded.encode(x).index, codes.index)
        assert torch.equal(loaded.decode(codes), q.decode(codes))
    else:
        with pytest.raises(NotFittedError):
            loaded.encode(x)


def test_group_size_is_a_deprecated_name_of_vector_size(tmp_path):
    with pytest.warns(DeprecationWarning, match="group_size= is deprecated; use vector_size="):
        old = PyramidVQ(32, 9, group_size=16)
    assert old.vector_size == 16 and old.config == PyramidVQ(32, 9, vector_size=16).config
    assert "group_size" not in old.config["init_args"]
    old.fit(torch.randn(50, 32)).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved config uses the new name: loading does not warn
        assert PyramidVQ.from_pretrained(tmp_path).vector_size == 16
    with pytest.raises(ValueError, match="pass vector_size only: group_size is its deprecated name"):
        with pytest.warns(DeprecationWarning):
            PyramidVQ(32, 9, vector_size=16, group_size=16)
    W, H = torch.randn(4, 16), torch.eye(16)
    with pytest.warns(DeprecationWarning, match="group_size= is deprecated"):
        old = pvq_quantize_weight(W, 5, H, group_size=8, amplitude_bits=3)
    assert torch.equal(old.weight, pvq_quantize_weight(W, 5, H, vector_size=8, amplitude_bits=3).weight)


# ---- Hessian-aware weights ------------------------------------------------------------


@pytest.mark.parametrize("rotate", [None, "hadamard"])
def test_hessian_aware_beats_plain_pvq(rotate):
    torch.manual_seed(0)
    n, d_in, d_out = 2048, 64, 48
    # strongly correlated inputs: a few latent factors plus a little noise, uneven scales
    X = torch.randn(n, 6) @ torch.randn(6, d_in) + 0.1 * torch.randn(n, d_in)
    X = X * torch.linspace(0.5, 2.0, d_in)
    W = torch.randn(d_out, d_in)
    result = pvq_quantize_weight(W, 8, X.T @ X, vector_size=16, amplitude_bits=4, rotate=rotate)
    plain = PyramidVQ(d_in, 8, vector_size=16, amplitude_bits=4, rotate=rotate).fit(W)
    assert result.quantizer.bits_per_weight == plain.bits_per_weight
    assert result.weight.shape == W.shape
    assert torch.equal(result.quantizer.decode(result.codes), result.weight)
    error = lambda What: ((X @ W.T - X @ What.T).norm() / (X @ W.T).norm()).item()  # noqa: E731
    assert error(result.weight) < 0.85 * error(plain(W))  # ≈ 0.7–0.76 over seeds


def test_hessian_aware_with_identity_hessian_is_plain_pvq():
    # no correlation between inputs, nothing to compensate: the error feedback moves nothing
    W = torch.randn(12, 32)
    result = pvq_quantize_weight(W, 7, torch.eye(32), vector_size=8, amplitude_bits=4)
    assert torch.equal(result.weight, PyramidVQ(32, 7, vector_size=8, amplitude_bits=4).fit(W)(W))


def test_hessian_aware_handles_dead_inputs():
    X = torch.randn(256, 32)
    X[:, 5] = 0  # an input that never fires
    result = pvq_quantize_weight(torch.randn(8, 32), 6, X.T @ X, vector_size=8, amplitude_bits=3)
    assert bool(torch.isfinite(result.weight).all())


# ---- bad input ---------------------------------------------------------------------


def test_bad_input_raises_value_errors():
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
    with pytest.raises(ValueError, match="pulses must be an integer >= 1"):
        PyramidVQ(8, 0)
    with pytest.raises(ValueError, match="vector_size must be an integer >= 1"):
        pvq_quantize_weight(torch.randn(3, 8), 4, torch.eye(8), vector_size=0)
    with pytest.raises(ValueError, match="multiple of vector_size"):
        PyramidVQ(20, 4, vector_size=8)
    with pytest.raises(ValueError, match="power-of-2 vector_size"):
        PyramidVQ(24, 4, vector_size=12, rotate="hadamard")
    with pytest.raises(ValueError, match="amplitude_bits"):
        PyramidVQ(8, 4, amplitude_bits=0)
    with pytest.raises(ValueError, match="rotate must be"):
        PyramidVQ(8, 4, rotate="random")
    q = PyramidVQ(8, 4)
    with pytest.raises(NotFittedError, match=re.escape("PyramidVQ is not fitted: call fit(x) first")):
        q.encode(torch.randn(2, 8))
    q.fit(torch.randn(10, 8))
    with pytest.raises(ValueError, match="expected last dim 8, got 7"):
        q.encode(torch.randn(2, 7))
    with pytest.raises(ValueError, match="NaN or inf"):
        q.encode(torch.full((1, 8), float("nan")))
    with pytest.raises(ValueError, match="W must be"):
        pvq_quantize_weight(torch.randn(8), 4, torch.eye(8), vector_size=4)
    with pytest.raises(ValueError, match="H must be"):
        pvq_quantize_weight(torch.randn(3, 8), 4, torch.eye(7), vector_size=4)
    with pytest.raises(ValueError, match="H contains NaN"):
        pvq_quantize_weight(torch.randn(3, 8), 4, torch.full((8, 8), float("nan")), vector_size=4)
