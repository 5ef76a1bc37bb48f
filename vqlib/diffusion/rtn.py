"""Round-to-nearest integer weights per group: the scalar baseline of the diffusion tables.

Each row of ``W ∈ R^{N×D}`` is cut into groups of ``g`` inputs; a group with range
``[lo, hi]`` gets ``scale = (hi − lo) / (2^b − 1)`` (stored fp16) and the zero point
``z = round(−lo / scale)`` clamped to ``[0, 2^b)``; a weight is stored as
``q = clamp(round(w / scale) + z, 0, 2^b − 1)`` and read back as ``(q − z) · scale``
(asymmetric min-max RTN, as GPTQ/AWQ's baselines). Codes and zero points are packed at
``b`` bits, so a weight costs ``b + (16 + b) / g`` bits, every stored byte counted.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqlib.quantizers.packing import pack_bits, packed_size, unpack_bits

__all__ = ["RTNLinear"]


class RTNLinear(nn.Module):
    """A linear layer stored as ``bits``-bit integers with an fp16 scale and a zero point per group of inputs."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 4,
        group_size: int = 128,
        bias: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an integer in [1, 8], got {bits!r}")
        if group_size < 1 or in_features % group_size:
            raise ValueError(f"group_size {group_size} must divide in_features {in_features}")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        groups = in_features // group_size
        self.register_buffer(
            "qweight", torch.zeros(out_features, packed_size(in_features, bits), dtype=torch.uint8, device=device)
        )
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.float16, device=device))
        self.register_buffer(
            "zeros", torch.zeros(out_features, packed_size(groups, bits), dtype=torch.uint8, device=device)
        )
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int = 128) -> RTNLinear:
        layer = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias is not None,
                    device=linear.weight.device)  # fmt: skip
        w = linear.weight.detach().float().reshape(linear.out_features, -1, group_size)
        top = (1 << bits) - 1
        lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
        scale = ((hi - lo) / top).to(torch.float16)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale works
        s = scale.float()
        zero = torch.round(-lo / s).clamp(0, top)
        q = (torch.round(w / s[..., None]) + zero[..., None]).clamp(0, top)
        layer.qweight.copy_(pack_bits(q.reshape(linear.out_features, -1).to(torch.int32), bits))
        layer.scales.copy_(scale)
        layer.zeros.copy_(pack_bits(zero.to(torch.int32), bits))
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer

    @property
    def nbytes(self) -> int:
        """Stored bytes of the weight (codes, scales, zero points; not the bias)."""
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.in_features * self.out_features)

    def dequantize(self) -> torch.Tensor:
        n, groups = self.out_features, self.in_features // self.group_size
        q = unpack_bits(self.qweight, self.bits, self.in_features).float().reshape(n, groups, self.group_size)
        zero = unpack_bits(self.zeros, self.bits, groups).float()
        return ((q - zero[..., None]) * self.scales.float()[..., None]).reshape(n, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected last dim {self.in_features}, got {x.shape[-1]}")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, bits_per_weight={self.bits_per_weight:.3f}"
        )
