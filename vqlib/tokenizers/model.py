"""``VQTokenizer``: a LlamaGen-style convolutional VQ autoencoder around any vqlib quantizer.

Encoder → quantizer (any :class:`vqlib.quantizers.Quantizer`, channel-first
over the latent map) → decoder, as in LlamaGen's VQ-16 (Sun et al. 2024,
arXiv 2406.06525), which itself follows VQGAN (arXiv 2012.09841). LlamaGen's
``quant_conv``/``post_quant_conv`` 1×1 convolutions to 8-d l2-normalised codes
are the quantizer's own ``codebook_dim`` projections here
(``VectorQuantizer(dim=z_channels, codebook_dim=8, metric="cosine")``).

Images are ``(B, 3, H, W)`` in ``[-1, 1]``. Exported with
:meth:`VQTokenizer.save_pretrained`: ``config.json`` plus ``model.safetensors``
(no pickle), the JSON carrying a format version and the weights' SHA-256.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io import atomic_write, sha256
from ..quantizers import Quantizer, QuantizerOutput
from .layers import Decoder, Encoder

__all__ = ["VQTokenizer", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"


class VQTokenizer(nn.Module):
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

    # ---- export -----------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return {**self.arch, "quantizer": self.quantizer.config}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically, each via a temporary file)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        weights = directory / _WEIGHTS
        atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": "vqlib.tokenizer"}))
        meta = {
            "format": "vqlib.tokenizer",
            "version": FORMAT_VERSION,
            "class": "VQTokenizer",
            "config": self.config,
            "weights": {"file": _WEIGHTS, "sha256": sha256(weights)},
        }
        atomic_write(directory / _CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "VQTokenizer":
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path = directory / _CONFIG
        if not cfg_path.is_file():
            raise ValueError(f"{directory} holds no {_CONFIG}: not a vqlib tokenizer export")
        try:
            meta = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cfg_path} is not valid JSON: {err}") from None
        if meta.get("format") != "vqlib.tokenizer":
            raise ValueError(f"{cfg_path} is not a vqlib tokenizer config (format={meta.get('format')!r})")
        if meta.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{cfg_path} has format version {meta['version']}; this vqlib reads up to {FORMAT_VERSION}")
        weights = directory / meta["weights"]["file"]
        if not weights.is_file():
            raise ValueError(f"missing weights file {weights}")
        if sha256(weights) != meta["weights"]["sha256"]:
            raise ValueError(f"{weights} does not match the checksum in {cfg_path}: the file is corrupt or was changed")
        model = cls(**meta["config"])
        model.load_state_dict(load_file(str(weights), device=str(map_location)))
        return model.eval()

