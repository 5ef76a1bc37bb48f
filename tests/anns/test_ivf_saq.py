"""IVFSAQIndex: recall over nprobe, equality with a full scan of the residual codes, merge and removal."""

import pickle

import numpy as np
import pytest
import torch

from vqlib.anns import FlatIndex, IVFSAQIndex, SAQIndex, serialize_index

from .conftest import D, recall, same_topk_fraction


@pytest.fixture(scope="module")
def trained(data):
    xb, _ = data
    index = IVFSAQIndex(D, 16, 4)
    index.train(xb)
    return index


def filled(trained, xb):
    index = pickle.loads(pickle.dumps(trained))  # a copy that shares the training
    index.add(xb)
    return index


def test_recall_grows_with_nprobe(data, ground_truth, trained):
    xb, xq = data
    index = filled(trained, xb)
    recalls = [recall(index.search(xq, 10, {"nprobe": p})[1], ground_truth[1]) for p in (1, 4, 16)]
    assert recalls[0] <= recalls[1] + 0.01 <= recalls[2] + 0.02
    assert recalls[2] >= 0.85
    index.nprobe = 16
    assert recall(index.search(xq, 10)[1], ground_truth[1]) == recalls[2]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_all_lists_equal_full_scan_of_residual_codes(data, metric):
    xb, xq = data
    index = IVFSAQIndex(D, 8, 4, metric=metric)
    index.train(xb)
    index.add(xb)
    q, saq = torch.from_numpy(xq), index.saq
    est = torch.empty(len(q), index.ntotal)
    for l in range(index.nlist):
        a, b = int(index.offsets[l]), int(index.offsets[l + 1])
        c = index.centroids[l]
        if metric == "l2":
            est[:, a:b] = saq.estimate_sq_distances(q - c, index.codes[a:b])
        else:
            est[:, a:b] = saq.estimate_inner_products(q + saq.mean, index.codes[a:b]) + (q @ (c + saq.mean))[:, None]
    ref_d, ref_pos = est.topk(10, dim=1, largest=metric == "ip")
    ref_ids = index.ids[ref_pos].numpy()
    D0, I0 = index.search(xq, 10, {"nprobe": 8, "bound_m": 0})
    assert same_topk_fraction(I0, ref_ids) >= 0.99
    np.testing.assert_allclose(D0, ref_d.numpy(), rtol=1e-3, atol=1e-3 * float(ref_d.abs().max()))
    D1, I1 = index.search(xq, 10, {"nprobe": 8})
    assert same_topk_fraction(I1, I0) >= 0.99


def test_one_list_equals_saq_index(data):
    xb, xq = data
    ivf, flat = IVFSAQIndex(D, 1, 4), SAQIndex(D, 4)
    for index in (ivf, flat):
        index.train(xb)
        index.add(xb)
    # one k-means centroid is the data mean, SAQ then codes the same centred vectors
    Di, Ii = ivf.search(xq, 10)
    Ds, Is = flat.search(xq, 10)
    assert same_topk_fraction(Ii, Is) >= 0.9


def test_merge_equals_single_index(data, trained):
    xb, xq = data
    whole = filled(trained, xb)
    part_a, part_b = filled(trained, xb[:1500]), pickle.loads(pickle.dumps(trained))
    part_b.add_with_ids(xb[1500:], np.arange(1500, len(xb)))
    part_a.merge_from(part_b)
    assert part_a.ntotal == len(xb) and part_b.ntotal == 0
    Dw, Iw = whole.search(xq, 10, {"nprobe": 4})
    Dm, Im = part_a.search(xq, 10, {"nprobe": 4})
    np.testing.assert_array_equal(Im, Iw)
    np.testing.assert_allclose(Dm, Dw, rtol=1e-6)
    other = IVFSAQIndex(D, 16, 4, seed=1)
    other.train(xb)
    with pytest.raises(ValueError, match="seed|trained separately"):
        part_a.merge_from(other)
    with pytest.raises(ValueError, match="cannot merge a FlatIndex"):
        part_a.merge_from(FlatIndex(D))


def test_remove_reconstruct_reset(data, trained):
    xb, xq = data
    index = filled(trained, xb)
    before = np.sum((index.reconstruct(11) - xb[11]) ** 2) / np.sum(xb[11] ** 2)
    assert before < 0.2
    assert index.remove_ids(np.arange(0, 3000, 2)) == 1500
    _, I = index.search(xq, 10, {"nprobe": 16})
    assert (I % 2 == 1).all()
    assert np.all(np.diff(index.lists.numpy()) >= 0)  # storage stays grouped by list
    index.reset()
    assert index.ntotal == 0 and index.is_trained
    _, I = index.search(xq, 3)
    assert (I == -1).all()


def test_range_search_matches_estimates(data):
    xb, xq = data
    index = IVFSAQIndex(D, 4, 4)
    index.train(xb)
    index.add(xb)
    index.backend = "torch"  # range_search scans in torch: the radius below is one of these exact floats
    D0, I0 = index.search(xq[:5], 50, {"nprobe": 4, "bound_m": 0})
    # below every query's 50th estimate, so each query's hits are all among its 50 estimated nearest
    radius = float(min(np.median(D0[:, 20]), D0[:, 49].min()))
    lims, dist, ids = index.range_search(xq[:5], radius, {"nprobe": 4})
    assert lims[-1] >= 5 * 5  # not vacuous: a few hits per query
    for i in range(5):
        expect = D0[i] < radius
        assert expect.sum() < 50
        got = dist[lims[i] : lims[i + 1]]
        assert len(got) == expect.sum()
        np.testing.assert_allclose(got, D0[i][expect], rtol=1e-5)
        assert set(ids[lims[i] : lims[i + 1]].tolist()) == set(I0[i][expect].tolist())


def test_constructor_and_train_errors(data):
    xb, _ = data
    with pytest.raises(ValueError, match="nlist"):
        IVFSAQIndex(D, 0, 4)
    with pytest.raises(ValueError, match="bits"):
        IVFSAQIndex(D, 4, 0)
    with pytest.raises(ValueError, match="nprobe"):
        IVFSAQIndex(D, 4, 4, nprobe=0)
    index = IVFSAQIndex(D, 64, 4)
    with pytest.raises(ValueError, match="at least nlist=64"):
        index.train(xb[:10])
    assert not index.is_trained


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda ix, xb, xq: ix.search(xq, 0), ValueError, "k must be"),
        (lambda ix, xb, xq: ix.search(xq[:, :5], 3), ValueError, "expected shape"),
        (lambda ix, xb, xq: ix.search(np.full((1, D), np.nan, np.float32), 3), ValueError, "NaN"),
        (lambda ix, xb, xq: ix.search(xq, 3, {"nprobe": 0}), ValueError, "nprobe"),
        (lambda ix, xb, xq: ix.search(xq, 3, {"bound_m": -1.0}), ValueError, "bound_m"),
        (lambda ix, xb, xq: ix.search(xq, 3, {"k_factor": 2}), ValueError, "IVFSAQIndex does not use .*'k_factor'"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:2], np.array([5, 5])), ValueError, "duplicates"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:2], np.array([5.0, 6.0])), ValueError, "integer"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:2], np.array([1, 6])), ValueError, "already in the index"),
        (lambda ix, xb, xq: ix.add(np.full((2, D), np.inf, np.float32)), ValueError, "NaN or Inf"),
        (lambda ix, xb, xq: ix.train(xb), ValueError, "reset"),
        (lambda ix, xb, xq: ix.reconstruct(10**9), KeyError, "not in the index"),
    ],
)
def test_rejected_calls_leave_index_unchanged(data, trained, call, error, match):
    from vqlib.anns import serialize_index

    xb, xq = data
    index = filled(trained, xb[:300])
    before = serialize_index(index)
    with pytest.raises(error, match=match):
        call(index, xb, xq)
    assert serialize_index(index) == before


def test_coarse_quantizer_is_a_component(data, trained):
    xb, xq = data
    coarse = FlatIndex(D)
    coarse.add(trained.centroids)
    given = IVFSAQIndex(D, 16, 4, quantizer=coarse)
    given.train(xb)  # keeps the given centroids, fits SAQ on the residuals
    assert given.quantizer is coarse and torch.equal(given.centroids, trained.centroids)
    assert all(torch.equal(a, b) for a, b in zip(given.saq.state_dict().values(), trained.saq.state_dict().values())
               if torch.is_tensor(a))  # fmt: skip
    ref = filled(trained, xb)
    given.add(xb)
    for a, b in zip(ref.search(xq, 10, {"nprobe": 4}), given.search(xq, 10, {"nprobe": 4})):
        np.testing.assert_array_equal(a, b)
    # k-means training fills an empty quantiser
    assert trained.quantizer.ntotal == 16 and torch.equal(trained.quantizer.vectors, trained.centroids)
    two = FlatIndex(D)
    two.add(xb[:2])
    with pytest.raises(ValueError, match="quantizer holds 2 vectors"):
        IVFSAQIndex(D, 16, 4, quantizer=two)
    with pytest.raises(ValueError, match="quantizer has dimension 8"):
        IVFSAQIndex(D, 16, 4, quantizer=FlatIndex(8))
    with pytest.raises(ValueError, match="quantizer must be a FlatIndex"):
        IVFSAQIndex(D, 16, 4, quantizer=SAQIndex(D, 4))


def test_file_parameters_are_the_recorded_config(trained):
    import json
    import struct

    raw = serialize_index(trained)
    header = json.loads(raw[20 : 20 + struct.unpack_from("<Q", raw, 12)[0]])
    init = trained.config["init_args"]
    assert {k: header["params"][k] for k in init} == {**init, "quantizer": None}
    assert header["params"]["plan"] == [list(p) for p in trained.saq.plan]


def test_profile_times_stages_only_when_asked(data, trained):
    xb, xq = data
    index = filled(trained, xb[:500])
    index.search(xq, 10, {"nprobe": 4})
    assert not index.profile and index.last_search_stats["seconds"] == [0.0] * len(index.last_search_stats["pairs"])
    index.profile = True
    counted = index.search(xq, 10, {"nprobe": 4})
    assert sum(index.last_search_stats["seconds"]) > 0
    index.profile = False
    for a, b in zip(counted, index.search(xq, 10, {"nprobe": 4})):
        np.testing.assert_array_equal(a, b)
