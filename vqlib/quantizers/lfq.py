"""Lookup-free quantization (LFQ), MAGVIT-v2.

Yu et al. 2023, "Language Model Beats Diffusion — Tokenizer is Key to Visual
Generation", arXiv 2310.05737. The codebook is the implicit set ``{−1, 1}^d``
of ``K = 2^d`` codes, never stored:

    ẑ_i = sign(z_i)  (−1 at 0),   k = Σ_i 2^i · [z_i > 0]   (int64)

Loss: commitment ``β‖z − sg(ẑ)‖²`` plus the entropy penalty
``w · (E_z[H(q(·|z))] − γ · H(E_z[q(·|z)]))``: each vector's code distribution
sharp (per-sample entropy down), the batch's code distribution spread
(codebook entropy up). ``q(c|z) ∝ exp(−‖z − c‖² / τ)`` factorises over the bits,
``q(c_i = 1 | z) = σ(4 z_i / τ)``, so the per-sample entropy is the exact sum of
``d`` binary entropies. The codebook entropy is computed ``"factorized"`` (the
sum of the bits' marginal entropies, an upper bound of the joint entropy; the
approximation of BSQ, arXiv 2406.07548, that never touches the ``2^d`` codes)
or ``"exact"`` (over all ``2^d`` codes, for ``d ≤ 16``). Entropies are over
this rank's batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Quantizer, mse

__all__ = ["LFQ", "binary_entropy_loss"]

CODEBOOK_ENTROPIES = ("factorized", "exact")
_MAX_EXACT_BITS = 16


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log() + (1 - p) * (1 - p).clamp_min(1e-12).log())


def binary_entropy_loss(logits: torch.Tensor, codebook_entropy: str = "factorized", diversity: float = 1.0) -> torch.Tensor:
    """``E[H(q)] − diversity · H(E[q])`` for bitwise code distributions ``q(c_i = 1) = σ(logits_i)``.

    ``logits``: ``(N, G, d)`` (G independent codebooks of d bits); entropies in nats,
    averaged over the G codebooks. Zero for an empty batch.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    p = torch.sigmoid(logits)
    per_sample = _binary_entropy(p).sum(-1).mean()
    if codebook_entropy == "factorized":
        codebook = _binary_entropy(p.mean(0)).sum(-1).mean()
    else:
        d = logits.shape[-1]
        bits = ((torch.arange(2**d, device=logits.device)[:, None] >> torch.arange(d, device=logits.device)) & 1).float()
        # log q(c | z) = Σ_i log σ(±logit_i), summed with the bit pattern of c
        log_q = F.logsigmoid(logits) @ bits.T + F.logsigmoid(-logits) @ (1 - bits).T  # (N, G, 2^d)
        avg = log_q.softmax(-1).mean(0)
        codebook = -(avg * avg.clamp_min(1e-12).log()).sum(-1).mean()
    return per_sample - diversity * codebook


class LFQ(Quantizer):
    """Lookup-free quantizer with an implicit ``{−1, 1}^d`` codebook.

    Args:
        dim: input feature size; defaults to ``log2(codebook_size) · num_codebooks``
            (projections otherwise).
        codebook_size: ``K = 2^d`` codes per codebook (a power of two, up to 2^62).
        num_codebooks: independent codebooks, each of ``d`` channels and one index.
        entropy_weight: w of the entropy penalty (0.1 in MAGVIT-v2).
        diversity: γ, the weight of the codebook entropy inside the penalty.
        commitment_weight: β.
        temperature: τ of ``q(c|z)``; 0.01 is vector-quantize-pytorch's inverse temperature 100.
        codebook_entropy: ``"factorized"`` or ``"exact"`` (d ≤ 16).
    """

    scale = 1.0

    def __init__(
        self,
        dim: int | None = None,
        codebook_size: int = 2**16,
        num_codebooks: int = 1,
        entropy_weight: float = 0.1,
        diversity: float = 1.0,
        commitment_weight: float = 0.25,
        temperature: float = 0.01,
        codebook_entropy: str = "factorized",
        channel_first: bool = False,
        gradient: str = "ste",
        check_finite: bool = True,
    ):
        bits = _bits(codebook_size)
        if num_codebooks < 1:
            raise ValueError(f"num_codebooks must be >= 1, got {num_codebooks}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if codebook_entropy not in CODEBOOK_ENTROPIES:
            raise ValueError(f"codebook_entropy must be one of {CODEBOOK_ENTROPIES}, got {codebook_entropy!r}")
        if codebook_entropy == "exact" and bits > _MAX_EXACT_BITS:
            raise ValueError(f"codebook_entropy='exact' sums over 2^{bits} codes; use 'factorized' above 2^{_MAX_EXACT_BITS}")
        super().__init__(dim or bits * num_codebooks, bits, codebook_size, num_codebooks=num_codebooks,
                         channel_first=channel_first, gradient=gradient, check_finite=check_finite)
        self.entropy_weight = entropy_weight
        self.diversity = diversity
        self.commitment_weight = commitment_weight
        self.temperature = temperature
        self.codebook_entropy = codebook_entropy
        self.register_buffer("_powers", 2 ** torch.arange(bits, dtype=torch.int64), persistent=False)

    def _prepare_codes(self, z: torch.Tensor) -> torch.Tensor:
        """The vector that is binarised (z itself for LFQ)."""
        return z

    def _quantize(self, z: torch.Tensor):
        pre = self._prepare_codes(z)
        positive = pre > 0
        codes = torch.where(positive, self.scale, -self.scale).to(pre.dtype)
        idx = (positive.long() * self._powers).sum(-1)
        loss = self.commitment_weight * mse(pre, codes)
        if self.entropy_weight:
            # q(c_i = +s | v) = σ(4 s v_i / τ) from exp(−‖v − c‖² / τ)
            logits = (4 * self.scale / self.temperature) * pre.reshape(-1, self.num_codebooks, self.codebook_dim)
            loss = loss + self.entropy_weight * binary_entropy_loss(logits, self.codebook_entropy, self.diversity)
        return pre, codes, idx, loss

    def _encode(self, z: torch.Tensor) -> torch.Tensor:
        return ((self._prepare_codes(z) > 0).long() * self._powers).sum(-1)

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        bits = (indices.reshape(-1, 1) // self._powers) % 2
        return torch.where(bits.bool(), self.scale, -self.scale).float()

    def _effective_codebook(self) -> torch.Tensor:
        return self._lookup(torch.arange(self.codebook_size, device=self._powers.device))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_size=2^{self.codebook_dim}, num_codebooks={self.num_codebooks}"


def _bits(codebook_size: int) -> int:
    bits = int(codebook_size).bit_length() - 1
    if codebook_size < 2 or 2**bits != codebook_size or bits > 62:
        raise ValueError(f"codebook_size must be a power of two between 2 and 2^62, got {codebook_size}")
    return bits
