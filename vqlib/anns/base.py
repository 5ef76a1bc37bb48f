"""What every vqlib.anns index shares: the FAISS interface, input checks, ids and pickling.

The index classes (:class:`~vqlib.anns.flat.FlatIndex`, :class:`~vqlib.anns.saq_index.SAQIndex`,
:class:`~vqlib.anns.ivf_saq.IVFSAQIndex`, the wrapper :class:`~vqlib.anns.refine.RefineIndex`)
implement a handful of ``_``-hooks on the tensors they store and declare the
:class:`SearchParams` fields they use (``search_params``; any other field is
refused). Constructor arguments are recorded by :class:`~vqlib.quantizers.ConfigMixin`
(``index.config``), which is also what the index file stores as parameters.
This class turns numpy or torch input into checked
float32 tensors, keeps the external ids, pads results the FAISS way (I = −1,
D = +inf for L2 and −inf for IP) and rejects bad input *before* any state
changes, so a rejected call never leaves the index half-modified.

Ids are persistent labels (FAISS ``IndexIDMap`` semantics): ``add`` numbers new
vectors from one past the largest id ever stored, ``remove_ids`` does not
renumber the others. Ids are non-negative (−1 marks a missing result).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..quantizers import ConfigMixin, NotFittedError

__all__ = ["Index", "SearchParams", "get_num_threads", "set_num_threads"]

METRICS = ("l2", "ip")
#: the fields of :class:`SearchParams`
SEARCH_PARAMS = ("nprobe", "k_factor", "bound_m")


def set_num_threads(n: int) -> None:
    """Threads used by searches and training (torch's intra-op pool, as ``faiss.omp_set_num_threads``)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    torch.set_num_threads(n)


def get_num_threads() -> int:
    return torch.get_num_threads()


@dataclass
class SearchParams:
    """Per-call search settings (``None`` keeps the index's own setting), like ``faiss.SearchParametersIVF``.

    Args:
        nprobe: inverted lists visited per query (IVF indexes).
        k_factor: with refinement, ``k·k_factor`` candidates are re-ranked exactly.
        bound_m: multi-stage pruning bound in standard deviations; ``0`` turns pruning off (full scan).
    """

    nprobe: int | None = None
    k_factor: int | None = None
    bound_m: float | None = None

    @staticmethod
    def of(params) -> SearchParams:
        if params is None:
            return SearchParams()
        if isinstance(params, SearchParams):
            return params
        if isinstance(params, dict):
            unknown = set(params) - set(SEARCH_PARAMS)
            if unknown:
                raise ValueError(f"unknown search parameters {sorted(unknown)}; expected nprobe, k_factor, bound_m")
            return SearchParams(**params)
        raise ValueError(f"params must be a SearchParams, a dict or None, got {type(params).__name__}")


def check_search_values(params: SearchParams) -> None:
    """ValueError for a search setting out of range (shared by constructors and ``search``)."""
    if params.k_factor is not None and (not isinstance(params.k_factor, int) or params.k_factor < 1):
        raise ValueError(f"k_factor must be a positive integer, got {params.k_factor!r}")
    if params.bound_m is not None and not params.bound_m >= 0:
        raise ValueError(f"bound_m must be >= 0, got {params.bound_m!r}")
    if params.nprobe is not None and (not isinstance(params.nprobe, int) or params.nprobe < 1):
        raise ValueError(f"nprobe must be a positive integer, got {params.nprobe!r}")


class Index(ConfigMixin):
    """Base of the vqlib.anns indexes; see the module docstring for the conventions."""

    _config_default_module = "vqlib.anns"
    #: queries searched at once; bounds the working memory of one search call
    query_batch = 1024
    #: the :class:`SearchParams` fields this index uses; ``search`` refuses the others
    search_params: tuple[str, ...] = ()

    def __init__(self, d: int, metric: str = "l2"):
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
            raise ValueError(f"dimension d must be a positive integer, got {d!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.d, self.metric = int(d), metric
        self.ids = torch.zeros(0, dtype=torch.int64)
        self.next_id = 0

    # ---- properties ----------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    @property
    def is_trained(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.d}, metric={self.metric!r}, ntotal={self.ntotal}, is_trained={self.is_trained})"

    # ---- public API ----------------------------------------------------------

    def train(self, x) -> None:
        x = self._vectors(x, "training vectors")
        if self.ntotal:
            raise ValueError(f"index holds {self.ntotal} vectors; call reset() before training again")
        if len(x) == 0:
            raise ValueError("need at least one training vector")
        self._train(x)

    def add(self, x) -> None:
        x = self._vectors(x, "vectors")
        self._require_trained()
        ids = torch.arange(self.next_id, self.next_id + len(x), dtype=torch.int64)
        self._add_checked(x, ids)

    def add_with_ids(self, x, ids) -> None:
        x = self._vectors(x, "vectors")
        ids = self._ids(ids, "ids")
        if len(ids) != len(x):
            raise ValueError(f"got {len(x)} vectors but {len(ids)} ids")
        if len(torch.unique(ids)) != len(ids):
            raise ValueError("ids contain duplicates")
        clash = torch.isin(ids, self.ids)
        if clash.any():
            raise ValueError(f"ids already in the index: {ids[clash][:5].tolist()}")
        self._require_trained()
        self._add_checked(x, ids)

    def search(self, x, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)``: float32 and int64 arrays ``(n, k)``, best first; missing results are ``I = −1``."""
        x = self._vectors(x, "queries")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        params = SearchParams.of(params)
        self._check_params(params)
        self._require_trained()
        k = int(k)
        dist = torch.full((len(x), k), self._missing, dtype=torch.float32)
        ids = torch.full((len(x), k), -1, dtype=torch.int64)
        if self.ntotal:
            for i in range(0, len(x), self.query_batch):
                d, pos = self._search(x[i : i + self.query_batch], min(k, self.ntotal), params)
                found = pos >= 0
                dist[i : i + len(d), : d.shape[1]] = torch.where(found, d, self._missing)
                ids[i : i + len(d), : d.shape[1]] = torch.where(found, self.ids[pos.clamp_min(0)], -1)
        return dist.numpy(), ids.numpy()

    def range_search(self, x, radius: float, params=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lims, D, I)``: results of query ``i`` are ``D[lims[i]:lims[i+1]]``, sorted best first.

        L2 keeps distances ``< radius``, IP inner products ``> radius`` (FAISS's convention).
        """
        x = self._vectors(x, "queries")
        radius = float(radius)
        if np.isnan(radius):
            raise ValueError("radius is NaN")
        params = SearchParams.of(params)
        self._check_params(params)
        self._require_trained()
        lims, dists, ids = [0], [], []
        for i in range(len(x)):
            if self.ntotal:
                d, pos = self._range_search(x[i : i + 1], radius, params)
            else:
                d, pos = torch.zeros(0), torch.zeros(0, dtype=torch.int64)
            order = torch.argsort(d, descending=self.metric == "ip", stable=True)
            dists.append(d[order].float())
            ids.append(self.ids[pos[order]])
            lims.append(lims[-1] + len(d))
        return np.asarray(lims, dtype=np.int64), torch.cat(dists).numpy(), torch.cat(ids).numpy()

    def reconstruct(self, key: int) -> np.ndarray:
        if not isinstance(key, (int, np.integer)) or isinstance(key, bool):
            raise ValueError(f"id must be an integer, got {key!r}")
        where = (self.ids == int(key)).nonzero()
        if len(where) == 0:
            raise KeyError(f"id {key} is not in the index")
        return self._reconstruct(int(where[0, 0])).numpy()

    def remove_ids(self, ids) -> int:
        """Removes the given ids (absent ones are ignored); returns how many were removed."""
        ids = self._ids(ids, "ids")
        keep = ~torch.isin(self.ids, ids)
        removed = int((~keep).sum())
        if removed:
            self._keep(keep)
        return removed

    def reset(self) -> None:
        """Removes all vectors; the training (codec, centroids) stays."""
        self._keep(torch.zeros(self.ntotal, dtype=torch.bool))
        self.next_id = 0

    def merge_from(self, other: Index) -> None:
        """Moves all vectors of ``other`` (same type and training) into this index; ``other`` is left empty."""
        if type(other) is not type(self):
            raise ValueError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        if other.d != self.d or other.metric != self.metric:
            raise ValueError(f"cannot merge d={other.d}, metric={other.metric!r} into d={self.d}, metric={self.metric!r}")
        self._check_compatible(other)
        clash = torch.isin(other.ids, self.ids)
        if clash.any():
            raise ValueError(f"ids present in both indexes: {other.ids[clash][:5].tolist()}")
        self._merge(other)
        self.next_id = max(self.next_id, other.next_id)
        other.reset()

    # ---- hooks for the index classes ---------------------------------------

    def _train(self, x: torch.Tensor) -> None:
        pass

    def _add(self, x: torch.Tensor, ids: torch.Tensor) -> None:
        raise NotImplementedError

    def _search(self, x: torch.Tensor, k: int, params: SearchParams) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances, storage positions or −1), ``(n, k)``, best first."""
        raise NotImplementedError

    def _range_search(self, x: torch.Tensor, radius: float, params: SearchParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances and storage positions of the hits of one query."""
        raise NotImplementedError

    def _reconstruct(self, pos: int) -> torch.Tensor:
        raise NotImplementedError

    def _keep(self, keep: torch.Tensor) -> None:
        """Keep the stored vectors where ``keep`` (bool, ``(ntotal,)``) is true."""
        raise NotImplementedError

    def _merge(self, other: Index) -> None:
        raise NotImplementedError

    def _check_compatible(self, other: Index) -> None:
        pass

    def _check_params(self, params: SearchParams) -> None:
        for name in SEARCH_PARAMS:
            if getattr(params, name) is not None and name not in self.search_params:
                takes = ", ".join(self.search_params) or "no search parameters"
                raise ValueError(
                    f"{type(self).__name__} does not use the search parameter {name!r} (it takes {takes}); leave it out"
                )
        check_search_values(params)

    def _recorded_params(self) -> dict:
        """The recorded constructor arguments, with the current value of each search default."""
        params = dict(self.config["init_args"])
        params.update({name: getattr(self, name) for name in self.search_params})
        return params

    def _state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able parameters, named tensors) for :mod:`vqlib.anns.serialize`."""
        raise NotImplementedError

    @classmethod
    def _from_state(cls, params: dict, arrays: dict[str, torch.Tensor]) -> Index:
        raise NotImplementedError

    # save_pretrained / from_pretrained (ConfigMixin): the index file's parameters and arrays as
    # config.json + model.safetensors; write_index / read_index keep the single-file form

    def _pretrained_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        params, tensors = self._state()
        return tensors, {"type": type(self).__name__, "params": params}

    @classmethod
    def _from_pretrained_state(cls, config, tensors, extra):
        from .serialize import index_class, state_to_index

        target = index_class(extra.get("type", ""))
        if not issubclass(target, cls):
            raise ValueError(f"the folder holds a {target.__name__}, not a {cls.__name__}")
        return state_to_index(target, extra["params"], tensors)

    # ---- shared helpers ------------------------------------------------------

    @property
    def _missing(self) -> float:
        return float("inf") if self.metric == "l2" else float("-inf")

    def _add_checked(self, x: torch.Tensor, ids: torch.Tensor) -> None:
        if len(x) == 0:
            return
        self._add(x, ids)
        self.next_id = max(self.next_id, int(ids.max()) + 1)

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise NotFittedError(f"{type(self).__name__} is not trained: call train(x) first")

    def _vectors(self, x, what: str) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        elif not isinstance(x, torch.Tensor):
            raise ValueError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"{what}: expected shape (n, {self.d}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{what}: expected floating point values, got {x.dtype}")
        x = x.detach().to("cpu", torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError(f"{what}: contain NaN or Inf")
        return x.contiguous()

    @staticmethod
    def _ids(ids, what: str) -> torch.Tensor:
        if isinstance(ids, np.ndarray):
            if ids.dtype.kind not in "iu":
                raise ValueError(f"{what}: expected an integer array (int64), got dtype {ids.dtype}")
            ids = torch.from_numpy(ids.astype(np.int64))
        elif isinstance(ids, torch.Tensor):
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise ValueError(f"{what}: expected an integer tensor (int64), got dtype {ids.dtype}")
            ids = ids.to("cpu", torch.int64)
        else:
            raise ValueError(f"{what}: expected a numpy array or torch tensor of int64, got {type(ids).__name__}")
        if ids.ndim != 1:
            raise ValueError(f"{what}: expected a 1-D array, got shape {tuple(ids.shape)}")
        if len(ids) and int(ids.min()) < 0:
            raise ValueError(f"{what}: must be non-negative (-1 marks a missing result), got {int(ids.min())}")
        return ids

    # ---- pickling through the index file format ------------------------------

    def __getstate__(self):
        from .serialize import serialize_index

        return {"vqlib.anns": serialize_index(self)}

    def __setstate__(self, state):
        from .serialize import deserialize_index

        self.__dict__.update(deserialize_index(state["vqlib.anns"]).__dict__)
