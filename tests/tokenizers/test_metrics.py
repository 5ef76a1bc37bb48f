import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from vqlib.tokenizers.metrics import frechet_distance, psnr, ssim


def test_psnr_known_value():
    x = torch.zeros(1, 3, 8, 8)
    y = torch.full_like(x, 0.1)
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0]))


def test_ssim_matches_scikit_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = (x + 0.1 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        ref = structural_similarity(
            x[i].permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy(), channel_axis=-1, data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )  # fmt: skip
        # scikit-image crops the borders before averaging; our valid-window mean is the same map
        assert ours[i].item() == pytest.approx(ref, abs=2e-3)
    assert ssim(x, x).min() == pytest.approx(1.0, abs=1e-5)


def test_frechet_distance_matches_scipy():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-8)
