"""Compiled nearest-code search for small dimensions (d ≤ 16), where a matmul per block wastes its work.

With ``d = 8`` (LlamaGen's codes) a distance costs 8 multiply-adds, less than writing it to a distance block and
reading it back, which is where :func:`vqlib.quantizers.nearest`'s torch path spends its time. Here a compiled loop
(numba, when installed) scores one row against 16 codes per vector step, keeps each lane's best, and reduces them
per block of codes: nothing but the inputs, the transposed codebook (``(d, K)``, K padded to 16) and the outputs is
ever allocated, so the memory bound of :func:`~vqlib.quantizers.nearest` holds.

Scores are FAISS's: l2 ranks by ``‖c‖² − 2⟨x, c⟩`` (``‖x‖²`` added at the end, clamped at 0), ip by ``⟨x, c⟩``;
ties go to the lower index, as in the torch search. Without numba :func:`available` is False and
:func:`vqlib.quantizers.nearest` keeps its torch path.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["MAX_DIM", "available", "nearest_small"]

#: largest dimension the compiled search takes
MAX_DIM = 16
_BLOCK = 2048  # codes per block: d·2048 floats of the codebook stay in L2 while every row passes


def available() -> bool:
    """Whether numba is installed (``pip install 'vqlib[anns]'``)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def nearest_small(x: torch.Tensor, codebook: torch.Tensor, metric: str, threads: int | None = None):
    """Best code of each row of ``x``: ``(scores (N, 1) float32, indices (N, 1) int64)``.

    Args:
        x: ``(N, d)`` rows, ``1 ≤ d ≤ MAX_DIM``; codebook: ``(K, d)``, ``K ≥ 1`` (both computed in float32).
        metric: ``"l2"`` (squared distance, smallest) or ``"ip"`` (inner product, largest).
        threads: row chunks searched in parallel (default ``torch.get_num_threads()``).
    """
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1] or not 1 <= x.shape[1] <= MAX_DIM:
        raise ValueError(f"expected x (N, d) and codebook (K, d) with 1 <= d <= {MAX_DIM}, got {tuple(x.shape)} and {tuple(codebook.shape)}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook is empty")
    from ._nearest_small_kernel import best_codes

    xs = np.ascontiguousarray(x.detach().cpu().float().numpy())
    cb = codebook.detach().cpu().float().numpy()
    num_codes, d = cb.shape
    padded = -(-num_codes // 16) * 16
    l2 = metric == "l2"
    ct = np.zeros((d, padded), np.float32)
    ct[:, :num_codes] = (-2.0 if l2 else -1.0) * cb.T  # minimise ‖c‖² − 2⟨x, c⟩ (l2) or −⟨x, c⟩ (ip)
    bias = np.full(padded, np.inf, np.float32)
    bias[:num_codes] = np.square(cb).sum(1, dtype=np.float32) if l2 else 0.0
    n = len(xs)
    flat = np.zeros((-(-n // 4) * 4 + 4, d), np.float32)  # rows in fours (padding rows are scored, then dropped)
    flat[:n] = xs
    flat = flat.reshape(-1)
    out_d = np.empty(n, np.float32)
    out_i = np.empty(n, np.int64)
    threads = torch.get_num_threads() if threads is None else max(1, int(threads))
    if threads <= 1 or n < 256:
        best_codes(flat, ct, bias, out_d, out_i, _BLOCK)
    else:  # the kernel releases the GIL: row chunks in parallel
        step = -(-n // (4 * threads)) * 4  # chunks start at multiples of 4 rows
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda a: best_codes(flat[a * d : (a + step + 4) * d], ct, bias, out_d[a : a + step],
                                               out_i[a : a + step], _BLOCK), range(0, n, step)))  # fmt: skip
    if l2:
        out_d += np.square(xs).sum(1)
        np.maximum(out_d, 0, out=out_d)
    else:
        np.negative(out_d, out=out_d)
    return torch.from_numpy(out_d[:, None]), torch.from_numpy(out_i[:, None])
