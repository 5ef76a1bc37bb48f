"""Orthogonal rotations shared by the codecs (PyramidVQ, SAQ/CAQ).

A rotation ``x ↦ x M`` with ``M`` orthogonal keeps norms and inner products,
so a codec may quantize in the rotated basis and rotate back: it spreads a few
large coordinates (outliers) over many, which makes the coordinates look
Gaussian and equalises their variance.

* :func:`hadamard_transform`: the orthonormal fast Walsh–Hadamard transform
  ``H_n / √n`` (``O(n log n)``, no matrix stored); with random signs in front
  it is the randomized Hadamard transform of QuIP# (arXiv 2402.04396) and of
  Pyramid VQ's "coherence processing" (arXiv 2410.16926).
* :func:`random_orthogonal`: a Haar-distributed (uniform over ``O(n)``)
  ``n × n`` matrix, the QR decomposition of a Gaussian matrix with the signs of
  ``R``'s diagonal moved into ``Q`` (Mezzadri 2007, arXiv math-ph/0609050);
  without that fix the distribution depends on the QR routine's sign
  convention and is not uniform. SAQ/CAQ (arXiv 2509.12086) rotate each
  segment with one.
"""

from __future__ import annotations

import math

import torch

__all__ = ["hadamard_transform", "random_orthogonal"]


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh–Hadamard transform over the last dim (a power of 2); its own inverse."""
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-2 last dim, got {n}")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        pairs = x.reshape(*lead, n // (2 * h), 2, h)
        x = torch.stack([pairs[..., 0, :] + pairs[..., 1, :], pairs[..., 0, :] - pairs[..., 1, :]], -2)
        h *= 2
    return x.reshape(*lead, n) / math.sqrt(n)


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthonormal ``n × n`` float32 matrix drawn from ``generator``.

    One ``torch.randn(n, n, float64)`` draw, its QR decomposition, and each
    column of ``Q`` multiplied by the sign of ``R``'s matching diagonal entry.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return (q * torch.sign(torch.diagonal(r))).float()
