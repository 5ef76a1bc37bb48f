"""Finite scalar quantization (FSQ) and iFSQ.

FSQ: Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple",
arXiv 2309.15505. Each of the ``len(levels)`` channels is bounded and rounded
to ``L_i`` levels; the implicit codebook is the grid ``∏ L_i``:

    f(z) = tanh(z + s)·h − o,  h = (L−1)(1+ε)/2,  ε = 1e-3,
    o = 0.5 (even L) or 0 (odd L),  s = atanh(o/h)
    ẑ = round_ste(f(z)) / ⌊L/2⌋

iFSQ: "iFSQ", arXiv 2601.17124. The tanh bound squeezes a Gaussian input into
the outer levels; ``f(z) = (2σ(1.6 z) − 1)·(L−1)/2`` spreads it nearly evenly
over the levels, so the grid is used nearly uniformly. It needs odd ``L`` (no
offset), e.g. ``L = 2^k + 1``; the paper's choice is ``[17, 17, 17, 17]``.

Indices are mixed-radix int64 ``Σ_i (r_i + ⌊L_i/2⌋)·∏_{j<i} L_j``; nothing of
size ``∏ L_i`` is allocated unless ``codebook`` is asked for.
"""

from __future__ import annotations

import math

import torch

from .base import Quantizer

__all__ = ["FSQ", "BOUNDS"]

BOUNDS = ("tanh", "ifsq")


class FSQ(Quantizer):
    """Finite scalar quantizer.

    Args:
        levels: levels per channel, e.g. ``[8, 5, 5, 5]``.
        dim: input feature size; defaults to ``len(levels) · num_codebooks``
            (projections are added otherwise).
        num_codebooks: factorised groups, each of ``len(levels)`` channels with
            its own index.
        bound: ``"tanh"`` (FSQ) or ``"ifsq"`` (iFSQ, odd levels only).
    """

    def __init__(
        self,
        levels: list[int],
        dim: int | None = None,
        num_codebooks: int = 1,
        bound: str = "tanh",
        channel_first: bool = False,
        gradient: str = "ste",
        check_finite: bool = True,
    ):
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels}")
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
        if bound == "ifsq" and any(level % 2 == 0 for level in levels):
            raise ValueError(f"bound='ifsq' needs odd levels (e.g. 2^k + 1 such as 17), got {levels}")
        if num_codebooks < 1:
            raise ValueError(f"num_codebooks must be >= 1, got {num_codebooks}")
        size = math.prod(levels)
        if size >= 2**62:
            raise ValueError(f"the grid has {size} codes, more than int64 indices can address")
        super().__init__(
            dim or len(levels) * num_codebooks,
            len(levels),
            size,
            num_codebooks=num_codebooks,
            channel_first=channel_first,
            gradient=gradient,
            check_finite=check_finite,
        )
        self.levels = levels
        self.bound = bound
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_half", torch.floor(lv / 2), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.int64), 0)
        self.register_buffer("_basis", basis, persistent=False)

    def _bounded(self, z: torch.Tensor) -> torch.Tensor:
        lv = self._levels
        if self.bound == "ifsq":
            return (2 * torch.sigmoid(1.6 * z) - 1) * (lv - 1) / 2
        eps = 1e-3
        h = (lv - 1) * (1 + eps) / 2
        o = torch.where(lv % 2 == 0, 0.5, 0.0)
        return torch.tanh(z + torch.atanh(o / h)) * h - o

    def _quantize(self, z: torch.Tensor):
        f = self._bounded(z)
        r = torch.round(f)
        digits = (r + self._half).long().clamp_(min=0)
        digits = torch.minimum(digits, self._basis.new_tensor(self.levels) - 1)
        idx = (digits * self._basis).sum(-1)
        loss = z.new_zeros(())
        # codes from the digits, exactly as _lookup computes them
        return f / self._half, (digits.float() - self._half) / self._half, idx, loss

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        flat = indices.reshape(-1, 1)
        digits = (flat // self._basis) % self._basis.new_tensor(self.levels)
        return (digits.float() - self._half) / self._half

    def _effective_codebook(self) -> torch.Tensor:
        return self._lookup(torch.arange(self.codebook_size, device=self._basis.device).unsqueeze(-1))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, dim={self.dim}, num_codebooks={self.num_codebooks}, bound={self.bound!r}"
