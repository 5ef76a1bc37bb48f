"""Gradient estimators through the non-differentiable code choice.

Both return the code bit-exactly in the forward pass (so ``decode(encode(x))``
equals ``forward(x)``) and differ only in the gradient they send to ``z``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ESTIMATORS", "GRADIENTS", "RotationTrick", "StraightThrough"]


class StraightThrough(torch.autograd.Function):
    """Forward returns ``codes`` bit-exactly; the gradient passes to ``z`` unchanged.

    ``z + (codes − z).detach()`` would carry the same gradient but round the
    forward value, breaking ``decode(encode(x)) == forward(x)``.
    """

    @staticmethod
    def forward(ctx, z, codes):
        return codes.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class RotationTrick(torch.autograd.Function):
    """Rotation trick (Fifty et al. 2024, arXiv 2410.06424).

    Forward returns ``codes``; backward sends the gradient through the fixed map
    ``λ R`` that takes ``z`` onto ``codes``: ``R = I − 2 w wᵀ + 2 q̂ ẑᵀ`` with
    ``ẑ = z/‖z‖``, ``q̂ = q/‖q‖``, ``w = (ẑ + q̂)/‖ẑ + q̂‖`` and ``λ = ‖q‖/‖z‖``, so
    ``∂L/∂z = λ Rᵀ g = λ (g − 2 w (wᵀg) + 2 ẑ (q̂ᵀg))``.
    """

    @staticmethod
    def forward(ctx, z, codes):
        ctx.save_for_backward(z, codes)
        return codes.clone()

    @staticmethod
    def backward(ctx, grad):
        z, q = ctx.saved_tensors
        eps = 1e-6
        z_norm = z.norm(dim=-1, keepdim=True).clamp_min(eps)
        q_norm = q.norm(dim=-1, keepdim=True).clamp_min(eps)
        z_hat, q_hat = z / z_norm, q / q_norm
        w = F.normalize(z_hat + q_hat, dim=-1, eps=eps)
        g = grad.to(z.dtype)
        rt_g = g - 2 * w * (w * g).sum(-1, keepdim=True) + 2 * z_hat * (q_hat * g).sum(-1, keepdim=True)
        return (q_norm / z_norm) * rt_g, None


ESTIMATORS = {"ste": StraightThrough, "rotation": RotationTrick}
GRADIENTS = tuple(ESTIMATORS)
