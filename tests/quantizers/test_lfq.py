import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vqlib.quantizers import LFQ, Quantizer
from vqlib.quantizers.lfq import binary_entropy_loss


def test_codes_are_signs_and_indices_their_bits():
    q = LFQ(codebook_size=2**5).eval()
    x = torch.randn(100, 5)
    out = q(x)
    assert torch.equal(out.quantized, torch.where(x > 0, 1.0, -1.0))
    assert torch.equal(out.indices, ((x > 0).long() * 2 ** torch.arange(5)).sum(-1))
    # decoding every index gives every sign pattern once
    all_codes = q.decode(torch.arange(32))
    assert len(torch.unique(all_codes, dim=0)) == 32 and set(all_codes.flatten().tolist()) == {-1.0, 1.0}


def test_large_implicit_codebook_is_never_materialised():
    q = LFQ(codebook_size=2**48).eval()
    x = torch.randn(7, 48)
    idx = q.encode(x)
    assert idx.dtype == torch.int64 and int(idx.max()) < 2**48
    assert torch.equal(q.decode(idx), torch.where(x > 0, 1.0, -1.0))
    with pytest.raises(ValueError, match="materialise"):
        q.codebook  # noqa: B018


def _brute_force_entropies(logits):
    """Per-sample and codebook entropy over all 2^d codes, from the product distribution."""
    n, d = logits.shape
    codes = torch.tensor(list(itertools.product([0, 1], repeat=d)), dtype=torch.float64)
    p = torch.sigmoid(logits.double())
    q = (p[:, None, :] ** codes * (1 - p[:, None, :]) ** (1 - codes)).prod(-1)  # (n, 2^d)
    h = lambda t: -(t * t.clamp_min(1e-300).log()).sum(-1)  # noqa: E731
    return h(q).mean(), h(q.mean(0))


def test_entropy_terms_against_brute_force():
    torch.manual_seed(0)
    logits = torch.randn(64, 1, 5) * 2
    per_sample, codebook = _brute_force_entropies(logits[:, 0])
    exact = binary_entropy_loss(logits, "exact", diversity=1.0)
    torch.testing.assert_close(exact.double(), per_sample - codebook, atol=1e-5, rtol=0)
    only_sample = binary_entropy_loss(logits, "exact", diversity=0.0)
    torch.testing.assert_close(only_sample.double(), per_sample, atol=1e-5, rtol=0)
    # the factorised codebook entropy is the sum of the marginals' entropies, an upper bound of the joint one
    factorized = binary_entropy_loss(logits, "factorized", diversity=1.0)
    assert float(factorized) <= float(exact) + 1e-6


def test_loss_weights_and_temperature():
    torch.manual_seed(0)
    x = torch.randn(32, 4, requires_grad=True)
    q = LFQ(codebook_size=16, entropy_weight=0.3, diversity=0.5, commitment_weight=0.1, temperature=0.5)
    out = q(x)
    codes = torch.where(x > 0, 1.0, -1.0)
    expected = 0.1 * F.mse_loss(x, codes) + 0.3 * binary_entropy_loss((4 / 0.5) * x[:, None, :], diversity=0.5)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert x.grad.abs().sum() > 0


def test_codebook_entropy_spreads_a_collapsed_batch():
    """Gradient descent on the penalty spreads a batch whose vectors nearly all share one code."""
    torch.manual_seed(0)
    z = (torch.randn(256, 6) * 0.02 + 0.05).requires_grad_(True)  # nearly every vector on code 63
    q = LFQ(codebook_size=64, commitment_weight=0.0, entropy_weight=1.0, temperature=0.1)
    opt = torch.optim.SGD([z], lr=0.01)
    before = len(q.encode(z).unique())
    for _ in range(300):
        opt.zero_grad()
        q(z).loss.backward()
        opt.step()
    assert before < 10 and len(q.encode(z).unique()) > 30


def test_num_codebooks_and_projection_round_trip(tmp_path):
    torch.manual_seed(0)
    q = LFQ(10, 2**4, num_codebooks=2)
    x = torch.randn(9, 10)
    out = q(x)
    assert out.indices.shape == (9, 2) and q.bits_per_index == 8
    (out.quantized.sum() + out.loss).backward()
    assert q.project_in.weight.grad.abs().sum() > 0
    q.save_pretrained(tmp_path)
    loaded = Quantizer.from_pretrained(tmp_path)
    q.eval()
    assert torch.equal(loaded(x).quantized, q(x).quantized)


def test_empty_batch_loss_is_zero():
    q = LFQ(codebook_size=16)
    assert float(q(torch.randn(0, 4)).loss) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="power of two"):
        LFQ(codebook_size=48)
    with pytest.raises(ValueError, match="power of two"):
        LFQ(codebook_size=2**63)
    with pytest.raises(ValueError, match="factorized"):
        LFQ(codebook_size=2**20, codebook_entropy="exact")
    with pytest.raises(ValueError, match="codebook_entropy"):
        LFQ(codebook_size=16, codebook_entropy="joint")
    with pytest.raises(ValueError, match="temperature"):
        LFQ(codebook_size=16, temperature=0.0)
    assert math.log2(LFQ(codebook_size=2**62).codebook_size) == 62
