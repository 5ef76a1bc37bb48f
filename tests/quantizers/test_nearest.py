import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vqlib.quantizers import nearest

nearest_mod = importlib.import_module("vqlib.quantizers.nearest")


def brute(x, c, k, metric):
    x, c = x.double(), c.double()
    if metric == "cosine":
        x, c = F.normalize(x, dim=-1), F.normalize(c, dim=-1)
    if metric == "l2":
        d = torch.cdist(x, c).square()
        return d.topk(k, dim=1, largest=False)
    d = x @ c.T
    return d.topk(k, dim=1, largest=True)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    d=st.integers(1, 24),
    num_codes=st.integers(1, 600),
    k=st.integers(1, 8),
    metric=st.sampled_from(["l2", "ip", "cosine"]),
    max_memory=st.sampled_from([64, 4096, 1 << 20, 256 << 20]),
    seed=st.integers(0, 1000),
)
def test_matches_brute_force(n, d, num_codes, k, metric, max_memory, seed):
    k = min(k, num_codes)
    g = torch.Generator().manual_seed(seed)
    x, c = torch.randn(n, d, generator=g), torch.randn(num_codes, d, generator=g)
    dist, idx = nearest(x, c, k=k, metric=metric, max_memory=max_memory)
    assert dist.shape == idx.shape == (n, k)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    if n == 0:
        return
    ref_d, _ = brute(x, c, k, metric)
    # exact up to ties: the distances of the returned codes are the k best, in order
    torch.testing.assert_close(dist.double(), ref_d, rtol=1e-4, atol=1e-4)
    got = brute_at(x, c, idx, metric)
    torch.testing.assert_close(got, ref_d, rtol=1e-4, atol=1e-4)
    assert (idx.unsqueeze(-1) != idx.unsqueeze(-2)).sum() == n * k * (k - 1)  # no repeated code per row


def brute_at(x, c, idx, metric):
    x, c = x.double(), c.double()
    if metric == "cosine":
        x, c = F.normalize(x, dim=-1), F.normalize(c, dim=-1)
    sel = c[idx]
    if metric == "l2":
        return (x.unsqueeze(1) - sel).square().sum(-1)
    return (x.unsqueeze(1) * sel).sum(-1)


def test_ties_go_to_lower_index():
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]] * 3000)
    x = torch.tensor([[2.0, 0.0]])
    _, idx = nearest(x, c, max_memory=1024)
    assert idx.item() == 0


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("max_memory", [256 << 20, 64 << 10])
def test_ties_go_to_lower_index_in_large_blocks(metric, max_memory):
    g = torch.Generator().manual_seed(0)
    c = torch.randn(4096, 4, generator=g)
    c[1000] = c[3000] = c[77] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    x = torch.cat([c[3000:3001], c[1000:1001] * 2])
    _, idx = nearest(x, c, metric=metric, max_memory=max_memory)
    assert idx[:, 0].tolist() == [77, 77]


def test_block_memory_bound():
    for n, num_codes, k, mem in [(65536, 4096, 1, 256 << 20), (8192, 262144, 1, 256 << 20), (1000, 50000, 16, 1 << 20), (10, 10, 10, 16)]:
        rows, codes = nearest_mod._block_sizes(n, num_codes, k, mem)
        assert rows >= 1 and codes >= min(num_codes, k)
        if mem >= 1 << 20:
            assert rows * (codes + 6 * k) * 4 <= mem


def test_distance_blocks_respect_max_memory(monkeypatch):
    """Every distance block the search allocates fits the bound (never N x K)."""
    sizes = []

    def spy(real):
        def wrapped(*args, **kwargs):
            out = real(*args, **kwargs)
            sizes.append(out.numel() * out.element_size())
            return out

        return wrapped

    monkeypatch.setattr(nearest_mod.torch, "addmm", spy(torch.addmm))
    monkeypatch.setattr(nearest_mod.torch, "mm", spy(torch.mm))
    x, c = torch.randn(3000, 8), torch.randn(20000, 8)
    nearest(x, c, k=4, max_memory=1 << 20)
    assert sizes and max(sizes) <= 1 << 20
    assert max(sizes) < x.shape[0] * c.shape[0] * 4


def test_large_codebook_runs_within_bound():
    """K = 262144, N = 8192, d = 8: the full distance matrix would need 8 GiB."""
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(8192, 8, generator=g), torch.randn(262144, 8, generator=g)
    dist, idx = nearest(x, c, max_memory=64 << 20)
    sample = torch.arange(0, 8192, 97)
    ref = torch.cdist(x[sample].double(), c.double()).square().min(1)
    torch.testing.assert_close(dist[sample, 0].double(), ref.values, rtol=1e-4, atol=1e-4)


def test_autocast_and_half_inputs_are_fp32():
    x, c = torch.randn(50, 16), torch.randn(70, 16)
    ref = nearest(x, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nearest(x, c)
    assert got[0].dtype == torch.float32
    assert torch.equal(got[1], ref[1])
    assert nearest(x.half(), c.half())[0].dtype == torch.float32


def test_no_grad_through_search():
    x = torch.randn(5, 4, requires_grad=True)
    d, _ = nearest(x, torch.randn(6, 4))
    assert not d.requires_grad


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(3, 4), torch.randn(5, 3)), "expected last dim 3"),
        ((torch.randn(3, 4, 1), torch.randn(5, 4)), "expected x"),
        ((torch.ones(3, 4, dtype=torch.long), torch.randn(5, 4)), "floating-point"),
        ((torch.randn(3, 4), torch.randn(0, 4)), "empty"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        nearest(*args)


def test_bad_k_and_metric():
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        nearest(torch.randn(3, 4), torch.randn(5, 4), k=6)
    with pytest.raises(ValueError, match="metric must be one of"):
        nearest(torch.randn(3, 4), torch.randn(5, 4), metric="hamming")


# ---- pairwise_distances ---------------------------------------------------------------------


def brute_pairwise(x, y, metric):
    x, y = x.double(), y.double()
    if metric == "cosine":
        return torch.stack([torch.stack([F.cosine_similarity(a, b, dim=0) for b in y]) for a in x])
    if metric == "ip":
        return torch.stack([torch.stack([(a * b).sum() for b in y]) for a in x])
    return torch.stack([torch.stack([(a - b).square().sum() for b in y]) for a in x])


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_pairwise_distances_match_brute_force(metric):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(17, 9, generator=g), torch.randn(23, 9, generator=g) + 0.5
    got = nearest_mod.pairwise_distances(x, y, metric)
    assert got.shape == (17, 23) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), brute_pairwise(x, y, metric), rtol=1e-5, atol=1e-5)
    exact = nearest_mod.pairwise_distances(x.double(), y.double(), metric)  # float64 in, float64 out
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact, brute_pairwise(x, y, metric), rtol=1e-12, atol=1e-12)
    # nearest ranks by the same scores
    _, idx = nearest(x, y, k=3, metric=metric)
    torch.testing.assert_close(idx, got.topk(3, dim=1, largest=metric != "l2").indices)


def test_pairwise_distances_batched_candidates():
    g = torch.Generator().manual_seed(4)
    q, cand = torch.randn(6, 8, generator=g), torch.randn(6, 5, 8, generator=g)
    got = nearest_mod.pairwise_distances(q[:, None], cand)[:, 0]  # each query against its own candidates
    assert got.shape == (6, 5)
    for i in range(6):
        torch.testing.assert_close(got[i], nearest_mod.pairwise_distances(q[i : i + 1], cand[i])[0])
        torch.testing.assert_close(got[i].double(), brute_pairwise(q[i : i + 1], cand[i], "l2")[0], rtol=1e-5, atol=1e-5)
    same = nearest_mod.pairwise_distances(q, q)
    assert (same >= 0).all()  # clamped: rounding never makes a distance negative


@pytest.mark.parametrize(
    "x, y, metric, match",
    [
        (torch.zeros(3, 4), torch.zeros(2, 4), "l1", "metric must be one of"),
        (torch.zeros(3, 4), torch.zeros(2, 5), "l2", "expected last dim 5"),
        (torch.zeros(4), torch.zeros(2, 4), "l2", r"expected x \(\.\.\., n, d\)"),
        (torch.zeros(3, 4, dtype=torch.int64), torch.zeros(2, 4), "l2", "floating-point"),
    ],
)
def test_pairwise_distances_bad_input(x, y, metric, match):
    with pytest.raises(ValueError, match=match):
        nearest_mod.pairwise_distances(x, y, metric)
