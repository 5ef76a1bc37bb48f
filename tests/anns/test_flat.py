"""FlatIndex against FAISS, and the shared index semantics (ids, removal, merge, bad input)."""

import faiss
import numpy as np
import pytest
import torch

from vqlib.anns import FlatIndex, serialize_index

from .conftest import D


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_matches_faiss(data, metric):
    xb, xq = data
    ref = faiss.IndexFlatL2(D) if metric == "l2" else faiss.IndexFlatIP(D)
    ref.add(xb)
    Dr, Ir = ref.search(xq, 10)
    index = FlatIndex(D, metric)
    index.add(xb)
    Dv, Iv = index.search(xq, 10)
    assert Dv.dtype == np.float32 and Iv.dtype == np.int64 and Dv.shape == (len(xq), 10)
    np.testing.assert_array_equal(Iv, Ir)
    np.testing.assert_allclose(Dv, Dr, rtol=1e-4, atol=1e-4 * float(np.abs(Dr).max()))


def test_torch_input_and_padding(data):
    xb, xq = data
    index = FlatIndex(D)
    index.add(torch.from_numpy(xb[:5]))
    Dv, Iv = index.search(torch.from_numpy(xq[:3]), 8)
    assert (Iv[:, :5] >= 0).all() and (Iv[:, 5:] == -1).all() and np.isinf(Dv[:, 5:]).all() and (Dv[:, 5:] > 0).all()
    ip = FlatIndex(D, "ip")
    Dv, Iv = ip.search(xq[:2], 3)  # empty index: all missing
    assert (Iv == -1).all() and (Dv == -np.inf).all()


def test_range_search_brute_force(data):
    xb, xq = data
    index = FlatIndex(D)
    index.add(xb)
    d2 = ((xq[:20, None, :].astype(np.float64) - xb[None].astype(np.float64)) ** 2).sum(-1)
    radius = float(np.quantile(d2, 0.01))
    lims, dist, ids = index.range_search(xq[:20], radius)
    assert lims.shape == (21,) and lims[-1] == len(dist) == len(ids)
    for i in range(20):
        expect = set(np.nonzero(d2[i] < radius)[0].tolist())
        near_edge = set(np.nonzero(np.abs(d2[i] - radius) < 1e-3 * radius)[0].tolist())
        got = set(ids[lims[i] : lims[i + 1]].tolist())
        assert got ^ expect <= near_edge
        assert np.all(np.diff(dist[lims[i] : lims[i + 1]]) >= 0)


def test_ids_remove_reconstruct_merge_reset(data):
    xb, xq = data
    index = FlatIndex(D)
    index.add(xb[:10])
    index.add_with_ids(xb[10:20], np.arange(100, 110))
    index.add(xb[20:25])  # numbered after the largest id so far
    assert index.ntotal == 25
    np.testing.assert_array_equal(index.reconstruct(105), xb[15])
    np.testing.assert_array_equal(index.reconstruct(112), xb[22])
    assert index.remove_ids(np.array([0, 105, 999])) == 2
    assert index.ntotal == 23
    with pytest.raises(KeyError):
        index.reconstruct(105)
    _, I = index.search(xb[15:16], 1)
    assert I[0, 0] != 105
    _, I = index.search(xb[16:17], 1)
    assert I[0, 0] == 106  # the others keep their ids
    other = FlatIndex(D)
    other.add_with_ids(xb[30:35], np.arange(500, 505))
    index.merge_from(other)
    assert index.ntotal == 28 and other.ntotal == 0
    np.testing.assert_array_equal(index.reconstruct(503), xb[33])
    clash = FlatIndex(D)
    clash.add_with_ids(xb[40:41], np.array([503]))
    with pytest.raises(ValueError, match="both"):
        index.merge_from(clash)
    index.reset()
    assert index.ntotal == 0
    index.add(xb[:2])
    _, I = index.search(xb[:2], 1)
    assert I[:, 0].tolist() == [0, 1]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda ix, xb, xq: ix.search(xq, 0), "k must be"),
        (lambda ix, xb, xq: ix.search(xq, -3), "k must be"),
        (lambda ix, xb, xq: ix.search(xq[:, :10], 5), "expected shape"),
        (lambda ix, xb, xq: ix.search(np.full((2, D), np.nan, np.float32), 5), "NaN"),
        (lambda ix, xb, xq: ix.search(xq.astype(np.int64), 5), "floating"),
        (lambda ix, xb, xq: ix.add(xb[:, :3]), "expected shape"),
        (lambda ix, xb, xq: ix.add(np.where(np.arange(D) == 3, np.inf, xb[:4]).astype(np.float32)), "NaN or Inf"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:3], np.array([1.0, 2.0, 3.0])), "integer"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:3], np.array([700, 701, 700])), "duplicates"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:2], np.array([0, 701])), "already in the index"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:2], np.array([-1, 701])), "non-negative"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:2], np.array([800])), "2 vectors but 1 ids"),
        (lambda ix, xb, xq: ix.remove_ids(np.array([0.5])), "integer"),
        (lambda ix, xb, xq: ix.search(xq, 5, {"nprob": 3}), "unknown search parameters"),
        (lambda ix, xb, xq: ix.search(xq, 5, {"nprobe": 3}), "FlatIndex does not use the search parameter 'nprobe'"),
        (lambda ix, xb, xq: ix.range_search(xq, 1.0, {"bound_m": 0}), "does not use the search parameter 'bound_m'"),
    ],
)
def test_bad_input_leaves_index_unchanged(data, call, match):
    xb, xq = data
    index = FlatIndex(D)
    index.add(xb[:50])
    before = serialize_index(index)
    with pytest.raises(ValueError, match=match):
        call(index, xb, xq)
    assert serialize_index(index) == before


def test_constructor_errors():
    with pytest.raises(ValueError, match="dimension"):
        FlatIndex(0)
    with pytest.raises(ValueError, match="metric"):
        FlatIndex(8, "cosine")
