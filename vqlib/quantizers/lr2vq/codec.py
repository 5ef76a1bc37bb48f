"""The LR²VQ weight codec: :class:`LR2VQWeight` (method and layout in :mod:`vqlib.quantizers.lr2vq`)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..codec import Codec
from ..kmeans import kmeans
from ..nearest import nearest
from ..packing import pack_bits, packed_size, unpack_bits

__all__ = ["LR2VQWeight"]

# pack_bits handles up to 16 bits per code
MAX_CODEBOOK_SIZE = 1 << 16


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype from a config (``"float32"``) or as it is."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; pass a torch.dtype or its name such as 'float32'")
    return value


def _check_config(rows: int, cols: int, vector_size: int, codebook_size: int | None, rank: int, cols_name: str):
    for name, value in (("vector_size", vector_size), ("rank", rank), ("codebook_size", codebook_size or 1)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if vector_size < 1:
        raise ValueError(f"vector_size (the subvector size) must be >= 1, got {vector_size}")
    if cols % vector_size:
        raise ValueError(
            f"vector_size={vector_size} must divide {cols_name}={cols}: subvectors are cut along it and never "
            "straddle two outputs"
        )
    if not 1 <= rank <= vector_size:
        raise ValueError(
            f"rank (d̃) must be in [1, vector_size={vector_size}]: the representation cannot have more dimensions "
            f"than the subvectors; got {rank}"
        )
    num = rows * cols // vector_size
    if codebook_size is None:
        return
    if not 1 <= codebook_size <= num:
        raise ValueError(
            f"codebook_size must be in [1, {num}] (the number of subvectors of size {vector_size}), got {codebook_size}"
        )
    if codebook_size > MAX_CODEBOOK_SIZE:
        raise ValueError(
            f"codebook_size must be at most {MAX_CODEBOOK_SIZE} (assignments are stored in at most 16 bits), "
            f"got {codebook_size}"
        )


def _refresh_assign(module: LR2VQWeight, incompatible_keys) -> None:
    # a module-level function, not a lambda, so that torch.save(model) can pickle the hook
    module._unpack()
    module._fitted = True


class LR2VQWeight(Codec, nn.Module):
    """A ``(rows, cols)`` weight matrix stored as LR²VQ codes; calling it returns the matrix.

    Holds ``centroids`` C ``(codebook_size, rank)`` and ``proj`` P ``(rank, vector_size)`` as
    parameters and the assignments packed to ⌈log2 codebook_size⌉ bits each in the ``codes``
    buffer (empty when codebook_size = 1); nothing else goes into the state dict. Build it
    empty and load a state dict (or ``from_pretrained``), or call :meth:`fit` on a dense weight.

    ``codebook_size=None`` skips the clustering: C is R itself (one row per subvector,
    a_i = i, no codes stored), a plain low-rank layer R·P for the paper's low-rank
    pre-training stage; :attr:`codebook_size` is then N, the rows of C.

    The codec contract (:class:`~vqlib.quantizers.codec.Codec`): one encoded item is one row of
    the matrix (``code_dim = cols``); ``code_size`` counts the packed code bytes and the floats
    of C and P, amortised over the rows, so ``bits_per_weight`` is every stored bit over
    ``rows·cols``. :meth:`encode` gives the packed codes of a weight against the fitted C and P
    (the layout of the ``codes`` buffer), :meth:`decode` the matrix they stand for.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        vector_size: int,
        codebook_size: int | None,
        rank: int,
        cols_name: str = "cols",
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ):
        super().__init__()
        _check_config(rows, cols, vector_size, codebook_size, rank, cols_name)
        dtype = as_dtype(dtype)
        self.num_subvectors = rows * cols // vector_size
        self.clustered = codebook_size is not None
        self.rows, self.cols, self.vector_size, self.rank = rows, cols, vector_size, rank
        self.codebook_size = codebook_size if self.clustered else self.num_subvectors
        # ⌈log2 K⌉, 0 for K = 1; none for the identity assignments of codebook_size=None
        self.code_bits = (codebook_size - 1).bit_length() if self.clustered else 0
        factory = {"device": device, "dtype": dtype}
        self.centroids = nn.Parameter(torch.zeros(self.codebook_size, rank, **factory))
        self.proj = nn.Parameter(torch.zeros(rank, vector_size, **factory))
        self.register_buffer("codes", torch.zeros(self._code_bytes, dtype=torch.uint8, device=device))
        # unpacked copy for the gather in forward; rebuilt from `codes` after every load
        assign = torch.zeros(self.num_subvectors, dtype=torch.long, device=device)
        self.register_buffer("assign", assign, persistent=False)
        self._unpack()
        # R, only while fine-tuning with soft assignments (see soften / harden)
        self.register_parameter("latent", None)
        self.temperature = 1.0
        self._distance_scale = 1.0
        self._fitted = False
        self.register_load_state_dict_post_hook(_refresh_assign)

    # --- the codec contract ------------------------------------------------------

    @property
    def _code_bytes(self) -> int:
        return packed_size(self.num_subvectors, self.code_bits) if self.code_bits else 0

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    @property
    def code_dim(self) -> int:
        return self.cols

    @property
    def code_size(self) -> float:
        """Stored bytes per row: packed codes, C and P (amortised over the rows)."""
        floats = (self.centroids.numel() + self.proj.numel()) * self.centroids.element_size()
        return (self._code_bytes + floats) / self.rows

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> torch.Tensor:
        """Packed codes (``uint8``, the layout of the ``codes`` buffer) of ``weight`` against the fitted C and P:
        a_i = argmin_j ‖X_i·Pᵀ − C_j‖²."""
        self.require_fitted()
        if not self.clustered:
            raise ValueError(
                "an LR2VQWeight built with codebook_size=None stores R itself, not codes: it cannot encode another "
                "weight; build it with a codebook_size"
            )
        x = self._subvectors(weight)
        assign = nearest(x @ self.proj.detach().float().T, self.centroids.detach().float())[1][:, 0]
        return pack_bits(assign, self.code_bits) if self.code_bits else torch.zeros(0, dtype=torch.uint8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The ``(rows, cols)`` matrix ``reshape(C[a]·P)`` of packed codes made by :meth:`encode`."""
        self.require_fitted()
        return self._weight(self._assign_of(codes))

    def _assign_of(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.shape != (self._code_bytes,):
            got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise self.codes_mismatch(
                f"expected {self._code_bytes} uint8 bytes of {self.num_subvectors} packed {self.code_bits}-bit codes, "
                f"got {got}"
            )
        if not self.clustered:
            return torch.arange(self.num_subvectors, device=self.centroids.device)
        if not self.code_bits:
            return torch.zeros(self.num_subvectors, dtype=torch.long, device=self.centroids.device)
        assign = unpack_bits(codes, self.code_bits, self.num_subvectors).to(self.centroids.device)
        if int(assign.max()) >= self.codebook_size:
            raise self.codes_mismatch(f"a code reaches {int(assign.max())}, outside the {self.codebook_size} centroids")
        return assign

    # --- storage -------------------------------------------------------------

    @property
    def bits(self) -> int:
        """Bits stored, the paper's count: N·⌈log2 K⌉ for the assignments plus the floats of C and P."""
        float_bits = self.centroids.element_size() * 8
        return self.num_subvectors * self.code_bits + float_bits * (self.centroids.numel() + self.proj.numel())

    @property
    def dense_bits(self) -> int:
        """Bits of the dense matrix at the same float width."""
        return self.centroids.element_size() * 8 * self.rows * self.cols

    @property
    def compression_ratio(self) -> float:
        return self.dense_bits / self.bits

    @torch.no_grad()
    def _set_assign(self, assign: torch.Tensor) -> None:
        self.assign.copy_(assign)
        if self.code_bits:
            self.codes.copy_(pack_bits(assign, self.code_bits))

    @torch.no_grad()
    def _unpack(self) -> None:
        if not self.clustered:
            torch.arange(self.num_subvectors, out=self.assign)
            return
        if not self.code_bits:
            self.assign.zero_()
            return
        assign = unpack_bits(self.codes, self.code_bits, self.num_subvectors)
        if int(assign.max()) >= self.codebook_size:
            raise ValueError(f"stored codes reach {int(assign.max())}, outside the {self.codebook_size} centroids")
        self.assign.copy_(assign)

    # --- fitting -------------------------------------------------------------

    def _subvectors(self, weight: torch.Tensor) -> torch.Tensor:
        if not isinstance(weight, torch.Tensor) or weight.numel() != self.rows * self.cols:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"expected a weight of {self.rows}x{self.cols} elements, got shape {shape}")
        x = weight.detach().float().reshape(self.num_subvectors, self.vector_size)
        if not torch.isfinite(x).all():
            raise ValueError("weight contains NaN or inf; LR²VQ can only compress finite weights")
        return x

    @torch.no_grad()
    def fit(
        self, weight: torch.Tensor, kmeans_iters: int = 25, generator: torch.Generator | None = None
    ) -> LR2VQWeight:
        """Compress ``weight`` (any shape with ``rows·cols`` elements, row-major) into this module; returns it.

        P = the top-``rank`` right singular vectors of X, R = X·Pᵀ, then k-means on the rows of R.
        When X has no more than ``codebook_size`` distinct rows each gets its own centroid, which
        makes the reconstruction exact for rank = vector_size.
        """
        x = self._subvectors(weight)
        # full_matrices only when N < vector_size, so that vh still has vector_size rows (U is N×N, small then)
        _, _, vh = torch.linalg.svd(x, full_matrices=self.num_subvectors < self.vector_size)
        proj = vh[: self.rank]
        if not self.clustered:
            self.centroids.copy_(x @ proj.T)
            self.proj.copy_(proj)
            self._fitted = True
            return self
        distinct, inverse = torch.unique(x, dim=0, return_inverse=True)
        if distinct.shape[0] <= self.codebook_size:
            # centroids straight from the distinct rows (projected once, so equal rows stay
            # bit-equal); Lloyd could seed two centroids on equal rows and merge clusters
            centroids = distinct @ proj.T
            pad = centroids[:1].expand(self.codebook_size - centroids.shape[0], -1)
            centroids, assign = torch.cat([centroids, pad]), inverse
        else:
            r = x @ proj.T
            centroids, assign, _ = kmeans(r, self.codebook_size, iters=kmeans_iters, generator=generator)
        self.centroids.copy_(centroids)
        self.proj.copy_(proj)
        self._set_assign(assign)
        self._fitted = True
        return self

    # --- soft assignments ------------------------------------------------------

    @torch.no_grad()
    def soften(self, temperature: float = 1.0) -> None:
        """Start soft assignments: R becomes a trainable parameter, initialised to C[a].

        Distances are divided by ``temperature·s`` with s the mean squared
        distance from a centroid to its nearest distinct one, fixed here, so
        ``temperature`` means the same thing for every layer whatever its scale.
        """
        if not self.clustered:
            raise ValueError("soft assignments need a clustered layer (codebook_size given, not None)")
        c = self.centroids.float()
        gaps = torch.cdist(c, c).square()
        gaps[gaps <= 0] = math.inf  # itself, and duplicate centroids
        nearest_gap = gaps.min(1).values
        finite = nearest_gap[torch.isfinite(nearest_gap)]
        self._distance_scale = float(finite.mean()) if finite.numel() and finite.mean() > 0 else 1.0
        self.temperature = float(temperature)
        self.latent = nn.Parameter(self.centroids[self.assign].clone())

    def soft_assignments(self) -> torch.Tensor:
        """``(N, K)`` softmax over −‖R_i − C_j‖² / (temperature·s); needs :meth:`soften` first."""
        if self.latent is None:
            raise ValueError("soft assignments need soften() first")
        r, c = self.latent, self.centroids
        dist = (r * r).sum(1, keepdim=True) - 2 * r @ c.T + (c * c).sum(1)
        return torch.softmax(-dist / (self.temperature * self._distance_scale), dim=1)

    @torch.no_grad()
    def harden(self) -> None:
        """End soft assignments: a_i = argmin_j ‖R_i − C_j‖², stored; R is dropped."""
        if self.latent is None:
            return
        self._set_assign(nearest(self.latent.detach(), self.centroids.detach())[1][:, 0])
        self.latent = None

    # --- the weight ----------------------------------------------------------

    def _weight(self, assign: torch.Tensor) -> torch.Tensor:
        # the K possible subvectors; gathering rows of C·P equals C[a]·P with fewer flops
        return F.embedding(assign, self.centroids @ self.proj).reshape(self.rows, self.cols)

    def forward(self) -> torch.Tensor:
        if self.latent is None:
            return self._weight(self.assign)
        return (self.soft_assignments() @ (self.centroids @ self.proj)).reshape(self.rows, self.cols)

    def extra_repr(self) -> str:
        mode = "" if self.latent is None else f", soft (temperature={self.temperature:.3g})"
        return (
            f"{self.rows}x{self.cols}, vector_size={self.vector_size}, codebook_size={self.codebook_size}, "
            f"rank={self.rank}, ratio={self.compression_ratio:.2f}{mode}"
        )
