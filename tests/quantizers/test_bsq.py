import math

import pytest
import torch
import torch.nn.functional as F

from vqlib.quantizers import BSQ, Quantizer
from vqlib.quantizers.lfq import binary_entropy_loss


def test_codes_are_unit_corners_and_scale_free():
    torch.manual_seed(0)
    q = BSQ(codebook_size=2**8).eval()
    x = torch.randn(200, 8)
    out = q(x)
    torch.testing.assert_close(out.quantized.norm(dim=-1), torch.ones(200))
    assert torch.equal(out.quantized, torch.where(x > 0, 1.0, -1.0) / math.sqrt(8))
    assert torch.equal(q.encode(x * 37.0), out.indices), "the index depends on the direction only"
    # bounded error on the sphere whatever the input norm
    u = F.normalize(x, dim=-1)
    assert float((out.quantized - u).norm(dim=-1).max()) < math.sqrt(2 - 2 / math.sqrt(8))


def test_gradient_goes_through_the_normalisation():
    torch.manual_seed(0)
    q = BSQ(codebook_size=2**6, entropy_weight=0.0, commitment_weight=0.0)
    x = torch.randn(5, 6, requires_grad=True)
    g = torch.randn(5, 6)
    (q(x).quantized * g).sum().backward()
    # straight through to u = x/‖x‖, then the Jacobian of the normalisation (orthogonal to x)
    u = F.normalize(x.detach(), dim=-1)
    expected = (g - (g * u).sum(-1, keepdim=True) * u) / x.detach().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(x.grad, expected)


def test_loss_uses_the_sphere_temperature():
    torch.manual_seed(0)
    q = BSQ(codebook_size=16, temperature=0.05)
    x = torch.randn(20, 4, requires_grad=True)
    u = F.normalize(x, dim=-1)
    codes = torch.where(u > 0, 0.5, -0.5)
    expected = 0.25 * F.mse_loss(u, codes) + 0.1 * binary_entropy_loss((4 * 0.5 / 0.05) * u[:, None, :])
    torch.testing.assert_close(q(x).loss, expected)


def test_int64_indices_for_large_codebooks_and_round_trip(tmp_path):
    q = BSQ(64, 2**40).eval()
    x = torch.randn(3, 64)
    idx = q.encode(x)
    assert idx.dtype == torch.int64 and int(idx.max()) < 2**40
    assert torch.equal(q.decode(idx), q(x).quantized)
    q.save_pretrained(tmp_path)
    assert torch.equal(Quantizer.from_pretrained(tmp_path)(x).quantized, q(x).quantized)


def test_bad_arguments():
    with pytest.raises(ValueError, match="power of two"):
        BSQ(codebook_size=1000)
    with pytest.raises(ValueError, match="expected last dim 6"):
        BSQ(codebook_size=64)(torch.randn(2, 5))
