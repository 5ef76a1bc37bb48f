"""`vqlib anns build|search|bench` on tiny files (one real subprocess, the rest in-process for speed)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vqlib.anns import read_index
from vqlib.anns.cli import load_vectors
from vqlib.cli import main

from .conftest import make_data

ROOT = Path(__file__).resolve().parents[2]


def test_build_search_bench(tmp_path, capsys, monkeypatch):
    xb, xq = make_data(600, 5)
    np.save(tmp_path / "base.npy", xb)
    # .fvecs: int32 dimension, then the float32 values, per vector
    rows = np.concatenate([np.full((len(xq), 1), xq.shape[1], np.int32).view(np.float32), xq], 1)
    rows.astype(np.float32).tofile(tmp_path / "q.fvecs")
    np.testing.assert_array_equal(load_vectors(tmp_path / "q.fvecs"), xq)
    proc = subprocess.run([sys.executable, "-m", "vqlib.cli", "anns", "build", "base.npy", "--factory", "IVF4,SAQ4", "-o", "idx.vqann"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "built IVF4,SAQ4 on 600 vectors" in proc.stdout
    index = read_index(tmp_path / "idx.vqann")
    monkeypatch.chdir(tmp_path)
    main(["anns", "search", "idx.vqann", "q.fvecs", "-k", "3", "--nprobe", "4", "-o", "res.npz"])
    res = np.load(tmp_path / "res.npz")
    D, I = index.search(xq, 3, {"nprobe": 4})
    np.testing.assert_array_equal(res["I"], I)
    np.testing.assert_array_equal(res["D"], D)
    capsys.readouterr()
    main(["anns", "search", "idx.vqann", "q.fvecs", "-k", "3"])
    assert "query 0: ids" in capsys.readouterr().out
    main(["anns", "bench", "base.npy", "q.fvecs", "--factory", "IVF4,SAQ4", "--nprobe", "1,4", "--threads", "1"])
    out = capsys.readouterr().out
    assert "recall@10" in out and len(out.strip().splitlines()) == 4


def test_bad_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "ints.npy", np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="2-D float array"):
        main(["anns", "build", "ints.npy", "--factory", "Flat", "-o", "x.vqann"])
    np.save(tmp_path / "floats.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="cannot parse index description"):
        main(["anns", "build", "floats.npy", "--factory", "IVF,SAQ", "-o", "x.vqann"])
    assert not (tmp_path / "x.vqann").exists()
    (tmp_path / "bad.fvecs").write_bytes(np.array([4, 0, 0], np.int32).tobytes())
    with pytest.raises(ValueError, match="not a valid .fvecs"):
        load_vectors(tmp_path / "bad.fvecs")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_vectors(tmp_path / "a.txt")
