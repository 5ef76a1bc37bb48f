"""Convolutional building blocks of the VQGAN / LlamaGen autoencoder.

The encoder and decoder of taming-transformers (Esser et al. 2021, arXiv
2012.09841) as LlamaGen's VQ-16 uses them (Sun et al. 2024, arXiv 2406.06525):
GroupNorm(32) + swish residual blocks, single-head spatial self-attention,
strided-conv downsampling and nearest-neighbour upsampling.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def normalize(channels: int) -> nn.GroupNorm:
    groups = 32 if channels % 32 == 0 else next(g for g in (16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad keeps H/2 exactly


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def mid_block(width: int, dropout: float) -> nn.Sequential:
    """Residual block, self-attention, residual block at the lowest resolution."""
    return nn.Sequential(ResnetBlock(width, width, dropout), AttnBlock(width), ResnetBlock(width, width, dropout))


class Encoder(nn.Module):
    """Image ``(B, 3, H, W)`` → latent ``(B, z_channels, H/f, W/f)`` with ``f = 2^(len(ch_mult)-1)``."""

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        dropout: float = 0.0,
        attn_at_lowest: bool = True,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        blocks: list[nn.Module] = []
        width = ch
        for level, mult in enumerate(ch_mult):
            out = ch * mult
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(width, out, dropout))
                width = out
                if attn_at_lowest and level == len(ch_mult) - 1:
                    blocks.append(AttnBlock(width))
            if level != len(ch_mult) - 1:
                blocks.append(Downsample(width))
        self.down = nn.Sequential(*blocks)
        self.mid = mid_block(width, dropout)
        self.norm_out = normalize(width)
        self.conv_out = nn.Conv2d(width, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``(B, z_channels, h, w)`` → image ``(B, 3, h·f, w·f)``; mirrors :class:`Encoder`."""

    def __init__(
        self,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        dropout: float = 0.0,
        attn_at_lowest: bool = True,
    ):
        super().__init__()
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = mid_block(width, dropout)
        blocks: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(ch_mult))):
            out = ch * mult
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(width, out, dropout))
                width = out
                if attn_at_lowest and level == len(ch_mult) - 1:
                    blocks.append(AttnBlock(width))
            if level != 0:
                blocks.append(Upsample(width))
        self.up = nn.Sequential(*blocks)
        self.norm_out = normalize(width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))
