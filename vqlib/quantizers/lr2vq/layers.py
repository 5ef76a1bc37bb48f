"""``nn.Linear`` / ``nn.Conv2d`` whose weight is an :class:`~vqlib.quantizers.lr2vq.LR2VQWeight`.

Both keep PyTorch's constructor order (``in_features, out_features, bias`` and
``in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias``) and take
the LR²VQ settings as keywords: ``vector_size``, ``codebook_size`` (``None``: unclustered R·P),
``rank``. They record their constructor (:class:`~vqlib.quantizers.config.ConfigMixin`), so
``save_pretrained`` / ``from_pretrained`` round-trip a layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigMixin
from .codec import LR2VQWeight, as_dtype

__all__ = ["LR2VQConv2d", "LR2VQLinear"]


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _LR2VQLayer(ConfigMixin, nn.Module):
    """What the Linear and Conv2d layers share: the compressed weight ``vq``, the bias, fitting from a dense layer."""

    vq: LR2VQWeight

    def _init_bias(self, bias: bool, size: int, device, dtype) -> None:
        if bias:
            self.bias = nn.Parameter(torch.zeros(size, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def _fit_from(self, layer: nn.Module, kmeans_iters: int, generator: torch.Generator | None):
        self.vq.fit(layer.weight, kmeans_iters, generator)
        if layer.bias is not None:
            self.bias.data.copy_(layer.bias.detach())
        return self

    @property
    def compression_ratio(self) -> float:
        return self.vq.compression_ratio

    @property
    def bits_per_weight(self) -> float:
        return self.vq.bits_per_weight


class LR2VQLinear(_LR2VQLayer):
    """``nn.Linear`` whose weight is an :class:`LR2VQWeight` (subvectors along ``in_features``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        vector_size: int,
        codebook_size: int | None,
        rank: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ):
        super().__init__()
        dtype = as_dtype(dtype)
        self.in_features, self.out_features = in_features, out_features
        self.vq = LR2VQWeight(
            out_features, in_features, vector_size, codebook_size, rank, "in_features", device=device, dtype=dtype
        )
        self._init_bias(bias, out_features, device, dtype)

    @classmethod
    def from_module(
        cls,
        layer: nn.Linear,
        *,
        vector_size: int,
        codebook_size: int | None,
        rank: int,
        kmeans_iters: int = 25,
        generator: torch.Generator | None = None,
    ) -> LR2VQLinear:
        """Fit a layer to a dense ``nn.Linear`` (its weight and bias)."""
        return cls.empty_like(layer, vector_size=vector_size, codebook_size=codebook_size, rank=rank)._fit_from(
            layer, kmeans_iters, generator
        )

    @classmethod
    def empty_like(cls, layer: nn.Linear, *, vector_size: int, codebook_size: int | None, rank: int) -> LR2VQLinear:
        """An unfitted layer of ``layer``'s shape, bias, device and dtype (to load a state dict into)."""
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"expected an nn.Linear, got {type(layer).__name__}")
        w = layer.weight
        return cls(
            layer.in_features, layer.out_features, layer.bias is not None, vector_size=vector_size,
            codebook_size=codebook_size, rank=rank, device=w.device, dtype=w.dtype,
        )  # fmt: skip

    @property
    def weight(self) -> torch.Tensor:
        return self.vq()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class LR2VQConv2d(_LR2VQLayer):
    """``nn.Conv2d`` whose weight is an :class:`LR2VQWeight` (subvectors along ``in/groups·kh·kw``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        vector_size: int,
        codebook_size: int | None,
        rank: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ):
        super().__init__()
        dtype = as_dtype(dtype)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        kh, kw = _pair(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.groups = groups
        cols = in_channels // groups * kh * kw
        self.vq = LR2VQWeight(
            out_channels, cols, vector_size, codebook_size, rank, "in_channels/groups·kh·kw", device=device,
            dtype=dtype,
        )  # fmt: skip
        self._init_bias(bias, out_channels, device, dtype)

    @classmethod
    def from_module(
        cls,
        layer: nn.Conv2d,
        *,
        vector_size: int,
        codebook_size: int | None,
        rank: int,
        kmeans_iters: int = 25,
        generator: torch.Generator | None = None,
    ) -> LR2VQConv2d:
        """Fit a layer to a dense ``nn.Conv2d`` (its weight and bias)."""
        return cls.empty_like(layer, vector_size=vector_size, codebook_size=codebook_size, rank=rank)._fit_from(
            layer, kmeans_iters, generator
        )

    @classmethod
    def empty_like(cls, layer: nn.Conv2d, *, vector_size: int, codebook_size: int | None, rank: int) -> LR2VQConv2d:
        """An unfitted layer of ``layer``'s shape, bias, device and dtype (to load a state dict into)."""
        if not isinstance(layer, nn.Conv2d):
            raise ValueError(f"expected an nn.Conv2d, got {type(layer).__name__}")
        if layer.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported, got {layer.padding_mode!r}")
        w = layer.weight
        return cls(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            layer.groups, layer.bias is not None, vector_size=vector_size, codebook_size=codebook_size, rank=rank,
            device=w.device, dtype=w.dtype,
        )  # fmt: skip

    @property
    def weight(self) -> torch.Tensor:
        return self.vq().reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )
