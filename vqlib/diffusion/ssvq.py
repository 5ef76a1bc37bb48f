"""SSVQ: sign-splitting vector quantization (Li et al., ICCV 2025, arXiv 2503.08668).

Plain VQ fine-tuning moves every weight sharing a codeword in the same direction, so a few
large gradients decide for the whole cluster. SSVQ splits each weight into its sign and its
magnitude, ``W = S ⊙ |W|``: k-means clusters the magnitudes only, and the sign of each weight
becomes a learnable latent ``θ`` read through ``sign(θ)`` with a straight-through estimator
(gradient of ``sign`` taken as 1), so each weight can move along its own gradient by flipping:

    Ŵ[n, j·v + t] = s_n · sign(θ[n, j·v + t]) · C[a[n, j], t],   C ≥ 0.

Calibration fine-tunes the codebook, the row scales and the latent signs against each
block's full-precision output. Signs that keep flipping destabilise training, so SSVQ freezes
them progressively: an EMA of each sign's flips (momentum ``m``) above a threshold annealed
from ``freeze_start`` to ``freeze_end`` freezes that sign to the side its EMA of values leans
to. Stored: codes of magnitudes plus one packed sign bit per weight (VQLinear's sign option).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kmeans_vq import KMeansInit, to_vq_linear

__all__ = ["SignSplitLinear", "sign_ste"]


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta):
        return torch.where(theta < 0, -1.0, 1.0).to(theta.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def sign_ste(theta: torch.Tensor) -> torch.Tensor:
    """``±1`` (−1 where ``θ < 0``, +1 elsewhere, exactly) with the straight-through gradient."""
    return _SignSTE.apply(theta)


class SignSplitLinear(nn.Module):
    """A linear layer during SSVQ calibration: magnitude codebook, fixed codes, learnable latent signs."""

    def __init__(self, linear: nn.Linear, init: KMeansInit, flip_momentum: float = 0.9,
                 freeze_start: float = 0.5, freeze_end: float = 0.05):  # fmt: skip
        super().__init__()
        if init.neg is None:
            raise ValueError("SSVQ needs a sign-split k-means start (kmeans_init(..., signs=True))")
        if not 0 <= flip_momentum < 1:
            raise ValueError(f"flip_momentum must be in [0, 1), got {flip_momentum}")
        self._source = [linear]  # a plain list: the FP layer is not a submodule (its weight never trains)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.momentum, self.freeze_start, self.freeze_end = flip_momentum, freeze_start, freeze_end
        self.codebook = nn.Parameter(init.codebook.clone().float())
        self.register_buffer("codes", init.codes.clone())
        self.scales = nn.Parameter(init.scales.clone().float()) if init.scales is not None else None
        self.theta = nn.Parameter(init.normalised.clone())  # sign(θ) = sign(W) at the start
        self.register_buffer("frozen", torch.zeros_like(init.neg))
        self.register_buffer("frozen_neg", init.neg.clone())
        self.register_buffer("flip_rate", torch.zeros_like(self.theta, dtype=torch.float32))
        self.register_buffer("sign_ema", torch.where(init.neg, -1.0, 1.0))
        self.register_buffer("last_neg", init.neg.clone())

    @property
    def bias(self) -> torch.Tensor | None:
        return self._source[0].bias

    def negative(self) -> torch.Tensor:
        """``(N, D)`` bool: the current sign decisions (frozen ones as frozen), True where negative."""
        return torch.where(self.frozen, self.frozen_neg, self.theta.detach() < 0)

    def weight(self) -> torch.Tensor:
        frozen_sign = torch.where(self.frozen_neg, -1.0, 1.0)
        sign = torch.where(self.frozen, frozen_sign, sign_ste(self.theta))
        mags = self.codebook[self.codes].reshape(self.out_features, self.in_features)
        w = sign * mags
        return w * self.scales[:, None] if self.scales is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.detach().to(x.dtype))

    def regulariser(self) -> torch.Tensor:
        return self.codebook.new_zeros(())

    def param_groups(self, config) -> list[dict]:
        groups = [{"params": [self.codebook], "lr": config.lr_codebook}, {"params": [self.theta], "lr": config.lr_signs}]
        if self.scales is not None:
            groups.append({"params": [self.scales], "lr": config.lr_scales})
        return groups

    def threshold(self, step: int, steps: int) -> float:
        """The freezing threshold at ``step``: cosine from ``freeze_start`` down to ``freeze_end``."""
        t = step / max(steps - 1, 1)
        return self.freeze_end + 0.5 * (self.freeze_start - self.freeze_end) * (1 + math.cos(math.pi * t))

    @torch.no_grad()
    def after_step(self, step: int, steps: int) -> int:
        """Magnitudes and scales stay non-negative; track flips; freeze oscillating signs. Returns how many froze now."""
        self.codebook.clamp_(min=0)
        if self.scales is not None:  # a negative scale would flip a whole row behind the stored signs' back
            self.scales.clamp_(min=torch.finfo(torch.float16).tiny)
        neg = self.theta < 0
        flipped = (neg != self.last_neg) & ~self.frozen
        self.last_neg.copy_(neg)
        m = self.momentum
        self.flip_rate.mul_(m).add_(flipped.float(), alpha=1 - m)
        self.sign_ema.mul_(m).add_(torch.where(neg, -1.0, 1.0), alpha=1 - m)
        new = (self.flip_rate > self.threshold(step, steps)) & ~self.frozen
        self.frozen_neg[new] = self.sign_ema[new] < 0
        self.frozen |= new
        return int(new.sum())

    @torch.no_grad()
    def to_module(self, config) -> nn.Module:
        return to_vq_linear(self._source[0], self.codebook.clamp(min=0), self.codes, self.scales, self.negative(),
                            config.codebook_dtype, config.scales_dtype)  # fmt: skip
