"""Compiled small-d nearest code: equal to the torch search and to brute force, ties to the lower index."""

import importlib

import pytest
import torch

from vqlib.quantizers import nearest
from vqlib.quantizers import nearest_small as ns

pytest.importorskip("numba", reason="the compiled small-d search needs numba (pip install 'vqlib[anns]')")
nearest_mod = importlib.import_module("vqlib.quantizers.nearest")


def torch_nearest(x, c, metric):
    """vqlib's torch path (blocked matmuls), bypassing the compiled one."""
    return nearest_mod._search(x.float(), c.float(), 1, metric, nearest_mod._DEFAULT_MAX_MEMORY)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("n,d,k", [(1, 1, 1), (7, 3, 17), (130, 8, 2049), (33, 16, 4100), (250, 5, 700)])
def test_equals_brute_force_and_torch(n, d, k, metric):
    g = torch.Generator().manual_seed(n + d + k)
    x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    dist, idx = ns.nearest_small(x, c, metric, threads=1)
    assert dist.shape == idx.shape == (n, 1) and dist.dtype == torch.float32 and idx.dtype == torch.int64
    x64, c64 = x.double(), c.double()
    full = torch.cdist(x64, c64).square() if metric == "l2" else x64 @ c64.T
    ref = full.min(1) if metric == "l2" else full.max(1)
    torch.testing.assert_close(dist[:, 0].double(), ref.values, rtol=1e-5, atol=1e-5)
    got = full.gather(1, idx)[:, 0]  # the chosen code is as good as the best (exact up to float ties)
    torch.testing.assert_close(got, ref.values, rtol=1e-5, atol=1e-5)
    td, ti = torch_nearest(x, c, metric)
    gaps = torch.cat([(full - ref.values[:, None]).abs(), torch.full((n, 1), float("inf"))], 1).sort(1).values
    clear = gaps[:, 1] > 1e-4 * (1 + ref.values.abs())  # rows without a near-tie
    assert torch.equal(idx[clear], ti[clear])
    torch.testing.assert_close(dist, td, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ties_go_to_lower_index_within_and_across_blocks(metric):
    g = torch.Generator().manual_seed(0)
    c = torch.randn(5000, 4, generator=g)
    winner = torch.tensor([5.0, 5.0, 5.0, 5.0])
    for j in (4321, 2050, 19, 3):  # same vector in two blocks of 2048 codes and in two lanes of one chunk
        c[j] = winner
    x = torch.stack([winner, winner * 2, winner])
    for threads in (1, 2):
        _, idx = ns.nearest_small(x, c, metric, threads=threads)
        assert idx[:, 0].tolist() == [3, 3, 3]
    assert nearest(x.repeat(40, 1), c, metric=metric)[1][:, 0].eq(3).all()  # through the public search


def test_threads_give_identical_results():
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1001, 8, generator=g), torch.randn(3000, 8, generator=g)
    one = ns.nearest_small(x, c, "l2", threads=1)
    many = ns.nearest_small(x, c, "l2", threads=3)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_nearest_uses_it_only_where_it_applies(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(600, 8, generator=g), torch.randn(700, 8, generator=g)
    calls = []
    real = ns.nearest_small
    monkeypatch.setattr(ns, "nearest_small", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    for metric in ("l2", "ip", "cosine"):
        compiled = nearest(x, c, metric=metric)
        monkeypatch.setattr(ns, "available", lambda: False)  # as without numba: the torch path
        plain = nearest(x, c, metric=metric)
        monkeypatch.undo()
        monkeypatch.setattr(ns, "nearest_small", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
        torch.testing.assert_close(compiled[0], plain[0], rtol=1e-5, atol=1e-5)
        assert (compiled[1] == plain[1]).float().mean() >= 0.999  # only float near-ties may differ
    assert calls == ["l2", "ip", "ip"]
    nearest(x, c, k=2)
    nearest(torch.randn(600, 17), torch.randn(700, 17))
    assert calls == ["l2", "ip", "ip"]  # k > 1 and d > 16 stay on the torch path


def test_bad_input():
    with pytest.raises(ValueError, match="metric"):
        ns.nearest_small(torch.randn(2, 4), torch.randn(3, 4), "cosine")
    with pytest.raises(ValueError, match="d <= 16"):
        ns.nearest_small(torch.randn(2, 17), torch.randn(3, 17), "l2")
    with pytest.raises(ValueError, match="empty"):
        ns.nearest_small(torch.randn(2, 4), torch.randn(0, 4), "l2")
