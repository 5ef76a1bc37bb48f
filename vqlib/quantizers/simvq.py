"""SimVQ: vector quantization with a linearly reparameterised codebook.

Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized
Models with One Linear Layer", arXiv 2411.02038.

A frozen random basis ``C ∈ R^{K×d}``, ``C ~ N(0, 1/d)``, and a learned
``Linear(d, d)`` with bias ``(W, b)`` give the codebook ``E = C Wᵀ + b``,
recomputed at every step. Because every code moves with the shared ``W``, no
code can be left behind by the updates: the codebook does not collapse.

Loss: ``β‖sg(z_q) − z‖² + ‖z_q − sg(z)‖²`` with β = 0.25; the second term is the
only one that reaches ``W`` and ``b``. Straight-through (or rotation-trick)
gradient to the encoder. ``decode`` applies ``W`` too (the official code's
decode-from-indices returns the unprojected basis).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .generated import GeneratedCodebookQuantizer

__all__ = ["SimVQ"]


class SimVQ(GeneratedCodebookQuantizer):
    """SimVQ quantizer.

    Args:
        dim: input feature size.
        codebook_size: number of codes K.
        codebook_dim: code size d; projections are added when it differs from ``dim``.
        beta: commitment weight β.
        seed: seed of the frozen basis (it is also saved in the state dict).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        beta: float = 0.25,
        channel_first: bool = False,
        gradient: str = "ste",
        check_finite: bool = True,
        seed: int = 0,
    ):
        super().__init__(dim, codebook_dim or dim, codebook_size, channel_first=channel_first, gradient=gradient, check_finite=check_finite)
        d = self.codebook_dim
        basis = torch.randn(codebook_size, d, generator=torch.Generator().manual_seed(seed)) * d**-0.5
        self.register_buffer("basis", basis)
        self.codebook_proj = nn.Linear(d, d)
        self.beta = beta

    def _effective_codebook(self) -> torch.Tensor:
        proj = self.codebook_proj
        return self._cached("codebook", (proj.weight, proj.bias, self.basis), lambda: proj(self.basis.float()))
