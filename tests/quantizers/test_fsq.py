import math

import pytest
import torch

from vqlib.quantizers import FSQ


@pytest.mark.parametrize("levels, bound", [([8, 5, 5, 5], "tanh"), ([3, 4, 2], "tanh"), ([17, 9, 5], "ifsq")])
def test_indices_are_a_bijection_onto_the_grid(levels, bound):
    q = FSQ(levels, bound=bound)
    k = math.prod(levels)
    assert q.codebook_size == k
    grid = q.codebook
    assert grid.shape == (k, len(levels))
    assert len(torch.unique(grid, dim=0)) == k
    # encode(decode(i)) == i: each grid point is a fixed point of the quantizer once un-bounded
    q.eval()
    half = torch.tensor([lv // 2 for lv in levels], dtype=torch.float32)
    # find an input that lands on each grid point: invert the bound numerically by search
    z = torch.linspace(-6, 6, 4001)
    for i, lv in enumerate(levels):
        one = FSQ([lv], bound=bound)
        vals = one(z.unsqueeze(-1)).quantized.squeeze(-1)
        assert len(torch.unique(vals)) == lv, "every level is reachable"
        assert vals.min() >= -1 and vals.max() <= 1
    assert torch.equal(q.decode(torch.arange(k)), grid)
    codes = grid * half
    assert torch.equal(codes, codes.round())
    # encode(decode(i)) == i: un-bound each grid point (the paper's bound, inverted) and encode it
    idx = torch.arange(k)
    z = unbound(q.decode(idx) * half * 0.99, levels, bound)  # 0.99: iFSQ reaches its outer levels only at ±inf
    assert torch.equal(q.encode(z), idx)


def unbound(f: torch.Tensor, levels: list[int], bound: str) -> torch.Tensor:
    """An input z with bound(z) = f, channel by channel (the inverse of the formulas in the module docstring)."""
    lv = torch.tensor(levels, dtype=torch.float64)
    f = f.double()
    if bound == "ifsq":  # f = (2σ(1.6 z) − 1)·(L − 1)/2
        return (torch.logit((f / ((lv - 1) / 2) + 1) / 2) / 1.6).float()
    h = (lv - 1) * (1 + 1e-3) / 2  # f = tanh(z + s)·h − o, s = atanh(o/h)
    o = torch.where(lv % 2 == 0, 0.5, 0.0)
    return (torch.atanh((f + o) / h) - torch.atanh(o / h)).float()


def test_fsq_bound_formula():
    q = FSQ([8, 5])
    z = torch.randn(100, 2)
    out = q(z).quantized
    eps = 1e-3
    for i, lv in enumerate([8, 5]):
        h = (lv - 1) * (1 + eps) / 2
        o = 0.5 if lv % 2 == 0 else 0.0
        f = torch.tanh(z[:, i] + math.atanh(o / h)) * h - o
        torch.testing.assert_close(out[:, i], torch.round(f) / (lv // 2))


def test_ifsq_bound_formula_and_odd_levels():
    q = FSQ([17, 5], bound="ifsq")
    z = torch.randn(200, 2)
    out = q(z).quantized
    for i, lv in enumerate([17, 5]):
        f = (2 * torch.sigmoid(1.6 * z[:, i]) - 1) * (lv - 1) / 2
        torch.testing.assert_close(out[:, i], torch.round(f) / (lv // 2))
    with pytest.raises(ValueError, match="odd levels"):
        FSQ([16, 5], bound="ifsq")


def test_ifsq_bound_maps_gaussian_to_nearly_uniform():
    """2σ(1.6z) − 1 ≈ 2Φ(z) − 1, so N(0, 1) inputs spread evenly over the range (tanh does not)."""
    z = torch.randn(200000, 1)

    def ks_to_uniform(q):
        u = torch.sort((q._bounded(z) / ((17 - 1) / 2)).flatten()).values  # scaled to (-1, 1)
        cdf = (u + 1) / 2
        return (cdf - torch.arange(1, len(u) + 1) / len(u)).abs().max()

    ifsq, tanh = ks_to_uniform(FSQ([17], bound="ifsq")), ks_to_uniform(FSQ([17], bound="tanh"))
    assert ifsq < 0.03 < tanh


def test_large_grid_is_never_materialised():
    levels = [2**10] * 5  # 2^50 codes: indices need int64, the grid would need petabytes
    q = FSQ(levels, dim=8)
    x = torch.randn(4, 8) * 3
    idx = q.encode(x)
    assert idx.dtype == torch.int64
    # past int32: saturating every channel gives the last code, 2^50 - 1
    top = FSQ(levels).encode(torch.full((1, 5), 50.0))
    assert top.tolist() == [2**50 - 1]
    q.eval()
    assert torch.equal(q.decode(idx), q(x).quantized)
    assert q.decode(torch.tensor([2**50 - 1])).shape == (1, 8)
    with pytest.raises(ValueError, match="GiB"):
        q.codebook
    with pytest.raises(ValueError, match="usage is not tracked"):
        q.usage()


def test_mixed_radix_order():
    q = FSQ([4, 3])
    # index = d0 + 4 * d1 with digits d = level + L // 2
    assert q.decode(torch.tensor([0])).tolist() == [[-1.0, -1.0]]
    assert q.decode(torch.tensor([1])).tolist() == [[-0.5, -1.0]]
    assert q.decode(torch.tensor([4])).tolist() == [[-1.0, 0.0]]
    assert q.decode(torch.tensor([11])).tolist() == [[0.5, 1.0]]


def test_groups_give_one_index_each():
    q = FSQ([5, 5], dim=6, num_codebooks=3)
    out = q(torch.randn(7, 6))
    assert out.indices.shape == (7, 3)
    assert q.bits_per_index == pytest.approx(3 * math.log2(25))
    with pytest.raises(ValueError, match="last dim 3"):
        q.decode(torch.zeros(7, 2, dtype=torch.long))


def test_no_loss_and_gradient_through_bound():
    q = FSQ([5, 5, 5], dim=8)
    x = torch.randn(10, 8, requires_grad=True)
    out = q(x)
    assert float(out.loss) == 0.0
    out.quantized.sum().backward()
    assert x.grad.abs().sum() > 0
    assert q.project_in.weight.grad.abs().sum() > 0


def test_bad_levels():
    with pytest.raises(ValueError, match="levels"):
        FSQ([])
    with pytest.raises(ValueError, match="levels"):
        FSQ([1, 4])
    with pytest.raises(ValueError, match="bound"):
        FSQ([5], bound="sigmoid")
