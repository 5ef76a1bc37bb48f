"""Vector quantization (VQ-VAE, van den Oord et al. 2017, arXiv 1711.00937).

``z_q = e_k`` with ``k = argmin_j ‖z − e_j‖²`` (or the largest cosine with
``metric="cosine"``, as in ViT-VQGAN, arXiv 2110.04627, and LlamaGen,
arXiv 2406.06525, which use l2-normalised 8-d codes).

Loss: ``β‖z − sg(z_q)‖²`` (commitment, β = 0.25) plus, for a codebook learned
by gradient, ``‖sg(z) − z_q‖²``. With ``codebook_update="ema"`` the codebook
instead follows exponential moving averages of assignment counts ``N_k`` and
sums ``m_k`` (arXiv 1711.00937, appendix): ``e_k = m_k / Ñ_k`` with Laplace
smoothing ``Ñ_k = (N_k + ε) / (n + Kε) · n``.

Codebook health: k-means initialisation over the first few training batches
(Łańcucki et al. 2020, arXiv 2005.08520) and restart of dead codes (Dhariwal
et al. 2020, Jukebox, arXiv 2005.00341). A code is dead when its EMA share of
the assignments falls under ``t / K`` (``t = dead_code_threshold``, a fraction
of the uniform share, so one value means the same at every K and batch size):

    N_k < t · (Σ_j N_j) / K        (N: EMA hits per batch, Σ_j N_j: EMA batch size)

Restarts are bounded so that no threshold can wreck the codebook: dead codes
are taken lowest share first, at most ``max_restart_fraction · K`` per step,
never a code restarted less than one EMA time constant ``1 / (1 − decay)``
steps ago; each takes a distinct, not yet used row of a reservoir of recent
inputs (a ring buffer fed by every training batch, so several batches supply
restarts when one cannot); its EMA statistics restart at the uniform share
``N_k = Σ_j N_j / K`` with ``m_k = e_k N_k``, i.e. consistent with its new
position. (The previous rule counted thresholds in hits per batch: at
K = 16384 and batch 1024, where the uniform rate is 1/16 hit per batch, a
threshold of 2 declared every code dead at every step; the codes were redrawn,
with repeats, from the 1,024 rows of each batch and given statistics that
decayed under the threshold after one step, so they never moved off raw
samples: a codebook of noisy duplicates, worse than the mean in 384-d.)
Under ``torch.distributed`` all statistics are summed over ranks, the
reservoir is fed from every rank's rows and all random choices are made
identically, so every rank holds the same codebook and reservoir.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Quantizer, mse
from .distributed import all_gather_rows, all_reduce_sum, broadcast_, distributed_world
from .kmeans import kmeans, subsample
from .nearest import nearest

__all__ = ["VectorQuantizer"]

CODEBOOK_UPDATES = ("ema", "gradient", "frozen")
INITS = ("random", "kmeans")


class VectorQuantizer(Quantizer):
    """Nearest-code vector quantizer.

    Args:
        dim: input feature size.
        codebook_size: number of codes K.
        codebook_dim: code size; projections are added when it differs from ``dim``.
        metric: ``"l2"`` or ``"cosine"`` (codes and inputs l2-normalised).
        codebook_update: ``"ema"`` (moving averages), ``"gradient"`` (a learned
            parameter) or ``"frozen"``.
        decay: EMA decay of counts and sums (and of the usage used for dead codes).
        eps: Laplace smoothing of the EMA counts.
        init: ``"random"`` or ``"kmeans"`` (over the first ``kmeans_batches`` training batches).
        kmeans_batches, kmeans_iters, kmeans_max_samples: k-means initialisation settings.
        dead_code_threshold: restart a code whose EMA share of the assignments
            falls under this fraction of the uniform share 1/K (units: multiples
            of the uniform share; 0 disables, the default as in
            vector-quantize-pytorch; 0.1 is a good value). Any value is safe:
            restarts are capped and spaced (see the module docstring).
        max_restart_fraction: at most this fraction of the K codes is restarted
            per step.
        reservoir_size: rows of recent training inputs kept to restart codes from.
        commitment_weight: β.
        seed: seed of the random choices that must agree across ranks.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        metric: str = "l2",
        codebook_update: str = "ema",
        decay: float = 0.99,
        eps: float = 1e-5,
        init: str = "random",
        kmeans_batches: int = 4,
        kmeans_iters: int = 10,
        kmeans_max_samples: int = 1 << 20,
        dead_code_threshold: float = 0.0,
        max_restart_fraction: float = 0.25,
        reservoir_size: int = 8192,
        commitment_weight: float = 0.25,
        channel_first: bool = False,
        gradient: str = "ste",
        check_finite: bool = True,
        seed: int = 0,
    ):
        super().__init__(
            dim,
            codebook_dim or dim,
            codebook_size,
            channel_first=channel_first,
            gradient=gradient,
            check_finite=check_finite,
        )
        if metric not in ("l2", "cosine"):
            raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
        if codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(f"codebook_update must be one of {CODEBOOK_UPDATES}, got {codebook_update!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold}")
        if not 0 < max_restart_fraction <= 1:
            raise ValueError(f"max_restart_fraction must be in (0, 1], got {max_restart_fraction}")
        if reservoir_size < 1:
            raise ValueError(f"reservoir_size must be >= 1, got {reservoir_size}")
        if dead_code_threshold > 0 and codebook_update == "frozen":
            raise ValueError("dead-code restart changes the codebook: use codebook_update='ema' or 'gradient'")
        if kmeans_batches < 1 or kmeans_iters < 1:
            raise ValueError(f"kmeans_batches and kmeans_iters must be >= 1, got {kmeans_batches} and {kmeans_iters}")
        self.metric = metric
        self.codebook_update = codebook_update
        self.decay = decay
        self.eps = eps
        self.init = init
        self.kmeans_batches = kmeans_batches
        self.kmeans_iters = kmeans_iters
        self.kmeans_max_samples = kmeans_max_samples
        self.dead_code_threshold = dead_code_threshold
        self.max_restart_fraction = max_restart_fraction
        self.reservoir_size = reservoir_size
        self.commitment_weight = commitment_weight
        self.seed = seed

        cd = self.codebook_dim
        embed = torch.empty(codebook_size, cd)
        nn.init.kaiming_uniform_(embed)  # U(±√(6/d)), the anchor's start too
        if metric == "cosine":
            embed = F.normalize(embed, dim=-1)
        if codebook_update == "gradient":
            self.embed = nn.Parameter(embed)
        else:
            self.register_buffer("embed", embed)
        # EMA hits per batch, per code: the EMA denominator and the dead-code signal
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        if codebook_update == "ema":
            self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("initted", torch.tensor(False))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self._kmeans_buffer: list[torch.Tensor] = []
        # restart bookkeeping, identical on every rank; not saved (a reloaded model refills it)
        self.register_buffer("restarted_at", torch.full((codebook_size,), -(1 << 40), dtype=torch.long), persistent=False)
        rows = reservoir_size if dead_code_threshold > 0 else 0
        self.register_buffer("reservoir", torch.zeros(rows, cd), persistent=False)
        self.register_buffer("reservoir_free", torch.zeros(rows, dtype=torch.bool), persistent=False)
        self._reservoir_next = 0

    # ---- hooks ----------------------------------------------------------

    def _effective_codebook(self) -> torch.Tensor:
        return F.normalize(self.embed, dim=-1) if self.metric == "cosine" else self.embed

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self._effective_codebook()[indices[:, 0]].float()

    def _search(self, z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Nearest code of each (already normalised, for cosine) row of ``z``."""
        return nearest(z, codebook.detach(), metric="l2" if self.metric == "l2" else "ip")[1][:, 0]

    def _encode(self, z):
        if self.metric == "cosine":
            z = F.normalize(z, dim=-1)
        return self._search(z, self._effective_codebook())

    def _quantize(self, z: torch.Tensor):
        if self.metric == "cosine":
            z = F.normalize(z, dim=-1)
        n_global = 0.0
        if self.training:
            n_global = all_reduce_sum(torch.tensor([float(z.shape[0])], device=z.device)).item()
            if n_global > 0:  # an empty batch on every rank carries no statistics
                self._before_step(z.detach(), n_global)
        codebook = self._effective_codebook()
        idx = self._search(z, codebook)
        codes = codebook[idx].float()
        loss = self.commitment_weight * mse(z, codes.detach())
        if self.codebook_update == "gradient":
            loss = loss + mse(codes, z.detach())
        if self.training and self.codebook_update != "frozen" and n_global > 0:
            self._after_step(z.detach(), idx)
        return z, codes, idx, loss

    # ---- training-time codebook updates -----------------------------------

    @torch.no_grad()
    def _before_step(self, z: torch.Tensor, n_global: float) -> None:
        if not bool(self.initted):
            if self.init == "kmeans":
                self._collect_for_kmeans(z, n_global)
            else:
                # start usage at the uniform expectation so no code looks dead at step 0
                self._set_stats(torch.full_like(self.cluster_size, n_global / self.codebook_size))
                self.initted.fill_(True)
        elif self.dead_code_threshold > 0:
            self._restart_dead_codes(z)

    @torch.no_grad()
    def _collect_for_kmeans(self, z: torch.Tensor, n_global: float) -> None:
        self._kmeans_buffer.append(z.clone())
        if len(self._kmeans_buffer) < self.kmeans_batches:
            return
        local = torch.cat(self._kmeans_buffer)
        self._kmeans_buffer = []
        # each rank caps its own rows before the gather, so no rank holds more than the cap
        cap = max(1, self.kmeans_max_samples // distributed_world())
        local = subsample(local, cap, _generator(self.seed, 1))
        data = all_gather_rows(local)
        k = self.codebook_size
        if self.dead_code_threshold > 0:
            # fewer rows than codes: cluster what there is; the other codes start dead and are
            # restarted from distinct rows of later batches (k-means would repeat rows)
            k = min(k, data.shape[0])
        centroids, _, counts = kmeans(data, k, self.kmeans_iters, metric=self.metric, generator=_generator(self.seed, 2))
        broadcast_(centroids)
        broadcast_(counts)
        self.embed.data[:k] = centroids.to(self.embed.dtype)
        # counts over all sampled rows, rescaled to hits per batch; codes beyond k have none
        self._set_stats(F.pad(counts * (n_global / data.shape[0]), (0, self.codebook_size - k)))
        self.initted.fill_(True)

    def _set_stats(self, cluster_size: torch.Tensor) -> None:
        self.cluster_size.copy_(cluster_size)
        if self.codebook_update == "ema":
            self.embed_sum.copy_(self.embed * cluster_size[:, None])

    @torch.no_grad()
    def _feed_reservoir(self, z: torch.Tensor) -> None:
        """Append rows of this step (from every rank, in rank order) to the ring buffer."""
        world = distributed_world()
        # each rank offers at most a quarter of the reservoir per step, so it always spans several steps
        per_rank = max(1, self.reservoir_size // (4 * world))
        local = z[torch.randperm(z.shape[0], device=z.device)[:per_rank]] if z.shape[0] > per_rank else z
        rows = all_gather_rows(local.to(self.reservoir.dtype))[-self.reservoir_size :]
        slots = (self._reservoir_next + torch.arange(rows.shape[0], device=rows.device)) % self.reservoir_size
        self.reservoir[slots] = rows
        self.reservoir_free[slots] = True
        self._reservoir_next = (self._reservoir_next + rows.shape[0]) % self.reservoir_size

    def dead_codes(self) -> torch.Tensor:
        """Boolean mask of the codes whose EMA share is under ``dead_code_threshold / K``."""
        uniform = self.cluster_size.sum() / self.codebook_size
        return self.cluster_size < self.dead_code_threshold * uniform

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor) -> None:
        self._feed_reservoir(z)
        step = int(self.steps)
        grace = math.ceil(1 / (1 - self.decay))
        eligible = self.dead_codes() & (self.restarted_at <= step - grace)
        candidates = eligible.nonzero()[:, 0]
        cap = max(1, int(self.max_restart_fraction * self.codebook_size))
        if candidates.numel() == 0 or not bool(self.reservoir_free.any()):
            return
        free = self.reservoir_free.nonzero()[:, 0]
        free = free[torch.randperm(free.numel(), generator=_generator(self.seed, 3 + step), device="cpu").to(free.device)]
        fresh = self.reservoir[free]
        if self.metric == "cosine":
            fresh = F.normalize(fresh, dim=-1)
        # a row seen twice (data repeat across epochs) or equal to a code would make two codes equal
        usable = _first_occurrence(_row_hash(fresh)) & ~torch.isin(_row_hash(fresh), _row_hash(self.embed.data.float()))
        self.reservoir_free[free[~usable]] = False
        n = min(candidates.numel(), int(usable.sum()), cap)
        if n == 0:
            return
        # lowest share first (stable: ties by index), the same on every rank
        codes = candidates[torch.sort(self.cluster_size[candidates], stable=True).indices[:n]]
        rows = free[usable][:n]
        fresh = fresh[usable][:n]
        self.reservoir_free[rows] = False  # each row restarts one code
        self.embed.data[codes] = fresh.to(self.embed.dtype)
        # the statistics of a code in average use sitting at its new position
        share = self.cluster_size.sum() / self.codebook_size
        self.cluster_size[codes] = share
        if self.codebook_update == "ema":
            self.embed_sum[codes] = fresh * share
        self.restarted_at[codes] = step

    @torch.no_grad()
    def _after_step(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        counts = all_reduce_sum(torch.bincount(idx, minlength=self.codebook_size).float())
        self.cluster_size.lerp_(counts, 1 - self.decay)
        if self.codebook_update == "ema":
            sums = all_reduce_sum(torch.zeros_like(self.embed_sum).index_add_(0, idx, z))
            self.embed_sum.lerp_(sums, 1 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
            embed = self.embed_sum / smoothed[:, None]
            if self.metric == "cosine":
                embed = F.normalize(embed, dim=-1)
            self.embed.copy_(embed)
        self.steps += 1

    def extra_repr(self) -> str:
        return super().extra_repr() + f", metric={self.metric!r}, codebook_update={self.codebook_update!r}, init={self.init!r}"


def _row_hash(x: torch.Tensor) -> torch.Tensor:
    """An int64 hash of each row's float32 bits: equal rows hash equal (integer sums are exact)."""
    bits = x.float().contiguous().view(torch.int32).long()
    mult = torch.randint(1, 1 << 62, (x.shape[1],), generator=torch.Generator().manual_seed(12345)).to(x.device) | 1
    return (bits * mult).sum(1)


def _first_occurrence(keys: torch.Tensor) -> torch.Tensor:
    """Mask of the first occurrence of each value of ``keys``."""
    _, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1 if keys.numel() else 0,), keys.numel(), device=keys.device)
    first = first.scatter_reduce(0, inverse, torch.arange(keys.numel(), device=keys.device), "amin")
    mask = torch.zeros_like(keys, dtype=torch.bool)
    mask[first] = True
    return mask


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)
