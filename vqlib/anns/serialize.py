"""Index files: ``write_index(index, path)`` / ``read_index(path)``, a versioned binary format without pickle.

Layout (all integers little-endian)::

    offset 0        8 bytes   magic b"VQLIBANN"
    offset 8        uint32    format version (1)
    offset 12       uint64    H, length of the header
    offset 20       H bytes   header, UTF-8 JSON:
                                {"type": "IVFSAQIndex",            # the index class
                                 "params": {...},                   # its recorded constructor arguments
                                                                    # (index.config) and counters
                                 "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}
    offset 20 + H   payload   the arrays' raw C-order little-endian bytes; "offset" counts from here
    last 32 bytes   SHA-256   of every byte before it

A :class:`~vqlib.anns.refine.RefineIndex` is ``"type": "RefineIndex"`` with
``params = {"k_factor", "next_id", "base": {"type", "params"}}`` and arrays
``"vectors"`` plus the base's arrays prefixed ``"base."``. Files written before
refine became a wrapper (``"type": "SAQIndex"`` or ``"IVFSAQIndex"`` with
``"refine"`` among the params) are read into the same wrapper.

Readers check the magic, the version, the sizes and the checksum before
anything is built, and build a new index object from the verified arrays, so a
truncated or corrupt file raises :class:`IndexFileError` and nothing is half-loaded.
Writing goes through :func:`vqlib.io.atomic_write` (temporary file renamed
into place). Pickling an index stores exactly these bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from .base import Index

__all__ = ["IndexFileError", "read_index", "write_index", "serialize_index", "deserialize_index", "FORMAT_VERSION"]

MAGIC = b"VQLIBANN"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_DIGEST = 32
_DTYPES = {"float32": "<f4", "int64": "<i8", "int32": "<i4", "uint8": "u1"}


class IndexFileError(ValueError):
    """The bytes are not a complete, intact vqlib.anns index file."""


def _classes() -> dict[str, type[Index]]:
    from .flat import FlatIndex
    from .ivf_saq import IVFSAQIndex
    from .refine import RefineIndex
    from .saq_index import SAQIndex

    return {c.__name__: c for c in (FlatIndex, SAQIndex, IVFSAQIndex, RefineIndex)}


def index_class(name: str) -> type[Index]:
    """The index class a file's ``"type"`` names."""
    classes = _classes()
    if name not in classes:
        raise ValueError(f"unknown index type {name!r}; expected one of {sorted(classes)}")
    return classes[name]


# Parameters that version-1 files of SAQIndex carried because it was then a one-list IVFSAQIndex.
_V1_SAQ_INDEX_EXTRA = ("nlist", "nprobe", "kmeans_iters", "max_train_per_list")


def state_to_index(cls: type[Index], params: dict, arrays: dict[str, torch.Tensor]) -> Index:
    """Build an index of class ``cls`` from saved parameters and arrays (older layouts included)."""
    if cls.__name__ in ("SAQIndex", "IVFSAQIndex") and "refine" in params:
        # written when refine was a flag of the SAQ indexes: the float vectors rode along as "vectors"
        params = dict(params)
        refine, k_factor = params.pop("refine"), params.pop("k_factor")
        if cls.__name__ == "SAQIndex":
            for key in _V1_SAQ_INDEX_EXTRA:
                params.pop(key)
        arrays = dict(arrays)
        vectors = arrays.pop("vectors", None)
        base = cls._from_state(params, arrays)
        if not refine:
            return base
        from .refine import RefineIndex

        return RefineIndex.wrap_loaded(base, vectors, k_factor, params["next_id"])
    return cls._from_state(params, arrays)


def serialize_index(index: Index) -> bytes:
    if type(index) not in _classes().values():
        raise ValueError(f"cannot serialize {type(index).__name__}: not a vqlib.anns index")
    params, tensors = index._state()
    arrays, chunks, offset = [], [], 0
    for name, t in tensors.items():
        a = t.detach().cpu().contiguous().numpy()
        if a.dtype.name not in _DTYPES:
            raise ValueError(f"array {name!r} has unsupported dtype {a.dtype}")
        raw = a.astype(_DTYPES[a.dtype.name], copy=False).tobytes(order="C")
        arrays.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape), "offset": offset, "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    header = json.dumps({"type": type(index).__name__, "params": params, "arrays": arrays}).encode()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + b"".join(chunks)
    return body + hashlib.sha256(body).digest()


def deserialize_index(data: bytes) -> Index:
    data = memoryview(data)
    if len(data) < _PREFIX.size + _DIGEST:
        raise IndexFileError(f"index file is truncated: {len(data)} bytes, less than the fixed header")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise IndexFileError(f"not a vqlib.anns index file (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version > FORMAT_VERSION:
        raise IndexFileError(f"index file format version {version} is newer than this vqlib reads ({FORMAT_VERSION})")
    body = data[: len(data) - _DIGEST]
    if _PREFIX.size + hlen > len(body):
        raise IndexFileError("index file is truncated: the header runs past the end of the file")
    if hashlib.sha256(body).digest() != bytes(data[len(body) :]):
        raise IndexFileError("index file is corrupt or truncated: SHA-256 checksum mismatch")
    try:
        header = json.loads(bytes(data[_PREFIX.size : _PREFIX.size + hlen]))
        cls = index_class(header["type"])
    except (ValueError, KeyError) as e:
        raise IndexFileError(f"index file header is invalid: {e}") from None
    payload = body[_PREFIX.size + hlen :]
    arrays, expected = {}, 0
    for spec in header["arrays"]:
        dtype = np.dtype(_DTYPES[spec["dtype"]])
        if spec["offset"] != expected or spec["nbytes"] != dtype.itemsize * int(np.prod(spec["shape"], dtype=np.int64)):
            raise IndexFileError(f"index file array {spec['name']!r} has an inconsistent size or offset")
        expected += spec["nbytes"]
        if expected > len(payload):
            raise IndexFileError(f"index file is truncated inside array {spec['name']!r}")
        a = np.frombuffer(payload, dtype=dtype, count=spec["nbytes"] // dtype.itemsize, offset=spec["offset"])
        arrays[spec["name"]] = torch.from_numpy(a.reshape(spec["shape"]).astype(dtype.newbyteorder("="), copy=True))
    if expected != len(payload):
        raise IndexFileError(f"index file has {len(payload) - expected} unexpected trailing bytes")
    try:
        return state_to_index(cls, header["params"], arrays)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise IndexFileError(f"index file does not describe a valid {cls.__name__}: {e}") from None


def write_index(index: Index, path: str | os.PathLike) -> Path:
    """Writes ``index`` to ``path`` atomically (temporary file renamed into place)."""
    data = serialize_index(index)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_index(path: str | os.PathLike) -> Index:
    """Reads an index written by :func:`write_index`; raises :class:`IndexFileError` if it is damaged."""
    return deserialize_index(Path(path).read_bytes())
