"""Straight-through and rotation-trick gradients (base.py)."""

import torch
import torch.nn.functional as F

from vqlib.quantizers import VectorQuantizer


def test_straight_through_passes_gradient_unchanged():
    q = VectorQuantizer(6, 16, codebook_update="frozen")
    x = torch.randn(30, 6, requires_grad=True)
    g = torch.randn(30, 6)
    (q(x).quantized * g).sum().backward()
    torch.testing.assert_close(x.grad, g)


def test_rotation_trick_gradient_is_scaled_rotation():
    torch.manual_seed(0)
    q = VectorQuantizer(6, 16, codebook_update="frozen", gradient="rotation")
    x = torch.randn(30, 6, requires_grad=True)
    out = q(x)
    codes = q.codebook[out.indices]
    assert torch.equal(out.quantized, codes)  # the forward value is the code, exactly
    g = torch.randn(30, 6)
    (out.quantized * g).sum().backward()
    # reference: autograd through the explicit rotation λ R x with λ, R constant
    e = x.detach().double().requires_grad_()
    zh, qh = F.normalize(e.detach(), dim=-1), F.normalize(codes.double(), dim=-1)
    w = F.normalize(zh + qh, dim=-1)
    lam = codes.double().norm(dim=-1, keepdim=True) / e.detach().norm(dim=-1, keepdim=True)
    rotated = e - 2 * w * (w * e).sum(-1, keepdim=True) + 2 * qh * (zh * e).sum(-1, keepdim=True)
    torch.testing.assert_close(lam * rotated, codes.double(), rtol=1e-5, atol=1e-5)  # R maps x onto the code
    (lam * rotated * g.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), e.grad, rtol=1e-5, atol=1e-5)
    # a rotation preserves the gradient's norm up to the scale λ
    torch.testing.assert_close(x.grad.norm(dim=-1), (lam.squeeze(-1) * g.double().norm(dim=-1)).float(), rtol=1e-4, atol=1e-5)
