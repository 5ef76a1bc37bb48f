"""VQ4DiT: post-training vector quantization of diffusion transformers (Deng et al., AAAI 2025, arXiv 2408.17131).

Per layer, the weight's sub-vectors of ``d`` inputs get a codebook ``C`` of ``k`` codewords by
k-means. Instead of committing each sub-vector ``w_j`` to its nearest codeword, VQ4DiT keeps
a candidate set ``A_j`` of its ``n`` nearest codewords and reconstructs it as the weighted
average

    ŵ_j = Σ_{a ∈ A_j} r_{j,a} · C[a],    r_j = softmax(z_j),

with logits started at ``z_{j,a} = −log ‖w_j − C[a]‖`` (ratios inversely proportional to the
distances). Calibration (zero-data: along the model's own sampling path) minimises, block by
block, the error between the block's output and the full-precision block's output, updating
the codebook and the logits, plus ``λ · n · mean r(1−r)`` which pushes the ratios towards one
hot. A sub-vector whose largest ratio passes 0.99 is frozen to that candidate (progressive
freezing); a layer with more than 99% frozen turns hard (codes fixed, the codebook still
calibrated), and at the end every assignment is the candidate with the largest ratio. With a
short calibration (vqlib's default: hundreds of steps per block, not the paper's thousands)
few sub-vectors reach 0.99 on their own, so after ``harden_at`` of the steps every assignment
is made hard and the rest of the steps calibrate the codebook for the codes that are stored.

vqlib's format keeps a per-output-channel scale (VQLinear): weights are divided by their row RMS
before clustering and the scale is calibrated with the codebook.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqlib.quantizers import nearest

from .kmeans_vq import KMeansInit, to_vq_linear

__all__ = ["SoftVQLinear"]


class SoftVQLinear(nn.Module):
    """A linear layer during VQ4DiT calibration: candidate codewords per sub-vector mixed by softmax ratios.

    Args:
        linear: the full-precision layer (its bias is kept as it is).
        init: the layer's k-means start (:func:`vqlib.diffusion.kmeans_vq.kmeans_init`).
        candidates: ``n``, nearest codewords kept per sub-vector.
        freeze_threshold: a ratio above it freezes its sub-vector's assignment.
        harden_at: fraction of the calibration steps after which every assignment is hard, so the
            remaining steps calibrate the codebook (and scales) for the codes that will be stored.
    """

    def __init__(self, linear: nn.Linear, init: KMeansInit, candidates: int = 2, freeze_threshold: float = 0.99,
                 harden_at: float = 0.75):  # fmt: skip
        super().__init__()
        if not 1 <= candidates <= init.codebook.shape[0]:
            raise ValueError(f"candidates must be in [1, codebook_size={init.codebook.shape[0]}], got {candidates}")
        if not 0.5 <= freeze_threshold < 1:
            raise ValueError(f"freeze_threshold must be in [0.5, 1), got {freeze_threshold}")
        self._source = [linear]  # a plain list: the FP layer is not a submodule (its weight never trains)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.vector_size = init.codebook.shape[1]
        if not 0 <= harden_at <= 1:
            raise ValueError(f"harden_at must be in [0, 1], got {harden_at}")
        self.freeze_threshold, self.harden_at = freeze_threshold, harden_at
        self.codebook = nn.Parameter(init.codebook.clone().float())
        self.scales = nn.Parameter(init.scales.clone().float()) if init.scales is not None else None
        sub = init.normalised.reshape(-1, self.vector_size)
        dist, cand = nearest(sub, self.codebook.detach(), k=candidates)  # squared distances, nearest first
        self.register_buffer("candidates", cand)
        self.logits = nn.Parameter(-0.5 * torch.log(dist.clamp_min(1e-12)))  # −log of the distance
        self.register_buffer("frozen", torch.zeros(sub.shape[0], dtype=torch.bool, device=sub.device))
        self.register_buffer("choice", torch.zeros(sub.shape[0], dtype=torch.long, device=sub.device))
        self.hard = False

    @property
    def bias(self) -> torch.Tensor | None:
        return self._source[0].bias

    def ratios(self) -> torch.Tensor:
        """``(M, n)`` mixing ratios: softmax of the logits, one-hot for frozen sub-vectors."""
        r = F.softmax(self.logits, dim=-1)
        onehot = F.one_hot(self.choice, r.shape[1]).to(r.dtype)
        return torch.where(self.frozen[:, None], onehot, r)

    def codes(self) -> torch.Tensor:
        """Hard codes ``(M,)``: each sub-vector's candidate with the largest ratio (frozen ones: their choice)."""
        pick = torch.where(self.frozen, self.choice, self.ratios().argmax(-1))
        return self.candidates.gather(1, pick[:, None])[:, 0]

    def weight(self) -> torch.Tensor:
        if self.hard:
            sub = self.codebook[self.codes()]
        else:
            sub = torch.einsum("mn,mnv->mv", self.ratios(), self.codebook[self.candidates])
        w = sub.reshape(self.out_features, self.in_features)
        return w * self.scales[:, None] if self.scales is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.detach().to(x.dtype))

    def regulariser(self) -> torch.Tensor:
        """``n · mean r(1−r)`` over the sub-vectors not frozen yet (zero once hard)."""
        if self.hard or bool(self.frozen.all()):
            return self.codebook.new_zeros(())
        r = F.softmax(self.logits[~self.frozen], dim=-1)
        return r.shape[1] * (r * (1 - r)).mean()

    def param_groups(self, config) -> list[dict]:
        groups = [{"params": [self.codebook], "lr": config.lr_codebook}, {"params": [self.logits], "lr": config.lr_ratios}]
        if self.scales is not None:
            groups.append({"params": [self.scales], "lr": config.lr_scales})
        return groups

    @torch.no_grad()
    def progressive_freeze(self) -> int:
        """Freeze every sub-vector whose largest ratio passed the threshold; turn hard past 99% frozen.

        Returns the number of sub-vectors newly frozen. A frozen sub-vector keeps its candidate for the
        rest of calibration (its logits no longer take part).
        """
        if self.hard:
            return 0
        r = F.softmax(self.logits, dim=-1)
        top, arg = r.max(-1)
        new = (top > self.freeze_threshold) & ~self.frozen
        self.choice[new] = arg[new]
        self.frozen |= new
        if self.frozen.float().mean() > 0.99:
            self.harden()
        return int(new.sum())

    @torch.no_grad()
    def harden(self) -> None:
        """Every assignment hard: the candidate with the largest ratio."""
        pick = torch.where(self.frozen, self.choice, F.softmax(self.logits, dim=-1).argmax(-1))
        self.choice.copy_(pick)
        self.frozen.fill_(True)
        self.hard = True

    def after_step(self, step: int, steps: int) -> None:
        self.progressive_freeze()
        if step + 1 >= self.harden_at * steps:
            self.harden()

    @torch.no_grad()
    def to_module(self, config) -> nn.Module:
        self.harden()
        return to_vq_linear(self._source[0], self.codebook, self.codes(), self.scales, None,
                            config.codebook_dtype, config.scales_dtype)  # fmt: skip
