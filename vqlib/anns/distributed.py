"""Sharded indexes on Ray: one trained index copied to every shard, shards filled and searched in parallel.

    import ray
    from vqlib.anns import index_factory
    from vqlib.anns.distributed import ShardedIndex

    ray.init()
    index = ShardedIndex(index_factory(128, "IVF1024,SAQ4"), num_shards=8)
    index.train(xb_sample)          # here, once: one coarse quantiser and one codec for all shards
    index.add(xb)                   # rows split in contiguous parts, each added by its shard's actor
    D, I = index.search(xq, 10)     # every shard searched in parallel, top k merged

Every shard is a Ray actor holding a copy of the same trained (empty) index, sent through the index's own
documented bytes (:func:`~vqlib.anns.serialize_index`, never pickle of live objects). Because all shards share the
coarse centroids and the codec, a vector gets the same code in whichever shard it lands, so the merged top k is the
single index's top k (exactly so for the full scan, ``bound_m=0``; the pruned scan prunes against each shard's own
k-th distance, which only keeps more). Results are merged as FAISS's ``IndexShards`` merges them: per query, the
k best of all shards' lists (smallest distances for l2, largest scores for ip), ties to the lower shard, missing
results (id −1) last. Needs ``pip install 'vqlib[ray]'``; Ray's own cluster setup (``ray.init``) is the caller's.
"""

from __future__ import annotations

import numpy as np

from .base import Index
from .serialize import deserialize_index, serialize_index

__all__ = ["ShardedIndex", "merge_results"]


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError("vqlib.anns.distributed needs Ray: pip install 'vqlib[ray]'") from err
    if not ray.is_initialized():
        raise RuntimeError("Ray is not running: call ray.init() (or ray.init(address=...)) first")
    return ray


class _Shard:
    """One shard (a Ray actor): an index rebuilt from the template's bytes."""

    def __init__(self, blob: bytes):
        self.index = deserialize_index(blob)

    def add_with_ids(self, x, ids):
        self.index.add_with_ids(x, ids)
        return self.index.ntotal

    def search(self, x, k, params):
        return self.index.search(x, k, params)

    def ntotal(self) -> int:
        return self.index.ntotal

    def set_params(self, values: dict):
        for name, value in values.items():
            setattr(self.index, name, value)

    def serialize(self) -> bytes:
        return serialize_index(self.index)


def merge_results(dists: list[np.ndarray], ids: list[np.ndarray], k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` per query over several shards' ``(D, I)`` results, as FAISS's ``IndexShards`` merges them.

    Each shard's lists are best first; ties go to the lower shard (then to the earlier rank), missing results
    (``I = −1``) come last with distance +inf (l2) or −inf (ip).
    """
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
    if not dists or len(dists) != len(ids):
        raise ValueError(f"expected one (D, I) pair per shard, got {len(dists)} D and {len(ids)} I")
    d = np.concatenate(dists, axis=1)
    i = np.concatenate(ids, axis=1)
    key = np.where(i >= 0, d if metric == "l2" else -d, np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]  # stable: shard order, then rank, breaks ties
    out_d = np.take_along_axis(d, order, 1)
    out_i = np.take_along_axis(i, order, 1)
    missing = out_i < 0
    out_d[missing] = np.inf if metric == "l2" else -np.inf
    if out_d.shape[1] < k:  # fewer results than k in all shards together
        pad = k - out_d.shape[1]
        out_d = np.pad(out_d, ((0, 0), (0, pad)), constant_values=np.inf if metric == "l2" else -np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_d.astype(np.float32), out_i.astype(np.int64)


class ShardedIndex:
    """An index split over ``num_shards`` Ray actors, all copies of one trained ``template``.

    Args:
        template: an untrained (or trained, empty) vqlib index; :meth:`train` trains it here, once.
        num_shards: number of actors.
        num_cpus: CPUs Ray reserves per shard actor.
    """

    def __init__(self, template: Index, num_shards: int, num_cpus: float = 1):
        if not isinstance(template, Index):
            raise TypeError(f"template must be a vqlib.anns index, got {type(template).__name__}")
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
        if template.ntotal:
            raise ValueError(f"template must be empty (it holds {template.ntotal} vectors): shards are filled by add()")
        self.template, self.num_shards, self.num_cpus = template, num_shards, num_cpus
        self.metric, self.d = template.metric, template.d
        self._actors: list | None = None
        self.next_id = 0

    @property
    def is_trained(self) -> bool:
        return self.template.is_trained

    def train(self, x) -> None:
        """Train the template here: every shard gets the same coarse quantiser and codec."""
        self.template.train(x)
        self._actors = None

    def _shards(self) -> list:
        if self._actors is None:
            if not self.template.is_trained:
                raise RuntimeError("ShardedIndex is not trained: call train(x) first")
            ray = _ray()
            blob = ray.put(serialize_index(self.template))
            actor = ray.remote(num_cpus=self.num_cpus)(_Shard)
            self._actors = [actor.remote(blob) for _ in range(self.num_shards)]
        return self._actors

    def add(self, x, ids=None) -> None:
        """Split the rows of ``x`` into ``num_shards`` contiguous parts, added in parallel (ids default 0, 1, ...)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected vectors of shape (n, {self.d}), got {x.shape}")
        ids = np.arange(self.next_id, self.next_id + len(x)) if ids is None else np.asarray(ids, dtype=np.int64)
        if ids.shape != (len(x),):
            raise ValueError(f"expected {len(x)} ids, got shape {ids.shape}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique")
        ray, shards = _ray(), self._shards()
        bounds = np.linspace(0, len(x), self.num_shards + 1).astype(int)
        ray.get([s.add_with_ids.remote(x[a:b], ids[a:b]) for s, a, b in zip(shards, bounds[:-1], bounds[1:]) if b > a])
        self.next_id = max(self.next_id, int(ids.max()) + 1) if len(ids) else self.next_id

    @property
    def ntotal(self) -> int:
        if self._actors is None:
            return 0
        return sum(_ray().get([s.ntotal.remote() for s in self._actors]))

    def set_search_params(self, **values) -> None:
        """Set search attributes (``nprobe``, ``bound_m``, ``backend``, ...) on every shard."""
        _ray().get([s.set_params.remote(values) for s in self._shards()])

    def search(self, x, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` as :meth:`vqlib.anns.Index.search`: all shards in parallel, merged (:func:`merge_results`)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        ray, shards = _ray(), self._shards()
        ref = ray.put(x)
        parts = ray.get([s.search.remote(ref, k, params) for s in shards])
        return merge_results([p[0] for p in parts], [p[1] for p in parts], k, self.metric)

    def shards(self) -> list[Index]:
        """Copies of the shards' indexes (through their bytes)."""
        return [deserialize_index(b) for b in _ray().get([s.serialize.remote() for s in self._shards()])]
