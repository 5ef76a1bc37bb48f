"""Tokenizer training losses: PatchGAN discriminator with hinge loss, optional LPIPS.

The discriminator is the N-layer PatchGAN of pix2pix (Isola et al. 2017,
arXiv 1611.07004) as used by VQGAN (arXiv 2012.09841) and LlamaGen; the
adversarial objective is the hinge loss
``L_D = E[relu(1 − D(x))] + E[relu(1 + D(x̂))]``, ``L_G = −E[D(x̂)]``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided 4×4 convolutions, a logit per overlapping patch.

    BatchNorm always uses batch statistics: the discriminator only ever runs
    on training batches, and running averages would differ between DDP ranks.
    """

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = ch
        for i in range(1, n_layers + 1):
            out = ch * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out, track_running_stats=False), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def load_lpips(net: str = "vgg") -> nn.Module | None:
    """The LPIPS perceptual loss, or ``None`` with a warning when its pretrained weights cannot be loaded.

    Uses the ``lpips`` package (Zhang et al. 2018, arXiv 1801.03924), which
    fetches ImageNet backbone weights on first use; offline that fails, and the
    loss is skipped loudly rather than silently.
    """
    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError:
        warnings.warn("perceptual loss disabled: the 'lpips' package is not installed (pip install lpips)", stacklevel=2)
        return None
    try:
        model = lpips.LPIPS(net=net, verbose=False)
    except Exception as err:  # noqa: BLE001 - any download/load failure means no weights
        warnings.warn(f"perceptual loss disabled: LPIPS weights could not be loaded ({type(err).__name__}: {err})", stacklevel=2)
        return None
    model.eval().requires_grad_(False)
    return model
