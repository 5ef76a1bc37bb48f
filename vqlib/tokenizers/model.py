"""``VQTokenizer``: a LlamaGen-style convolutional VQ autoencoder around any vqlib quantizer.

Encoder → quantizer (any :class:`vqlib.quantizers.Quantizer`, channel-first
over the latent map) → decoder, as in LlamaGen's VQ-16 (Sun et al. 2024,
arXiv 2406.06525), which itself follows VQGAN (arXiv 2012.09841). LlamaGen's
``quant_conv``/``post_quant_conv`` 1×1 convolutions to 8-d l2-normalised codes
are the quantizer's own ``codebook_dim`` projections here
(``VectorQuantizer(dim=z_channels, codebook_dim=8, metric="cosine")``).

Images are ``(B, 3, H, W)`` in ``[-1, 1]``. Exported with
:meth:`VQTokenizer.save_pretrained` (vqlib's one save format, see
:mod:`vqlib.quantizers.config`): ``config.json`` plus ``model.safetensors``
(no pickle), the JSON carrying a format version and the weights' SHA-256.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..quantizers import ConfigMixin, PretrainedFileError, Quantizer, QuantizerOutput
from .layers import Decoder, Encoder

__all__ = ["VQTokenizer"]



class VQTokenizer(ConfigMixin, nn.Module):
    """Discrete image tokenizer.

    Args:
        quantizer: the bottleneck, a :class:`Quantizer` or its ``config`` dict;
            its ``dim`` must equal ``z_channels``.
        ch, ch_mult, num_res_blocks, z_channels, dropout: encoder/decoder widths
            (LlamaGen VQ-16: 128, (1, 1, 2, 2, 4), 2, 256). The downsampling
            factor is ``2 ** (len(ch_mult) - 1)``.
    """

    def __init__(
        self,
        quantizer: Quantizer | dict[str, Any],
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        dropout: float = 0.0,
    ):
        super().__init__()
        if isinstance(quantizer, dict):
            quantizer = Quantizer.from_config(quantizer)
        if not isinstance(quantizer, Quantizer):
            raise ValueError(f"quantizer must be a vqlib Quantizer or its config dict, got {type(quantizer).__name__}")
        if quantizer.dim != z_channels:
            raise ValueError(f"the quantizer's dim ({quantizer.dim}) must equal z_channels ({z_channels})")
        ch_mult = tuple(int(m) for m in ch_mult)
        self.arch = dict(ch=ch, ch_mult=list(ch_mult), num_res_blocks=num_res_blocks, z_channels=z_channels, dropout=dropout)
        self.encoder = Encoder(3, ch, ch_mult, num_res_blocks, z_channels, dropout)
        self.decoder = Decoder(3, ch, ch_mult, num_res_blocks, z_channels, dropout)
        self.quantizer = quantizer

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.arch["ch_mult"]) - 1)

    def _check_images(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        f = self.downsample
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image height and width must be multiples of {f}, got {tuple(x.shape[-2:])}")

    def _quantize(self, z: torch.Tensor) -> QuantizerOutput:
        if self.quantizer.channel_first:
            return self.quantizer(z)
        out = self.quantizer(z.movedim(1, -1))
        return QuantizerOutput(out.quantized.movedim(-1, 1), out.indices, out.loss)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """``(reconstruction, QuantizerOutput)``; indices are ``(B, H/f, W/f)``."""
        self._check_images(x)
        q = self._quantize(self.encoder(x))
        return self.decoder(q.quantized), q

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_images(x)
        z = self.encoder(x)
        return self.quantizer.encode(z if self.quantizer.channel_first else z.movedim(1, -1))

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        q = self.quantizer.decode(indices)
        return self.decoder(q if self.quantizer.channel_first else q.movedim(-1, 1))

    def bits_per_pixel(self) -> float:
        return self.quantizer.bits_per_index / self.downsample**2

    # ---- export: save_pretrained / from_pretrained come from ConfigMixin ----

    @classmethod
    def _upgrade_meta(cls, meta):
        # version-1 exports (vqlib 0.1) had their own layout: {"format": "vqlib.tokenizer", "config": {...}}
        if isinstance(meta, dict) and meta.get("format") == "vqlib.tokenizer":
            if meta.get("version", 0) > 1:
                raise PretrainedFileError(
                    f"tokenizer export has format version {meta['version']}; this vqlib reads up to 1: upgrade vqlib"
                )
            return {
                "format": "vqlib",
                "format_version": 1,
                "class_path": f"{cls.__module__}.{cls.__qualname__}",
                "init_args": meta["config"],
                "weights": meta["weights"],
            }
        return meta
