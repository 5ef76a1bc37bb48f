import pytest
import torch

from vqlib.quantizers import kmeans, nearest, subsample


def test_assignment_is_nearest_final_centroid_for_every_row():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 6, generator=g)
    res = kmeans(x, 16, iters=5, generator=torch.Generator().manual_seed(1), max_samples=500)
    assert res.assignment.shape == (3000,)
    assert torch.equal(res.assignment, nearest(x, res.centroids)[1][:, 0])
    assert torch.equal(res.counts, torch.bincount(res.assignment, minlength=16).float())
    assert float(res.counts.sum()) == 3000


def test_max_samples_bounds_the_rows_lloyd_sees():
    # centroids of a subsample run equal those of kmeans on that very subsample
    x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
    a = kmeans(x, 8, iters=4, generator=torch.Generator().manual_seed(3), max_samples=300)
    sample = subsample(x, 300, torch.Generator().manual_seed(3))
    assert sample.shape == (300, 4)
    g = torch.Generator().manual_seed(3)
    subsample(x, 300, g)  # advance the generator as kmeans did
    b = kmeans(sample, 8, iters=4, generator=g)
    assert torch.equal(a.centroids, b.centroids)


def test_subsample_rows_are_distinct_rows_of_x():
    x = torch.arange(100.0)[:, None]
    s = subsample(x, 40, torch.Generator().manual_seed(0))
    assert s.shape == (40, 1) and len(torch.unique(s)) == 40
    assert subsample(x, None) is x and subsample(x, 500) is x
    with pytest.raises(ValueError, match="max_samples"):
        subsample(x, 0)


def test_kmeans_lowers_error_over_random_codebook():
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    res = kmeans(x, 32, iters=15, generator=torch.Generator().manual_seed(0))
    err = (x - res.centroids[res.assignment]).pow(2).sum(1).mean()
    rand = x[:32]
    err0 = (x - rand[nearest(x, rand)[1][:, 0]]).pow(2).sum(1).mean()
    assert err < 0.8 * err0


def test_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        kmeans(torch.zeros(0, 3), 2)
    with pytest.raises(ValueError, match="k must be positive"):
        kmeans(torch.zeros(4, 3), 0)
    with pytest.raises(ValueError, match="metric"):
        kmeans(torch.zeros(4, 3), 2, metric="ip")
