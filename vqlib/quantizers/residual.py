"""Residual quantization: a stack of quantizers, each coding what the previous ones left.

RQ-VAE (Lee et al. 2022, arXiv 2203.01941) and SoundStream (Zeghidour et al.
2021, arXiv 2107.03312, Algorithm 1). With ``r_0 = z``:

    k_i = Q_i(r_i),   r_{i+1} = r_i − e_i(k_i),   ẑ = Σ_{i<n} e_i(k_i)

and one index per stage, ``(..., num_quantizers)``. The loss is the sum of the
stages' own losses on their residuals; each residual is taken with the codes
detached, so stage ``i``'s commitment ``β‖r_i − sg(e_i)‖² = β‖z − sg(Σ_{j≤i} e_j)‖²``
is RQ-VAE's commitment on the partial sum. The straight-through (or rotation)
gradient goes once from ``ẑ`` to ``z``.

Quantize dropout (SoundStream): during training each example (first leading
index) keeps, with probability ``quantize_dropout``, only its first ``n``
stages, ``n ~ U{min_quantizers, …, num_quantizers}``, so that the first ``n``
indices decode to a usable lower-rate code: :meth:`ResidualQuantizer.decode`
takes ``(..., n)`` indices for any ``n ≤ num_quantizers``. Dropped stages return
index ``-1`` in the training output (not a code: ``decode`` refuses it).

:class:`ResidualFSQ` is the same stack over FSQ grids (Mentzer et al. 2023,
arXiv 2309.15505; the residual scaling of vector-quantize-pytorch's
``ResidualFSQ``). Stage ``i`` uses the symmetric grid of ``L`` points
``g = 2k/(L − 1) − 1`` scaled by ``L^{−i}``:

    ẑ_i = L^{−i} · round_grid(clamp(L^i r_i, −1, 1)),   input bounded as c·tanh(z / c), c = L/(L − 1)

Why ``L^{−i}`` and not ``(L − 1)^{−i}``: stage 0 leaves ``r_1`` in
``±1/(L − 1)`` (half its step). An ``L``-point uniform quantizer of that
interval has its outer points at ``±1/L``, which is exactly the grid scaled by
``1/L``; then the stages together form one uniform grid of ``L^n`` points (for
``L = 3, n = 2``: nine points spaced ``1/3``). Scaling by ``1/(L − 1)`` puts the
outer points on the edge of the interval instead: sums coincide (seven distinct
points for ``L = 3, n = 2``) and the worst error grows from ``1/(L(L − 1))`` to
``1/(L − 1)²``. The input bound ``c = Σ_i L^{−i}`` lets the input reach the
outermost sums.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .base import Quantizer, Usage, _like_weights
from .distributed import all_reduce_sum

__all__ = ["ResidualFSQ", "ResidualQuantizer", "usage_from_counts"]


def usage_from_counts(counts: torch.Tensor) -> Usage:
    """:class:`Usage` of a ``(codebooks, K)`` table of hit counts (as ``Quantizer.usage`` reports it)."""
    total = counts.sum(-1)
    used = (counts > 0).double().mean(-1)
    p = counts / total.clamp_min(1).unsqueeze(-1)
    entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
    perplexity = torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy))
    return Usage(float(used.mean()), float(perplexity.mean()), int((counts == 0).sum()), int(total.sum()))


def build_quantizer(quantizer, what: str, seed_offset: int = 0, **overrides) -> Quantizer:
    """A fresh quantizer from a template instance or a ``{"class_path", "init_args"}`` config.

    ``seed_offset`` is added to a ``seed`` argument, so separate stages or groups
    draw different random bases and restart streams.
    """
    if isinstance(quantizer, Quantizer):
        config = quantizer.config
    elif isinstance(quantizer, dict) and "class_path" in quantizer:
        config = quantizer
    else:
        raise ValueError(
            f"{what} must be a vqlib Quantizer (used as a template) or its config dict, got {type(quantizer).__name__}"
        )
    args = dict(config.get("init_args", {}))
    if "seed" in args and seed_offset:
        args["seed"] = int(args["seed"]) + seed_offset
    for key, value in overrides.items():
        if key in args:
            args[key] = value
    q = Quantizer.from_config({"class_path": config["class_path"], "init_args": args})
    if q.channel_first:
        raise ValueError(f"{what} must be channel-last: set channel_first on the wrapper instead")
    return q


class ResidualQuantizer(Quantizer):
    """Residual stack of any vqlib quantizer.

    Args:
        dim: input feature size.
        codebook_size: K of each stage when ``quantizer`` is not given (stages are
            then ``VectorQuantizer(dim, codebook_size)``).
        num_quantizers: number of stages n; indices are ``(..., n)``.
        quantizer: the stage quantizer, as a template instance or its config
            dict: every stage is built from its config (fresh weights; a ``seed``
            argument is offset per stage). Its ``dim`` is the space the residuals
            live in; projections are added when it differs from ``dim``. It
            must take that space without projections of its own and give one
            index per vector.
        shared_codebook: one quantizer for all stages (its EMA and restarts see
            every stage's residuals).
        quantize_dropout: probability that a training example keeps only a
            random number of stages.
        min_quantizers: the fewest stages quantize dropout keeps.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int | None = None,
        num_quantizers: int = 8,
        quantizer: Quantizer | dict | None = None,
        shared_codebook: bool = False,
        quantize_dropout: float = 0.0,
        min_quantizers: int = 1,
        channel_first: bool = False,
        gradient: str = "ste",
        check_finite: bool = True,
    ):
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        stages = self._build_stages(dim, codebook_size, num_quantizers, quantizer, shared_codebook)
        first = stages[0]
        if codebook_size is not None and codebook_size != first.codebook_size:
            raise ValueError(f"codebook_size {codebook_size} differs from the stage quantizer's {first.codebook_size}")
        if first.num_codebooks != 1:
            raise ValueError(f"stage quantizers must give one index per vector, got num_codebooks={first.num_codebooks}")
        if not (isinstance(first.project_in, nn.Identity) and isinstance(first.project_out, nn.Identity)):
            raise ValueError(
                f"the stage quantizer projects {first.dim} -> {first.codebook_dim}: give it dim=codebook_dim "
                f"({first.codebook_dim}) and let the residual quantizer project (its dim stays {dim})"
            )
        self._init_wrapper(dim, first.dim, first.codebook_size, num_quantizers, quantize_dropout, min_quantizers,
                           channel_first, gradient, check_finite)
        self.shared_codebook = shared_codebook
        self.stages = nn.ModuleList(stages)

    def _init_wrapper(self, dim, codebook_dim, codebook_size, num_quantizers, quantize_dropout, min_quantizers,
                      channel_first, gradient, check_finite):
        if not 0.0 <= quantize_dropout <= 1.0:
            raise ValueError(f"quantize_dropout must be a probability in [0, 1], got {quantize_dropout}")
        if not 1 <= min_quantizers <= num_quantizers:
            raise ValueError(f"min_quantizers must be in [1, num_quantizers={num_quantizers}], got {min_quantizers}")
        # the projections are sized for one codebook_dim vector (the sum of the stages' codes) ...
        super().__init__(dim, codebook_dim, codebook_size, num_codebooks=1, channel_first=channel_first,
                         gradient=gradient, check_finite=check_finite)
        # ... while there is one index (and one usage row) per stage
        self.num_codebooks = num_quantizers
        counted = self.usage_counts.shape[1]
        self.usage_counts = torch.zeros(num_quantizers, counted, dtype=torch.float64)
        self.num_quantizers = num_quantizers
        self.quantize_dropout = quantize_dropout
        self.min_quantizers = min_quantizers
        self._examples = 1

    @staticmethod
    def _build_stages(dim, codebook_size, num_quantizers, quantizer, shared):
        if quantizer is None:
            if codebook_size is None:
                raise ValueError("give codebook_size (stages are VectorQuantizer(dim, codebook_size)) or a quantizer")
            from .vq import VectorQuantizer

            quantizer = VectorQuantizer(dim, codebook_size)
        count = 1 if shared else num_quantizers
        return [build_quantizer(quantizer, "quantizer", seed_offset=i, check_finite=False) for i in range(count)]

    # ---- stages (ResidualFSQ overrides these three) ------------------------

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def _stage_quantize(self, i: int, r: torch.Tensor):
        """``(codes, indices (N,), loss)`` of stage ``i`` on residuals ``r`` (training updates included)."""
        stage = self.stages[0 if self.shared_codebook else i]
        _, codes, idx, loss = stage._quantize(r)
        return codes, idx.reshape(-1), loss

    def _stage_encode(self, i: int, r: torch.Tensor) -> torch.Tensor:
        return self.stages[0 if self.shared_codebook else i]._encode(r).reshape(-1)

    def _stage_lookup(self, i: int, idx: torch.Tensor) -> torch.Tensor:
        return self.stages[0 if self.shared_codebook else i]._lookup(idx.reshape(-1, 1)).float()

    # ---- the Quantizer hooks ------------------------------------------------

    def forward(self, x: torch.Tensor):
        # quantize dropout draws per example: the first leading index (B of channel-first input)
        self._examples = x.shape[0] if x.dim() >= 2 else 1
        return super().forward(x)

    def _kept_stages(self, n: int, device) -> torch.Tensor | None:
        """Stages each row keeps under quantize dropout, or None when all keep all."""
        if not (self.training and self.quantize_dropout > 0 and n > 0):
            return None
        examples = max(1, self._examples)
        if n % examples:
            examples = 1
        drop = torch.rand(examples, device=device) < self.quantize_dropout
        count = torch.randint(self.min_quantizers, self.num_quantizers + 1, (examples,), device=device)
        kept = torch.where(drop, count, torch.full_like(count, self.num_quantizers))
        return kept.repeat_interleave(n // examples)

    def _quantize(self, z: torch.Tensor):
        pre = self._bound(z)
        n = z.shape[0]
        kept = self._kept_stages(n, z.device)
        residual = pre
        total = torch.zeros_like(pre, dtype=torch.float32).detach()
        indices = torch.full((n, self.num_quantizers), -1, dtype=torch.long, device=z.device)
        loss = pre.new_zeros(())
        for i in range(self.num_quantizers):
            rows = None if kept is None else (kept > i).nonzero()[:, 0]
            r = residual if rows is None else residual[rows]
            codes, idx, stage_loss = self._stage_quantize(i, r)
            codes = codes.detach().float()
            loss = loss + stage_loss
            if rows is None:
                residual = residual - codes
                total = total + codes
                indices[:, i] = idx
            else:
                residual = residual.index_put((rows,), r - codes)
                total = total.index_put((rows,), total[rows] + codes)
                indices[rows, i] = idx
        return pre, total, indices, loss

    def _encode(self, z: torch.Tensor) -> torch.Tensor:
        residual = self._bound(z)
        out = []
        for i in range(self.num_quantizers):
            idx = self._stage_encode(i, residual)
            residual = residual - self._stage_lookup(i, idx)
            out.append(idx)
        return torch.stack(out, -1)

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Sum of the stages' codes; a column of ``-1`` (dropped in training) adds nothing."""
        total = torch.zeros(indices.shape[0], self.codebook_dim, device=indices.device)
        for i in range(indices.shape[1]):
            idx = indices[:, i]
            codes = self._stage_lookup(i, idx.clamp_min(0))
            total = total + torch.where((idx < 0)[:, None], torch.zeros_like(codes), codes)
        return total

    def _effective_codebook(self) -> torch.Tensor:
        """The first stage's codebook: the codes ``decode`` gives for ``(k, -1, …, -1)`` (before ``project_out``)."""
        return self._stage_lookup(0, torch.arange(self.codebook_size, device=self.usage_counts.device))

    def _finish(self, codes: torch.Tensor, lead, dtype) -> torch.Tensor:
        codes = codes.reshape(*lead, self.codebook_dim)  # one summed vector, not one per index
        out = self.project_out(_like_weights(codes, self.project_out))
        if self.channel_first:
            out = out.movedim(-1, 1)
        return out.to(dtype)

    @torch.no_grad()
    def _count(self, indices: torch.Tensor) -> None:
        k = self.usage_counts.shape[1]
        if k == 0:
            return
        for i in range(self.num_quantizers):
            idx = indices[:, i]
            self.usage_counts[i] += torch.bincount(idx[idx >= 0], minlength=k).to(self.usage_counts.dtype)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized vectors from ``(..., n)`` indices of the first ``n ≤ num_quantizers`` stages."""
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"indices must be an integer tensor, got {got}")
        if indices.dim() < 1 or not 1 <= indices.shape[-1] <= self.num_quantizers:
            raise ValueError(
                f"expected indices with last dim 1..{self.num_quantizers} (the first stages), got shape {tuple(indices.shape)}"
            )
        if indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(
                    f"indices must be in [0, {self.codebook_size}), got values in [{lo}, {hi}]"
                    + (" (-1 marks a stage dropped in training: decode the stages before it)" if lo == -1 else "")
                )
        lead = indices.shape[:-1]
        if self.channel_first and len(lead) < 1:
            raise ValueError("channel_first decode expects indices of shape (B, *spatial, n)")
        flat = indices.reshape(-1, indices.shape[-1]).long()
        with torch.autocast(device_type=flat.device.type, enabled=False):
            codes = self._lookup(flat)
        dtype = torch.get_autocast_dtype(flat.device.type) if torch.is_autocast_enabled(flat.device.type) else codes.dtype
        return self._finish(codes, lead, dtype)

    def stage_usage(self, sync: bool = True) -> list[Usage]:
        """:class:`Usage` of each stage since :meth:`reset_usage` (collective under ``torch.distributed``)."""
        if self.usage_counts.shape[1] == 0:
            raise ValueError(f"usage is not tracked for {self.codebook_size} codes per stage; count encode() indices yourself")
        counts = self.usage_counts.clone()
        if sync:
            all_reduce_sum(counts)
        return [usage_from_counts(counts[i : i + 1]) for i in range(self.num_quantizers)]

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_dim={self.codebook_dim}, codebook_size={self.codebook_size}, "
                f"num_quantizers={self.num_quantizers}, shared_codebook={getattr(self, 'shared_codebook', False)}, "
                f"quantize_dropout={self.quantize_dropout}")


class ResidualFSQ(ResidualQuantizer):
    """Residual FSQ: ``num_quantizers`` FSQ grids of ``levels``, stage ``i`` scaled by ``L^{-i}``.

    Args:
        levels: levels per channel (the same for every stage), e.g. ``[8, 5, 5, 5]``.
        num_quantizers: stages.
        dim: input feature size; defaults to ``len(levels)`` (projections otherwise).
        quantize_dropout, min_quantizers: as in :class:`ResidualQuantizer`.
    """

    def __init__(
        self,
        levels: list[int],
        num_quantizers: int = 4,
        dim: int | None = None,
        quantize_dropout: float = 0.0,
        min_quantizers: int = 1,
        channel_first: bool = False,
        gradient: str = "ste",
        check_finite: bool = True,
    ):
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels}")
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        size = math.prod(levels)
        if size >= 2**62:
            raise ValueError(f"the grid has {size} codes, more than int64 indices can address")
        self._init_wrapper(dim or len(levels), len(levels), size, num_quantizers, quantize_dropout, min_quantizers,
                           channel_first, gradient, check_finite)
        self.levels = levels
        self.shared_codebook = False
        lv = torch.tensor(levels, dtype=torch.float32)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.int64), 0), persistent=False)
        scales = torch.stack([lv ** (-float(i)) for i in range(num_quantizers)])
        self.register_buffer("scales", scales, persistent=False)
        # the input reaches the outermost sum of the stages' grids: c = Σ_i L^{-i} -> L / (L - 1)
        self.register_buffer("_bound_c", lv / (lv - 1), persistent=False)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        c = self._bound_c
        return torch.tanh(z / c) * c

    def _stage_quantize(self, i: int, r: torch.Tensor):
        idx = self._stage_encode(i, r)
        return self._stage_lookup(i, idx), idx, r.new_zeros(())

    def _stage_encode(self, i: int, r: torch.Tensor) -> torch.Tensor:
        lv = self._levels
        u = (r.detach() / self.scales[i]).clamp(-1, 1)
        digits = torch.round((u + 1) * (lv - 1) / 2).long()
        digits = torch.minimum(digits.clamp_min(0), self._basis.new_tensor(self.levels) - 1)
        return (digits * self._basis).sum(-1)

    def _stage_lookup(self, i: int, idx: torch.Tensor) -> torch.Tensor:
        digits = (idx.reshape(-1, 1) // self._basis) % self._basis.new_tensor(self.levels)
        return (digits.float() * 2 / (self._levels - 1) - 1) * self.scales[i]

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_quantizers={self.num_quantizers}, dim={self.dim}, quantize_dropout={self.quantize_dropout}"
