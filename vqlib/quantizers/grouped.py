"""Grouped quantization: the feature vector split into groups, each with its own quantizer.

As in vector-quantize-pytorch's ``GroupedResidualVQ`` and the group-wise
codebooks of HiFi-Codec (Yang et al. 2023, arXiv 2305.02765) and MGVQ
(arXiv 2507.07997): with ``z = [z_1; …; z_G]``, ``z_g ∈ R^{dim/G}``,

    ẑ = [Q_1(z_1); …; Q_G(z_G)],   loss = Σ_g loss_g

so the code space is the product of the groups' codebooks (``K^G`` codes from
``G·K`` stored vectors). Each group is any vqlib quantizer, a
:class:`~vqlib.quantizers.residual.ResidualQuantizer` included (grouped residual
quantization). Indices are ``(..., G·m)``, group-major, where ``m`` is the
number of indices one group gives (1, or ``num_quantizers`` for a residual
group).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Quantizer, QuantizerOutput, Usage
from .distributed import all_reduce_sum
from .residual import build_quantizer, usage_from_counts

__all__ = ["GroupedQuantizer"]


class GroupedQuantizer(Quantizer):
    """The feature dimension split into ``groups`` equal parts, each quantized by its own quantizer.

    Args:
        dim: input feature size, divisible by ``groups``.
        quantizer: the group quantizer as a template instance or its config dict;
            its ``dim`` must be ``dim // groups``. Every group is built from its
            config (fresh weights; a ``seed`` argument is offset per group).
        groups: number of groups G.
    """

    def __init__(
        self,
        dim: int,
        quantizer: Quantizer | dict,
        groups: int = 2,
        channel_first: bool = False,
        check_finite: bool = True,
    ):
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        if dim % groups:
            raise ValueError(f"dim {dim} is not divisible by groups {groups}")
        parts = [build_quantizer(quantizer, "quantizer", seed_offset=g, check_finite=False) for g in range(groups)]
        first = parts[0]
        if first.dim != dim // groups:
            raise ValueError(f"each group quantizer must take dim // groups = {dim // groups} features, got dim={first.dim}")
        # the wrapper itself never projects: its codebook_dim is a group's width
        super().__init__(dim, dim // groups, first.codebook_size, num_codebooks=groups, channel_first=channel_first,
                         gradient=first.gradient, check_finite=check_finite)
        self.groups = groups
        self.indices_per_group = first.num_codebooks
        self.num_codebooks = groups * first.num_codebooks
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        lead, z = self._prepare(x)
        outs = [q(chunk) for q, chunk in zip(self.parts, z.chunk(self.groups, -1))]
        quantized = torch.cat([o.quantized for o in outs], -1)
        loss = sum((o.loss for o in outs[1:]), outs[0].loss)
        return QuantizerOutput(self._layout(quantized), self._join([o.indices for o in outs], lead), loss)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        lead, z = self._prepare(x)
        return self._join([q.encode(chunk) for q, chunk in zip(self.parts, z.chunk(self.groups, -1))], lead)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"indices must be an integer tensor, got {got}")
        if indices.dim() < 1 or indices.shape[-1] != self.num_codebooks:
            raise ValueError(
                f"expected indices with last dim {self.num_codebooks} (groups x indices per group), got shape {tuple(indices.shape)}"
            )
        if self.channel_first and indices.dim() < 2:
            raise ValueError("channel_first decode expects indices of shape (B, *spatial, groups)")
        m = self.indices_per_group
        chunks = indices.split(m, -1)
        if m == 1:
            chunks = [c.squeeze(-1) for c in chunks]
        return self._layout(torch.cat([q.decode(c) for q, c in zip(self.parts, chunks)], -1))

    def _join(self, indices: list[torch.Tensor], lead) -> torch.Tensor:
        if self.indices_per_group == 1:
            indices = [i.unsqueeze(-1) for i in indices]
        out = torch.cat(indices, -1)
        return out.reshape(*lead, self.num_codebooks)

    def _layout(self, quantized: torch.Tensor) -> torch.Tensor:
        return quantized.movedim(-1, 1) if self.channel_first else quantized

    # ---- usage: the groups count, the wrapper reads them in index order ----

    def reset_usage(self) -> None:
        for q in self.parts:
            q.reset_usage()

    def usage(self, sync: bool = True) -> Usage:
        counts = torch.cat([q.usage_counts for q in self.parts])
        if counts.shape[1] == 0:
            raise ValueError(f"usage is not tracked for {self.codebook_size} codes per group; count encode() indices yourself")
        counts = counts.clone()
        if sync:
            all_reduce_sum(counts)
        return usage_from_counts(counts)

    def _effective_codebook(self) -> torch.Tensor:
        """The first group's codebook in its input space (what ``decode`` gives for that group)."""
        q = self.parts[0]
        return q.project_out(q.codebook.to(self.usage_counts.device))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, groups={self.groups}, codebook_size={self.codebook_size}, num_codebooks={self.num_codebooks}"
