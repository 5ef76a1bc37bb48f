"""Sharded search on Ray: merging as FAISS's IndexShards, and a sharded index equal to the single index."""

import numpy as np
import pytest
import torch

from vqlib.anns import IVFSAQIndex, deserialize_index, serialize_index
from vqlib.anns.distributed import ShardedIndex, merge_results


def data(n=3000, nq=40, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d)) * 3
    x = (centres[rng.integers(0, 12, n + nq)] + rng.standard_normal((n + nq, d))).astype(np.float32)
    return x[:n], x[n:]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_merge_equals_topk_of_all_shards(metric):
    rng = np.random.default_rng(1)
    nq, k, shards = 30, 7, 3
    ds, ids = [], []
    for s in range(shards):
        d = rng.standard_normal((nq, k)).astype(np.float32)
        d = np.sort(d, 1) if metric == "l2" else -np.sort(-d, 1)
        i = rng.permutation(1000)[: nq * k].reshape(nq, k) + 1000 * s
        i[:, -2:] = -1  # this shard found fewer than k
        d[:, -2:] = np.inf if metric == "l2" else -np.inf
        ds.append(d)
        ids.append(i)
    out_d, out_i = merge_results(ds, ids, k, metric)
    alld, alli = np.concatenate(ds, 1), np.concatenate(ids, 1)
    for q in range(nq):
        ok = alli[q] >= 0
        ref = np.sort(alld[q][ok]) if metric == "l2" else -np.sort(-alld[q][ok])
        np.testing.assert_array_equal(out_d[q], ref[:k])
        assert set(out_i[q].tolist()) <= set(alli[q][ok].tolist())


def test_merge_ties_go_to_lower_shard_and_pads():
    d = [np.array([[1.0, 2.0]], np.float32), np.array([[1.0, np.inf]], np.float32)]
    i = [np.array([[5, 6]]), np.array([[7, -1]])]
    out_d, out_i = merge_results(d, i, 4, "l2")
    assert out_i.tolist() == [[5, 7, 6, -1]]
    assert out_d[0, :3].tolist() == [1.0, 1.0, 2.0] and np.isinf(out_d[0, 3])
    with pytest.raises(ValueError, match="metric"):
        merge_results(d, i, 2, "cosine")
    with pytest.raises(ValueError, match="one \\(D, I\\) pair per shard"):
        merge_results(d, i[:1], 2, "l2")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_shards"):
        ShardedIndex(IVFSAQIndex(8, 2, 4), 0)
    with pytest.raises(TypeError, match="template"):
        ShardedIndex("IVF2,SAQ4", 2)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'vqlib[ray]' to run the sharded tests")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_sharded_index_equals_single_index(ray_local, metric):
    torch.manual_seed(0)
    xb, xq = data()
    trained = IVFSAQIndex(32, 8, 4, metric=metric)
    trained.train(xb)
    blob = serialize_index(trained)
    single = deserialize_index(blob)  # the same trained index, filled in one piece
    single.add(xb)
    sharded = ShardedIndex(deserialize_index(blob), num_shards=2)
    sharded.add(xb)
    assert sharded.ntotal == len(xb)
    for params in ({"nprobe": 3, "bound_m": 0}, {"nprobe": 8, "bound_m": 0}):
        d, i = sharded.search(xq, 10, params)
        rd, ri = single.search(xq, 10, params)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(d, rd)
    d, i = sharded.search(xq, 10, {"nprobe": 4})  # pruned: each shard prunes against its own k-th, keeping more
    rd, ri = single.search(xq, 10, {"nprobe": 4})
    assert np.mean([set(a.tolist()) == set(b.tolist()) for a, b in zip(i, ri)]) >= 0.975
    parts = sharded.shards()
    assert sorted(np.concatenate([p.ids.numpy() for p in parts]).tolist()) == list(range(len(xb)))
    assert all(torch.equal(p.centroids, single.centroids) for p in parts)  # one shared coarse quantiser
