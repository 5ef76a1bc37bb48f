"""Collectives that quantizers use to keep every rank's codebook identical.

Each is a no-op without an initialised ``torch.distributed`` process group,
so single-process code pays nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_rows", "all_reduce_sum", "broadcast_", "distributed_world"]


def distributed_world() -> int:
    """World size when ``torch.distributed`` is initialised, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op without ``torch.distributed``)."""
    if distributed_world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a ``(n_rank, ...)`` tensor from every rank in rank order; n may differ per rank."""
    world = distributed_world()
    if world == 1:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if distributed_world() > 1:
        dist.broadcast(t, src)
    return t
