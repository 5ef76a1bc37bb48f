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
(Łańcucki et al. 2020, arXiv 2005.08520) and restart of dead codes (EMA usage
under a threshold) from random vectors of the current batch (Dhariwal et al.
2020, Jukebox, arXiv 2005.00341). Under ``torch.distributed`` all statistics
are summed over ranks and all random choices are made identically, so every
rank holds the same codebook.
"""

from __future__ import annotations

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
        dead_code_threshold: a code whose EMA usage (hits per batch) falls under
            this is restarted from a random vector of the batch; 0 disables.
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
            self._restart_dead_codes(z, n_global)

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
        centroids, _, counts = kmeans(
            data, self.codebook_size, self.kmeans_iters, metric=self.metric, generator=_generator(self.seed, 2)
        )
        broadcast_(centroids)
        broadcast_(counts)
        self.embed.data.copy_(centroids)
        # counts over all sampled rows, rescaled to hits per batch
        self._set_stats(counts * (n_global / data.shape[0]))
        self.initted.fill_(True)

    def _set_stats(self, cluster_size: torch.Tensor) -> None:
        self.cluster_size.copy_(cluster_size)
        if self.codebook_update == "ema":
            self.embed_sum.copy_(self.embed * cluster_size[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, z: torch.Tensor, n_global: float) -> None:
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # every rank with data offers n_dead random rows; all ranks then pick the same ones
        local_pick = torch.randint(max(1, z.shape[0]), (n_dead if z.shape[0] else 0,), device=z.device)
        pool = all_gather_rows(z[local_pick])
        choice = torch.randperm(pool.shape[0], generator=_generator(self.seed, int(self.steps)), device="cpu")[:n_dead]
        fresh = pool[choice.to(pool.device)]
        self.embed.data[dead] = fresh.to(self.embed.dtype)
        restart_usage = max(self.dead_code_threshold, n_global / self.codebook_size)
        self.cluster_size[dead] = restart_usage
        if self.codebook_update == "ema":
            self.embed_sum[dead] = fresh * restart_usage

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


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)
