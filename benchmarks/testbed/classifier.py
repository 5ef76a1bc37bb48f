"""The testbed's digits classifier (a small CNN on MNIST 16×16) and the Fréchet distance in its features.

``DigitClassifier`` takes images in [0, 1] (what the pipelines return) of shape ``(n, 1, 16, 16)``;
``features(x)`` is its 128-d penultimate layer (after ReLU), in which the Fréchet statistics of the 10,000
held-out real digits (MNIST ``test`` split) are stored beside the weights (``frechet_stats.safetensors``:
``mean`` (128,), ``cov`` (128, 128), float64). The Fréchet distance in these features is an FID-like score for
16×16 digits (Heusel et al., arXiv 1706.08500), *not* FID (no Inception network): label it so.
Load with ``DigitClassifier.from_pretrained("benchmarks/testbed/models/digits_classifier")``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

__all__ = ["DigitClassifier", "frechet_distance", "load_frechet_stats"]


class DigitClassifier(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        c1, c2, c3 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8×8
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4×4
        )
        self.fc = nn.Linear(c3 * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(n, feature_dim)`` of images ``(n, 1, 16, 16)`` in [0, 1]."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 16, 16):
            raise ValueError(f"expected images of shape (n, 1, 16, 16), got {tuple(images.shape)}")
        if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
            raise ValueError(
                f"expected images in [0, 1] (pipeline output), got values in [{images.min():.3f}, {images.max():.3f}];"
                " map MNIST-16 data in [-1, 1] with (x + 1) / 2"
            )
        h = self.conv(images * 2 - 1)
        return torch.relu(self.fc(h.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(n, num_classes)``."""
        return self.head(self.features(images))


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """``‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½)`` (symmetric form, eigenvalues clipped at 0), float64."""
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mean1 - mean2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, cov)`` of ``(n, d)`` features in float64 (``cov`` with ``n − 1``)."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def load_frechet_stats(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, cov)`` of the held-out real digits, from ``folder/frechet_stats.safetensors``."""
    from safetensors.numpy import load_file

    stats = load_file(str(Path(folder) / "frechet_stats.safetensors"))
    return stats["mean"], stats["cov"]
