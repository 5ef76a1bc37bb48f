"""RefineIndex: exact re-ranking around Flat, SAQ and IVF-SAQ indexes."""

import numpy as np
import pytest
import torch

from vqlib.anns import FlatIndex, IVFSAQIndex, RefineIndex, SAQIndex, read_index, serialize_index, write_index
from vqlib.quantizers import pairwise_distances

from .conftest import D

BASES = {
    "flat": lambda metric: FlatIndex(D, metric),
    "saq": lambda metric: SAQIndex(D, 2, metric=metric),
    "ivf": lambda metric: IVFSAQIndex(D, 8, 2, metric=metric, nprobe=4),
}


def built(xb, base, metric="l2", k_factor=3):
    index = RefineIndex(BASES[base](metric), k_factor=k_factor)
    index.train(xb)
    index.add(xb[:1500])
    index.add_with_ids(xb[1500:2000], np.arange(5000, 5500))
    return index


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_reranks_the_base_candidates_exactly(data, base, metric):
    xb, xq = data
    index = built(xb, base, metric)
    _, cand = index.base.search(xq, 30)  # k·k_factor candidates of the base
    Dr, Ir = index.search(xq, 10)
    vectors = {int(i): index.reconstruct(int(i)) for i in np.unique(cand)}
    for q in range(len(xq)):
        ids = cand[q][cand[q] >= 0]
        exact = pairwise_distances(torch.from_numpy(xq[q : q + 1]).double(),
                                   torch.from_numpy(np.stack([vectors[int(i)] for i in ids])).double(), metric)[0]  # fmt: skip
        best = exact.topk(10, largest=metric == "ip")
        assert set(Ir[q].tolist()) == set(ids[best.indices.numpy()].tolist())
        np.testing.assert_allclose(np.sort(Dr[q]), np.sort(best.values.numpy()), rtol=1e-4, atol=1e-4)
    if base == "flat":  # re-ranking exact candidates changes nothing
        Df, If = index.base.search(xq, 10)
        np.testing.assert_array_equal(Ir, If)


def test_refine_keeps_exact_vectors_and_ids(data):
    xb, xq = data
    index = built(xb, "ivf")
    assert index.ntotal == index.base.ntotal == 2000
    np.testing.assert_array_equal(index.reconstruct(5003), xb[1503])  # the float vector, not the SAQ decode
    assert index.remove_ids(np.arange(0, 5500, 3)) == len(np.arange(0, 1500, 3)) + len(np.arange(5001, 5500, 3))
    assert torch.equal(index.ids, index.base.ids)
    _, I = index.search(xq, 10)
    assert (I % 3 != 0).all()
    np.testing.assert_array_equal(index.reconstruct(5003), xb[1503])
    index.reset()
    assert index.ntotal == index.base.ntotal == 0 and index.is_trained
    index.add(xb[:10])
    assert index.search(xb[:1], 1)[1][0, 0] == 0  # ids restart after reset


def test_merge(data):
    xb, xq = data
    whole = built(xb, "saq")
    part_a = RefineIndex(SAQIndex(D, 2), k_factor=3)
    part_a.train(xb)
    part_b = read_index_copy(part_a)
    part_a.add(xb[:1500])
    part_b.add_with_ids(xb[1500:2000], np.arange(5000, 5500))
    part_a.merge_from(part_b)
    assert part_b.ntotal == 0 and part_a.ntotal == 2000
    for a, b in zip(whole.search(xq, 10), part_a.search(xq, 10)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="cannot merge a refined FlatIndex into a refined SAQIndex"):
        part_a.merge_from(RefineIndex(FlatIndex(D)))


def read_index_copy(index):
    from vqlib.anns import deserialize_index

    return deserialize_index(serialize_index(index))


def test_search_parameters_pass_through(data):
    xb, xq = data
    index = built(xb, "ivf")
    assert index.search_params == ("k_factor", "nprobe", "bound_m")
    wide = index.search(xq, 10, {"nprobe": 8, "k_factor": 6, "bound_m": 0})
    narrow = index.search(xq, 10, {"nprobe": 1, "k_factor": 1})
    assert not np.array_equal(wide[1], narrow[1])
    flat = built(xb, "flat")
    with pytest.raises(ValueError, match="RefineIndex does not use the search parameter 'nprobe'"):
        flat.search(xq, 5, {"nprobe": 2})


@pytest.mark.parametrize("base", BASES)
def test_file_round_trip(data, tmp_path, base):
    xb, xq = data
    index = built(xb, base, "ip")
    loaded = read_index(write_index(index, tmp_path / "r.vqann"))
    assert type(loaded) is RefineIndex and type(loaded.base) is type(index.base) and loaded.k_factor == 3
    for a, b in zip(index.search(xq, 10), loaded.search(xq, 10)):
        np.testing.assert_array_equal(a, b)
    loaded.add(xb[2000:2001])
    np.testing.assert_array_equal(loaded.reconstruct(5500), xb[2000])  # ids continue after the largest


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda ix, xb, xq: ix.search(xq, 5, {"k_factor": 0}), "k_factor must be"),
        (lambda ix, xb, xq: ix.search(xq, 5, {"nprobe": 0}), "nprobe must be"),
        (lambda ix, xb, xq: ix.add(xb[:2, :5]), "expected shape"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:2], np.array([3, 3])), "duplicates"),
        (lambda ix, xb, xq: ix.add_with_ids(xb[:2], np.array([0, 9000])), "already in the index"),
        (lambda ix, xb, xq: ix.train(xb), "reset"),
        (lambda ix, xb, xq: ix.merge_from(FlatIndex(D)), "cannot merge a FlatIndex"),
    ],
)
def test_rejected_calls_leave_index_unchanged(data, call, match):
    xb, xq = data
    index = RefineIndex(IVFSAQIndex(D, 4, 2), k_factor=2)
    index.train(xb)
    index.add(xb[:200])
    before = serialize_index(index)
    with pytest.raises(ValueError, match=match):
        call(index, xb, xq)
    assert serialize_index(index) == before


def test_constructor_errors(data):
    xb, _ = data
    full = FlatIndex(D)
    full.add(xb[:3])
    with pytest.raises(ValueError, match="base holds 3 vectors"):
        RefineIndex(full)
    with pytest.raises(ValueError, match="base must be a vqlib.anns index"):
        RefineIndex(np.zeros((3, D)))
    with pytest.raises(ValueError, match="k_factor must be a positive integer"):
        RefineIndex(FlatIndex(D), k_factor=0)
    assert RefineIndex(FlatIndex(D).config).base.d == D  # a config stands for the base
