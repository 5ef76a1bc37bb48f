"""SAQIndex: recall against exact search, multi-stage search against the full scan, SAQ's own estimator."""

import numpy as np
import pytest
import torch

from vqlib.anns import IVFSAQIndex, RefineIndex, SAQIndex

from .conftest import D, recall, same_topk_fraction

# four coded segments, so the bound of several unseen segments is exercised
FOUR_SEGMENTS = [(16, 6), (16, 5), (16, 4), (16, 3)]


def build(xb, bits=4.0, metric="l2", plan=None, refine=False, k_factor=4, **kwargs):
    index = SAQIndex(D, bits, metric=metric, saq_plan=plan, **kwargs)
    if refine:
        index = RefineIndex(index, k_factor=k_factor)
    index.train(xb)
    index.add(xb)
    return index


@pytest.mark.parametrize("metric, bits, floor", [("l2", 4, 0.75), ("ip", 4, 0.85), ("l2", 6, 0.9), ("l2", 1.5, 0.35)])
def test_recall(data, metric, bits, floor):
    xb, xq = data
    from vqlib.anns import FlatIndex

    flat = FlatIndex(D, metric)
    flat.add(xb)
    _, gt = flat.search(xq, 10)
    _, I = build(xb, bits, metric).search(xq, 10)
    assert recall(I, gt) >= floor


def test_refine_recovers_exact_order(data, ground_truth):
    xb, xq = data
    Dt, It = ground_truth
    index = build(xb, 2, refine=True, k_factor=20)
    Dr, Ir = index.search(xq, 10)
    assert recall(Ir, It) >= 0.95
    np.testing.assert_allclose(Dr[Ir == It], Dt[Ir == It], rtol=1e-4)
    assert recall(build(xb, 2).search(xq, 10)[1], It) < recall(Ir, It)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_full_scan_equals_saq_estimator(data, metric):
    xb, xq = data
    index = build(xb, 4, metric)
    D0, I0 = index.search(xq, 10, {"bound_m": 0})
    saq, q = index.saq, torch.from_numpy(xq)
    if metric == "l2":
        est = saq.estimate_sq_distances(q, index.codes)
        ref_d, ref_i = est.topk(10, dim=1, largest=False)
    else:  # the estimator is linear in the query: ⟨x − μ, q⟩ = estimate for the query q + μ
        est = saq.estimate_inner_products(q + saq.mean, index.codes) + (q @ saq.mean)[:, None]
        ref_d, ref_i = est.topk(10, dim=1, largest=True)
    assert same_topk_fraction(I0, index.ids[ref_i].numpy()) >= 0.99
    np.testing.assert_allclose(D0, ref_d.numpy(), rtol=1e-3, atol=1e-3 * float(ref_d.abs().max()))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_multistage_equals_full_scan_and_prunes(data, metric):
    xb, xq = data
    index = build(xb, 4, metric, plan=FOUR_SEGMENTS)
    assert [(s.length, s.bits) for s in index.saq.segments() if s.coded] == FOUR_SEGMENTS
    D0, I0 = index.search(xq, 10, {"bound_m": 0})
    D1, I1 = index.search(xq, 10)  # bound_m = 4
    stats = index.last_search_stats
    assert same_topk_fraction(I0, I1) >= 0.99
    agree = (I0 == I1).all(1)
    np.testing.assert_allclose(D0[agree], D1[agree], rtol=1e-5, atol=1e-5)
    # most codes are read only in part: far fewer pairs reach the last stage than the first
    assert stats["needed"][-1] < 0.5 * stats["needed"][0]
    assert stats["pairs"][-1] < stats["pairs"][0]


def test_fractional_bits_and_reconstruct(data):
    xb, xq = data
    index = build(xb, 1.5)
    assert index.code_size == index.saq.code_size + 8
    approx = index.reconstruct(7)
    err = np.sum((approx - xb[7]) ** 2) / np.sum((xb[7] - xb.mean(0)) ** 2)
    assert err < 1.0
    fine = build(xb, 8)
    err8 = np.sum((fine.reconstruct(7) - xb[7]) ** 2) / np.sum((xb[7] - xb.mean(0)) ** 2)
    assert err8 < 0.05


def test_untrained_and_empty(data):
    xb, xq = data
    index = SAQIndex(D, 4)
    assert not index.is_trained
    with pytest.raises(RuntimeError, match="not trained"):
        index.search(xq, 5)
    with pytest.raises(RuntimeError, match="not trained"):
        index.add(xb)
    assert index.ntotal == 0
    index.train(xb)
    Dv, Iv = index.search(xq[:3], 4)
    assert (Iv == -1).all() and np.isinf(Dv).all()
    index.add(xb[:3])
    Dv, Iv = index.search(xq[:3], 5)  # k > ntotal pads
    assert (Iv[:, :3] >= 0).all() and (Iv[:, 3:] == -1).all() and np.isposinf(Dv[:, 3:]).all()
    with pytest.raises(ValueError, match="reset"):
        index.train(xb)


def test_remove_add_with_ids(data):
    xb, xq = data
    index = build(xb[:500])
    D0, I0 = index.search(xq, 5)
    removed = np.unique(I0[:, 0])
    assert index.remove_ids(removed) == len(removed)
    _, I1 = index.search(xq, 5)
    assert not np.isin(I1, removed).any()
    index.add_with_ids(xb[removed], removed + 10_000)
    D2, I2 = index.search(xq, 5)
    np.testing.assert_array_equal(np.where(I2 >= 10_000, I2 - 10_000, I2), I0)
    np.testing.assert_allclose(D2, D0, rtol=1e-5)


def test_search_parameters_and_composition(data):
    xb, xq = data
    index = build(xb[:300])
    assert not issubclass(SAQIndex, IVFSAQIndex) and index.search_params == ("bound_m",)
    for name in ("nprobe", "k_factor"):
        with pytest.raises(ValueError, match=f"SAQIndex does not use the search parameter '{name}' \\(it takes bound_m\\)"):
            index.search(xq, 5, {name: 2})
    D0, I0 = index.search(xq, 5, {"bound_m": 0})
    assert I0.shape == (len(xq), 5)
