"""Exact nearest-code search: ``nearest(x, codebook, k=1, metric="l2")``, and ``pairwise_distances``.

Distances come from the expanded norm ``‖x − c‖² = ‖x‖² − 2⟨x, c⟩ + ‖c‖²`` as one
fp32 matmul per block. The search walks blocks of rows and blocks of codes and
keeps a running best (or top-k) per row, so the extra memory is one
``rows × codes`` block whatever N and K are: never the full N×K distance
matrix and never a one-hot. Blocks of a few MiB keep the distances in cache
between the matmul that writes them and the reduction that reads them, which
is where the speed over an unblocked search comes from (see BENCHMARKS.md).

For ``k = 1`` and ``d ≤ 16`` on CPU, when numba is installed, :mod:`vqlib.quantizers.nearest_small` answers
instead: a compiled fused distance-and-argmin loop (16 codes per vector step), the same results (ties to the lower
index) with no distance block at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import nearest_small

__all__ = ["nearest", "pairwise_distances", "METRICS"]

METRICS = ("l2", "ip", "cosine")

# Elements of one distance block. Measured on a 2-core AMD EPYC (N=65536,
# d=64, K=4096; and d=8 with K=65536, 262144): 1024x2048 or 2048x1024 blocks
# (8 MiB) are at the flat optimum; 512x4096 and larger blocks were slower.
_BLOCK_ELEMENTS = 1 << 21
_DEFAULT_MAX_MEMORY = 256 << 20


def _check(x: torch.Tensor, codebook: torch.Tensor, k: int, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if x.dim() != 2 or codebook.dim() != 2:
        raise ValueError(
            f"expected x (N, d) and codebook (K, d), got shapes {tuple(x.shape)} and {tuple(codebook.shape)}"
        )
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected last dim {codebook.shape[1]} (the codebook's), got {x.shape[1]}")
    if not (x.is_floating_point() and codebook.is_floating_point()):
        raise ValueError(f"expected floating-point x and codebook, got {x.dtype} and {codebook.dtype}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook is empty")
    if not 1 <= k <= codebook.shape[0]:
        raise ValueError(f"k must be in [1, {codebook.shape[0]}] (the codebook size), got {k}")


def _block_sizes(n: int, num_codes: int, k: int, max_memory: int) -> tuple[int, int]:
    """Rows and codes per block, bounded by both the cache target and ``max_memory``."""
    budget = max(1, min(_BLOCK_ELEMENTS, max_memory // 4))
    codes = min(num_codes, 2048, budget)
    codes = max(codes, min(num_codes, k))  # a block must hold k candidates for top-k merging
    # per row: the distance block plus the running top-k (values and indices) twice over
    per_row = codes + 6 * k
    rows = max(1, min(n, budget // per_row))
    return rows, codes


@torch.no_grad()
def nearest(
    x: torch.Tensor,
    codebook: torch.Tensor,
    k: int = 1,
    metric: str = "l2",
    max_memory: int = _DEFAULT_MAX_MEMORY,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-nearest codes of each row of ``x``.

    Args:
        x: ``(N, d)`` queries, any float dtype (computed in fp32).
        codebook: ``(K, d)`` codes.
        k: number of neighbours per row.
        metric: ``"l2"`` (squared Euclidean, smallest first), ``"ip"`` (inner
            product, largest first) or ``"cosine"`` (cosine similarity, largest
            first) — the FAISS conventions.
        max_memory: bound in bytes on the working memory beyond the inputs and
            outputs (default 256 MiB).

    Returns:
        ``(distances, indices)``: fp32 and int64 tensors of shape ``(N, k)``,
        best first. Ties go to the lower index.
    """
    _check(x, codebook, k, metric)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        codebook = codebook.float()
        if metric == "cosine":
            x = F.normalize(x, dim=-1)
            codebook = F.normalize(codebook, dim=-1)
        if _use_compiled(x, codebook, k):  # small d: the compiled fused search (nearest_small), same results
            return nearest_small.nearest_small(x, codebook, "l2" if metric == "l2" else "ip")
        return _search(x, codebook, k, metric, max_memory)


# The compiled small-d search takes over from this many (row, code) pairs (below it, its setup dominates).
_COMPILED_MIN_PAIRS = 1 << 16


def _use_compiled(x: torch.Tensor, codebook: torch.Tensor, k: int) -> bool:
    return (
        k == 1
        and x.shape[1] <= nearest_small.MAX_DIM
        and x.device.type == "cpu"
        and x.shape[0] * codebook.shape[0] >= _COMPILED_MIN_PAIRS
        and nearest_small.available()
    )


# Below this dimension the l2 search folds the code norms into the matmul (measured).
_AUGMENT_BELOW_DIM = 32
# Codes per group in the two-stage row reduction below.
_GROUP = 32


def _best_in_rows(dist: torch.Tensor, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise (value, index) of the best entry, first index on ties, as ``(R, 1)`` tensors.

    ``Tensor.min(dim)`` with indices is an order of magnitude slower on CPU than
    the value-only ``amin``. So reduce contiguous groups of ``_GROUP`` codes with
    ``amin``/``amax`` first, take the best group (a reduction over 1/_GROUP of
    the entries), then the best entry inside it. Groups are contiguous and both
    argmins return the first best, so ties still go to the lowest index.
    """
    rows, cols = dist.shape
    if cols % _GROUP or cols < 2 * _GROUP:
        return dist.max(1, keepdim=True) if largest else dist.min(1, keepdim=True)
    grouped = dist.view(rows, cols // _GROUP, _GROUP)
    group_best = grouped.amax(2) if largest else grouped.amin(2)
    value, group = group_best.max(1, keepdim=True) if largest else group_best.min(1, keepdim=True)
    inside = grouped.gather(1, group.unsqueeze(-1).expand(rows, 1, _GROUP)).squeeze(1)
    offset = inside.argmax(1, keepdim=True) if largest else inside.argmin(1, keepdim=True)
    return value, group * _GROUP + offset


def _search(x, codebook, k, metric, max_memory):
    n, num_codes = x.shape[0], codebook.shape[0]
    largest = metric != "l2"
    out_d = torch.empty(n, k, dtype=torch.float32, device=x.device)
    out_i = torch.empty(n, k, dtype=torch.int64, device=x.device)
    if n == 0:
        return out_d, out_i
    rows, codes = _block_sizes(n, num_codes, k, max_memory)
    if metric == "l2" and x.shape[1] < _AUGMENT_BELOW_DIM:
        # Small d: fold ‖c‖² into the matmul as an extra input column, padded to
        # a multiple of 16. addmm would first copy the bias into every output
        # block, a pass that costs as much as the matmul itself at d = 8.
        width = -(-(x.shape[1] + 1) // 16) * 16
        xa = x.new_zeros(n, width)
        xa[:, : x.shape[1]] = x
        xa[:, x.shape[1]] = 1.0
        ca = codebook.new_zeros(num_codes, width)
        ca[:, : x.shape[1]] = -2.0 * codebook
        ca[:, x.shape[1]] = (codebook * codebook).sum(-1)
        queries = xa
        code_blocks = [(j, ca[j : j + codes].t().contiguous(), None) for j in range(0, num_codes, codes)]
    else:
        # argmin ‖x−c‖² = argmin (‖c‖² − 2⟨x,c⟩); ‖x‖² is added back at the end
        bias, alpha = ((codebook * codebook).sum(-1), -2.0) if metric == "l2" else (None, 1.0)
        queries = x
        code_blocks = [
            (j, codebook[j : j + codes].t(), None if bias is None else bias[j : j + codes]) for j in range(0, num_codes, codes)
        ]
    for i in range(0, n, rows):
        xb = queries[i : i + rows]
        best_d = best_i = None
        for j, cb_t, bb in code_blocks:
            dist = torch.mm(xb, cb_t) if bb is None else torch.addmm(bb, xb, cb_t, alpha=alpha)
            if k == 1:
                d, ix = _best_in_rows(dist, largest)
                ix += j
                if best_d is None:
                    best_d, best_i = d, ix
                else:
                    # strict comparison keeps the earlier (lower) index on ties
                    better = d > best_d if largest else d < best_d
                    best_d = torch.where(better, d, best_d)
                    best_i = torch.where(better, ix, best_i)
            else:
                kk = min(k, dist.shape[1])
                d, ix = dist.topk(kk, dim=1, largest=largest, sorted=False)
                ix += j
                if best_d is not None:
                    d, ix = torch.cat([best_d, d], 1), torch.cat([best_i, ix], 1)
                    if d.shape[1] > k:
                        d, sel = d.topk(k, dim=1, largest=largest, sorted=False)
                        ix = ix.gather(1, sel)
                best_d, best_i = d, ix
        if k > 1:
            best_d, order = best_d.sort(dim=1, descending=largest)
            best_i = best_i.gather(1, order)
        out_d[i : i + rows] = best_d
        out_i[i : i + rows] = best_i
    if metric == "l2":
        out_d.add_((x * x).sum(-1, keepdim=True)).clamp_(min=0)
    return out_d, out_i



def pairwise_distances(x: torch.Tensor, y: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Every distance between rows of ``x`` and rows of ``y``, exactly as :func:`nearest` scores them.

    ``x`` is ``(..., n, d)`` and ``y`` ``(..., m, d)`` with broadcastable batch
    dimensions (so each query can have its own candidates: ``x[:, None]`` against
    ``y`` of shape ``(nq, c, d)``); the result is ``(..., n, m)``, in the inputs'
    common float dtype. ``"l2"``: squared Euclidean distances
    ``‖x‖² − 2⟨x, y⟩ + ‖y‖²`` clamped at 0 (smaller is nearer); ``"ip"``: inner
    products; ``"cosine"``: cosine similarities (larger is nearer).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if x.dim() < 2 or y.dim() < 2:
        raise ValueError(f"expected x (..., n, d) and y (..., m, d), got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"expected last dim {y.shape[-1]} (y's), got {x.shape[-1]}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"expected floating-point x and y, got {x.dtype} and {y.dtype}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    x, y = x.to(dtype), y.to(dtype)
    if metric == "cosine":
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    ip = x @ y.transpose(-1, -2)
    if metric != "l2":
        return ip
    return (x.square().sum(-1, keepdim=True) - 2 * ip + y.square().sum(-1).unsqueeze(-2)).clamp_min_(0)
