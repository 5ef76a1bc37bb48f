"""Small synthetic data for the index tests: clustered vectors with decaying variances (SAQ gets several segments)."""

import numpy as np
import pytest
import torch

from vqlib.anns import FlatIndex

D = 64


def make_data(n: int, nq: int, d: int = D, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = np.exp(-np.arange(d) / 48.0)  # decaying spectrum, as in real embeddings
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    centres = rng.standard_normal((32, d)) * scale * 2
    x = centres[rng.integers(0, 32, n + nq)] + rng.standard_normal((n + nq, d)) * scale
    x = (x @ basis.T).astype(np.float32)
    return x[:n], x[n:]


@pytest.fixture(scope="session")
def data():
    torch.set_num_threads(1)
    return make_data(3000, 100)


@pytest.fixture(scope="session")
def ground_truth(data):
    xb, xq = data
    flat = FlatIndex(D)
    flat.add(xb)
    return flat.search(xq, 10)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def same_topk_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Share of result sets (rows) that contain exactly the same ids."""
    return float(np.mean([set(x.tolist()) == set(y.tolist()) for x, y in zip(a, b)]))
