"""Index files: round trips, pickling, and damaged files that must fail cleanly."""

import json
import os
import pickle
import struct

import numpy as np
import pytest

from vqlib.anns import FlatIndex, IndexFileError, index_factory, read_index, serialize_index, write_index
from vqlib.anns.serialize import FORMAT_VERSION, MAGIC

from .conftest import D

DESCRIPTIONS = ["Flat", "SAQ4", "SAQ1.5,Refine", "IVF8,SAQ3", "IVF8,SAQ2,Refine"]


def built(xb, description, metric="l2"):
    index = index_factory(D, description, metric=metric)
    index.train(xb)
    index.add_with_ids(xb[:400], np.arange(1000, 1400))
    index.remove_ids(np.arange(1000, 1010))
    return index


@pytest.mark.parametrize("description", DESCRIPTIONS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_round_trip_identical_results(data, tmp_path, description, metric):
    xb, xq = data
    index = built(xb, description, metric)
    path = write_index(index, tmp_path / "a.vqann")
    assert [p.name for p in tmp_path.iterdir()] == ["a.vqann"]  # no temporary file left behind
    loaded = read_index(path)
    assert type(loaded) is type(index) and loaded.ntotal == index.ntotal and loaded.metric == metric
    params = {"nprobe": 4} if "IVF" in description else None
    for a, b in zip(index.search(xq, 10, params), loaded.search(xq, 10, params)):
        np.testing.assert_array_equal(a, b)
    clone = pickle.loads(pickle.dumps(index))
    for a, b in zip(index.search(xq, 10, params), clone.search(xq, 10, params)):
        np.testing.assert_array_equal(a, b)
    loaded.add(xb[400:410])  # ids continue after the largest stored id
    assert loaded.ntotal == index.ntotal + 10
    if description == "Flat":
        np.testing.assert_array_equal(loaded.search(xb[400:401], 1)[1], [[1400]])


def test_untrained_round_trip():
    index = index_factory(D, "IVF8,SAQ4")
    loaded = pickle.loads(pickle.dumps(index))
    assert not loaded.is_trained and loaded.nlist == 8


def test_damaged_files(data, tmp_path):
    xb, _ = data
    good = serialize_index(built(xb, "IVF8,SAQ4"))
    for cut in (0, 10, 19, 100, len(good) // 2, len(good) - 1):
        with pytest.raises(IndexFileError, match="truncated|checksum"):
            (tmp_path / "t.vqann").write_bytes(good[:cut])
            read_index(tmp_path / "t.vqann")
    for pos in (25, len(good) // 2, len(good) - 40):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        with pytest.raises(IndexFileError, match="checksum"):
            read_bytes(bytes(bad))
    with pytest.raises(IndexFileError, match="magic"):
        read_bytes(b"NOTANIDX" + good[8:])
    with pytest.raises(IndexFileError, match="newer"):
        read_bytes(good[:8] + struct.pack("<I", FORMAT_VERSION + 1) + good[12:])


def test_valid_checksum_but_inconsistent_header(data):
    """A file whose checksum is right but whose header lies (a buggy writer) is still rejected."""
    import hashlib

    xb, _ = data
    good = serialize_index(built(xb, "SAQ4"))
    hlen = struct.unpack_from("<Q", good, 12)[0]
    header = json.loads(good[20 : 20 + hlen])
    header["arrays"][0]["shape"][0] += 1
    new = json.dumps(header).encode()
    body = good[:12] + struct.pack("<Q", len(new)) + new + good[20 + hlen : -32]
    with pytest.raises(IndexFileError, match="inconsistent|truncated|trailing"):
        read_bytes(body + hashlib.sha256(body).digest())


def test_failed_write_keeps_old_file(data, tmp_path, monkeypatch):
    xb, _ = data
    path = write_index(built(xb, "Flat"), tmp_path / "i.vqann")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_index(built(xb, "SAQ4"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["i.vqann"]


def test_header_is_documented_json(data):
    xb, _ = data
    raw = serialize_index(built(xb, "IVF8,SAQ4"))
    assert raw[:8] == MAGIC and struct.unpack_from("<I", raw, 8)[0] == FORMAT_VERSION
    hlen = struct.unpack_from("<Q", raw, 12)[0]
    header = json.loads(raw[20 : 20 + hlen])
    assert header["type"] == "IVFSAQIndex" and header["params"]["nlist"] == 8
    assert {"ids", "lists", "centroids", "codes.factors"} <= {a["name"] for a in header["arrays"]}


def read_bytes(raw: bytes):
    from vqlib.anns import deserialize_index

    return deserialize_index(raw)


V1_FILES = ["flat", "saq3_ip", "saq1.5_refine", "ivf4_saq2", "ivf4_saq3_refine_ip"]


@pytest.mark.parametrize("name", V1_FILES)
def test_reads_files_of_the_previous_version(name):
    """Files written before refine became a wrapper (tests/anns/data/make_v1_files.py) load and search the same."""
    import torch

    from .data.make_v1_files import CASES, data

    torch.set_num_threads(1)
    here = os.path.join(os.path.dirname(__file__), "data")
    expected = np.load(os.path.join(here, f"{name}.npz"))
    description, metric = CASES[name]
    params = {"nprobe": 2} if "IVF" in description else None
    index = read_index(os.path.join(here, f"{name}.vqann"))
    kind = "FlatIndex" if description == "Flat" else "IVFSAQIndex" if "IVF" in description else "SAQIndex"
    if "Refine" in description:  # the old refine flag comes back as the wrapper
        assert type(index).__name__ == "RefineIndex"
        index_base = index.base
    else:
        index_base = index
    assert type(index_base).__name__ == kind
    if hasattr(index_base, "backend"):  # the stored results are the torch scan's floats (numba agrees to ~1e-6)
        index_base.backend = "torch"
    xb, xq = data()
    D, I = index.search(xq, 5, params)
    np.testing.assert_array_equal(I, expected["I"])
    np.testing.assert_array_equal(D, expected["D"])
    # the same index built by this version finds the same neighbours at the same distances
    fresh = index_factory(16, description, metric=metric)
    fresh.train(xb)
    fresh.add_with_ids(xb[:250], np.arange(1000, 1250))
    fresh.add(xb[250:])
    fresh.remove_ids(np.arange(1000, 1010))
    if hasattr(index_base, "backend"):
        (fresh.base if "Refine" in description else fresh).backend = "torch"
    D2, I2 = fresh.search(xq, 5, params)
    np.testing.assert_array_equal(I2, expected["I"])
    np.testing.assert_allclose(D2, expected["D"], rtol=1e-6)


@pytest.mark.parametrize("description", DESCRIPTIONS)
def test_save_pretrained_round_trip(data, tmp_path, description):
    from vqlib.anns import Index
    from vqlib.quantizers import PretrainedFileError

    xb, xq = data
    index = built(xb, description, "l2")
    index.save_pretrained(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "idx" / "config.json").read_text())
    assert meta["class_path"].endswith(type(index).__name__) and meta["extra_state"]["type"] == type(index).__name__
    for cls in (Index, type(index)):  # the base class finds the saved type, as read_index does
        loaded = cls.from_pretrained(tmp_path / "idx")
        assert type(loaded) is type(index) and loaded.ntotal == index.ntotal
        params = {"nprobe": 4} if "IVF" in description else None
        for a, b in zip(index.search(xq, 10, params), loaded.search(xq, 10, params)):
            np.testing.assert_array_equal(a, b)
    other = FlatIndex if type(index).__name__ != "FlatIndex" else type(built(xb, "SAQ4"))
    with pytest.raises(PretrainedFileError, match=f"holds a {type(index).__name__}, not a {other.__name__}"):
        other.from_pretrained(tmp_path / "idx")
    weights = tmp_path / "idx" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(PretrainedFileError, match="checksum"):
        Index.from_pretrained(tmp_path / "idx")
