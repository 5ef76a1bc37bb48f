"""The one contract every vqlib quantizer follows.

A quantizer maps ``x`` of shape ``(..., dim)`` (or ``(B, dim, H, W)`` with
``channel_first=True``) to a :class:`QuantizerOutput` ``(quantized, indices,
loss)``. ``quantized`` has the input's shape and dtype, ``indices`` are int64 of
shape ``(...)`` (``(..., num_codebooks)`` for factorised quantizers) and
``loss`` is a scalar (zero when the method has none). ``decode(encode(x))`` is
bit-identical to ``forward(x).quantized`` in eval mode, for every option.

Subclasses implement three hooks on flattened fp32 data in the codebook space
(after the optional input projection):

* ``_quantize(z) -> (pre, codes, indices, loss)``: ``codes`` are the quantized
  vectors, ``pre`` the continuous vectors the gradient estimator carries the
  output gradient to (``z`` itself for VQ; the bounded values for FSQ).
* ``_lookup(indices) -> codes``: the same codes from indices alone.
* ``_effective_codebook() -> (K, codebook_dim)`` tensor.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigMixin
from .distributed import all_reduce_sum
from .estimators import ESTIMATORS, GRADIENTS
from .nearest import nearest

__all__ = ["GeneratedCodebookQuantizer", "Quantizer", "QuantizerOutput", "Usage", "GRADIENTS"]


# The implicit codebook of a grid quantizer is materialised only below this size.
_MAX_CODEBOOK_BYTES = 1 << 30
# Dense usage counts are kept only up to this many codes (128 MiB of float64).
_MAX_COUNTED_CODES = 1 << 24


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor


class Usage(NamedTuple):
    """Codebook usage since the last ``reset_usage()``.

    ``used`` is the fraction of codes hit at least once, ``perplexity`` is
    ``exp(entropy)`` of the empirical code distribution (equal to K for uniform
    use), ``dead`` the number of codes never hit, ``total`` the number of
    indices counted. With several codebooks the first three are averaged
    (``used``, ``perplexity``) or summed (``dead``) over codebooks.
    """

    used: float
    perplexity: float
    dead: int
    total: int


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error that is 0 (not NaN) for an empty batch."""
    return F.mse_loss(a, b) if a.numel() else (a.sum() + b.sum()) * 0.0


def _like_weights(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Match a projection's dtype outside autocast (inside it, autocast picks the dtype)."""
    if isinstance(layer, nn.Linear) and not torch.is_autocast_enabled(x.device.type):
        return x.to(layer.weight.dtype)
    return x


class Quantizer(ConfigMixin, nn.Module):
    """Base class: validation, layout, projections, gradient estimator, usage accounting.

    Args:
        dim: size of the input's feature dimension.
        codebook_dim: size of the codebook space; when it differs from ``dim``
            the input passes a ``Linear(dim, codebook_dim)`` and the output a
            ``Linear(codebook_dim, dim)``.
        codebook_size: codes per codebook (K).
        num_codebooks: independent codebooks, one index each (factorised codes).
        channel_first: inputs are ``(B, dim, *spatial)`` and indices ``(B, *spatial)``.
        gradient: ``"ste"`` (straight-through) or ``"rotation"`` (rotation trick).
        check_finite: raise on NaN/inf input (one reduction; turn off on hot paths).
    """

    def __init__(
        self,
        dim: int,
        codebook_dim: int,
        codebook_size: int,
        num_codebooks: int = 1,
        channel_first: bool = False,
        gradient: str = "ste",
        check_finite: bool = True,
    ):
        super().__init__()
        if dim < 1 or codebook_dim < 1:
            raise ValueError(f"dim and codebook_dim must be positive, got {dim} and {codebook_dim}")
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}")
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        self.dim = dim
        self.codebook_dim = codebook_dim
        self._codebook_size = int(codebook_size)
        self.num_codebooks = num_codebooks
        self.channel_first = channel_first
        self.gradient = gradient
        self.check_finite = check_finite
        inner = codebook_dim * num_codebooks
        self.project_in = nn.Linear(dim, inner) if inner != dim else nn.Identity()
        self.project_out = nn.Linear(inner, dim) if inner != dim else nn.Identity()
        counted = codebook_size if codebook_size * num_codebooks <= _MAX_COUNTED_CODES else 0
        self.register_buffer("usage_counts", torch.zeros(num_codebooks, counted, dtype=torch.float64), persistent=False)

    # ---- the contract ---------------------------------------------------

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    @property
    def bits_per_index(self) -> float:
        """Bits of one index, all codebooks together (``num_codebooks · log2 K``)."""
        return self.num_codebooks * math.log2(self.codebook_size)

    @property
    def codebook(self) -> torch.Tensor:
        """The effective ``(K, codebook_dim)`` codebook (after any reparameterisation), detached."""
        nbytes = self.codebook_size * self.codebook_dim * 4
        if nbytes > _MAX_CODEBOOK_BYTES:
            raise ValueError(
                f"the codebook ({self.codebook_size} x {self.codebook_dim}) needs {nbytes / 2**30:.1f} GiB; "
                "materialise slices with decode() instead"
            )
        with torch.no_grad():
            return self._effective_codebook().detach()

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        lead, z = self._prepare(x)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            pre, codes, indices, loss = self._quantize(z.reshape(-1, self.codebook_dim))
            if torch.is_grad_enabled() and pre.requires_grad:
                estimator = ESTIMATORS[self.gradient]
                codes = estimator.apply(pre, codes.detach())
            else:
                # the output never carries gradient into the codebook (only ``loss`` does)
                codes = codes.detach()
            indices = indices.reshape(-1, self.num_codebooks)
            self._count(indices)
        quantized = self._finish(codes, lead, x.dtype)
        return QuantizerOutput(quantized, self._shape_indices(indices, lead), loss)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest codes; no state is updated."""
        lead, z = self._prepare(x)
        with torch.autocast(device_type=z.device.type, enabled=False):
            indices = self._encode(z.float().reshape(-1, self.codebook_dim))
        return self._shape_indices(indices.reshape(-1, self.num_codebooks), lead)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized vectors (input layout) from indices."""
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"indices must be an integer tensor, got {got}")
        if self.num_codebooks > 1:
            if indices.dim() < 1 or indices.shape[-1] != self.num_codebooks:
                raise ValueError(f"expected indices with last dim {self.num_codebooks} (num_codebooks), got shape {tuple(indices.shape)}")
            lead = indices.shape[:-1]
        else:
            lead = indices.shape
        if indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(f"indices must be in [0, {self.codebook_size}), got values in [{lo}, {hi}]")
        if self.channel_first and len(lead) < 1:
            raise ValueError("channel_first decode expects indices of shape (B, *spatial)")
        flat = indices.reshape(-1, self.num_codebooks).long()
        with torch.autocast(device_type=flat.device.type, enabled=False):
            codes = self._lookup(flat)
        dtype = torch.get_autocast_dtype(flat.device.type) if torch.is_autocast_enabled(flat.device.type) else codes.dtype
        return self._finish(codes, lead, dtype)

    # ---- usage ----------------------------------------------------------

    def reset_usage(self) -> None:
        self.usage_counts.zero_()

    def usage(self, sync: bool = True) -> Usage:
        """Usage over every forward since :meth:`reset_usage`.

        Under ``torch.distributed`` the counts of all ranks are summed, so this
        is a collective call that every rank must make; ``sync=False`` reports
        this rank's forwards only.
        """
        if self.usage_counts.shape[1] == 0:
            raise ValueError(
                f"usage is not tracked for {self.num_codebooks} x {self.codebook_size} codes "
                f"(more than {_MAX_COUNTED_CODES}); count encode() indices yourself"
            )
        counts = self.usage_counts.clone()
        if sync:
            all_reduce_sum(counts)
        total = counts.sum(-1)
        used = (counts > 0).double().mean(-1)
        p = counts / total.clamp_min(1).unsqueeze(-1)
        entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
        perplexity = torch.where(total > 0, entropy.exp(), torch.zeros_like(entropy))
        return Usage(
            used=float(used.mean()),
            perplexity=float(perplexity.mean()),
            dead=int((counts == 0).sum()),
            total=int(total.sum()),
        )

    # ---- hooks ----------------------------------------------------------

    def _quantize(self, z: torch.Tensor):
        raise NotImplementedError

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _effective_codebook(self) -> torch.Tensor:
        raise NotImplementedError

    def _encode(self, z: torch.Tensor) -> torch.Tensor:
        return self._quantize(z)[2]

    # ---- plumbing -------------------------------------------------------

    def _prepare(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point input, got {x.dtype}")
        if self.channel_first:
            if x.dim() < 2 or x.shape[1] != self.dim:
                raise ValueError(f"expected channel-first input (B, {self.dim}, ...), got shape {tuple(x.shape)}")
            x = x.movedim(1, -1)
        elif x.dim() < 1 or x.shape[-1] != self.dim:
            got = x.shape[-1] if x.dim() else "a scalar"
            raise ValueError(f"expected last dim {self.dim}, got {got}")
        if self.check_finite and not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or inf (pass check_finite=False to skip this check)")
        lead = x.shape[:-1]
        return lead, self.project_in(_like_weights(x, self.project_in))

    def _finish(self, codes: torch.Tensor, lead, dtype) -> torch.Tensor:
        codes = codes.reshape(*lead, self.codebook_dim * self.num_codebooks)
        out = self.project_out(_like_weights(codes, self.project_out))
        if self.channel_first:
            out = out.movedim(-1, 1)
        return out.to(dtype)

    def _shape_indices(self, indices: torch.Tensor, lead) -> torch.Tensor:
        if self.num_codebooks == 1:
            return indices.reshape(lead)
        return indices.reshape(*lead, self.num_codebooks)

    @torch.no_grad()
    def _count(self, indices: torch.Tensor) -> None:
        k = self.usage_counts.shape[1]
        if k == 0:
            return
        offsets = torch.arange(self.num_codebooks, device=indices.device) * k
        # counted locally: a collective per forward would hang a forward made on one rank only
        counts = torch.bincount((indices + offsets).flatten(), minlength=k * self.num_codebooks)
        self.usage_counts += counts.view(self.num_codebooks, k).to(self.usage_counts.dtype)

    def _cached(self, name: str, params, compute):
        """Recompute a derived tensor only when ``params`` changed (eval, no grad)."""
        if self.training or torch.is_grad_enabled():
            return compute()
        key = tuple((p.data_ptr(), p._version) for p in params)
        hit = self.__dict__.get("_cache_" + name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        self.__dict__["_cache_" + name] = (key, value)
        return value

    def extra_repr(self) -> str:
        return f"dim={self.dim}, codebook_dim={self.codebook_dim}, codebook_size={self.codebook_size}, num_codebooks={self.num_codebooks}"



class GeneratedCodebookQuantizer(Quantizer):
    """A codebook computed from learned parameters (SimVQ, FVQ), trained by gradient.

    Nearest code in l2 over the effective codebook ``E``; loss
    ``‖z_q − sg(z)‖² + β‖sg(z_q) − z‖²`` (the first term trains what generates
    ``E``). Subclasses set ``beta`` and implement ``_effective_codebook``.
    """

    beta: float

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self._effective_codebook()[indices[:, 0]]

    def _encode(self, z: torch.Tensor) -> torch.Tensor:
        return self._encode_with(z, self._effective_codebook())

    def _quantize(self, z: torch.Tensor):
        codebook = self._effective_codebook()
        idx = self._encode_with(z, codebook)
        codes = codebook[idx]
        loss = mse(codes, z.detach()) + self.beta * mse(z, codes.detach())
        return z, codes, idx, loss

    @staticmethod
    def _encode_with(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        return nearest(z, codebook.detach())[1][:, 0]
