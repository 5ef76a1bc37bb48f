"""Pyramid vector quantization (PVQ): gain–shape coding on the integer L1 sphere.

Van der Ouderaa, Croci, Hilmkil, Hensman 2024, "Pyramid Vector Quantization
for LLMs", arXiv 2410.16926; the codebook and its enumeration are from T. R.
Fischer, "A pyramid vector quantizer", IEEE Trans. Inf. Theory 32(4), 1986.
A sub-vector ``x ∈ R^D`` (``D = vector_size``) is coded as a direction on the
pyramid with ``K = pulses`` and a scalar gain:

    P(D, K) = {y ∈ Z^D : Σ|y_i| = K},   |P(D, K)| = V(D, K)
    y = argmax_{y ∈ P} cos(x, y),   g = Q(⟨x, y⟩ / ‖y‖₂),   x̂ = g · y / ‖y‖₂

``y`` is stored as its rank in ``[0, V(D, K))`` (Fischer's enumeration, no
codebook in memory) and ``g`` as one of ``2^amplitude_bits`` levels, so a
sub-vector costs ``log2 V(D, K) + amplitude_bits`` bits. An optional random
Hadamard rotation first spreads outliers over the sub-vector so that it looks
Gaussian (the paper's "coherence processing"). :func:`pvq_quantize_weight` adds
the paper's Hessian-aware variant: sub-vectors of columns are quantized in
order with GPTQ's error feedback (Frantar et al. 2022, arXiv 2210.17323).

The parts live in three modules: the enumeration and its multi-word integer
arithmetic in :mod:`vqlib.quantizers.pvq_enum` (:func:`pvq_index`,
:func:`pvq_point`, :func:`pvq_size`, :func:`pvq_words`), the rotation in
:mod:`vqlib.quantizers.rotations` (:func:`hadamard_transform`), the error
feedback in :mod:`vqlib.quantizers.gptq` (:func:`gptq_quantize`); this module
holds the nearest-point search and the codec, and re-exports the rest.

Where this differs from the paper: the gain levels are fitted by Lloyd–Max
(1-D k-means) on the data's gains rather than derived from a Beta model of
the amplitudes, and the greedy pulse search ends with a few single-pulse
moves (see :func:`pvq_nearest`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .codec import Codec
from .config import renamed_argument
from .gptq import gptq_quantize
from .packing import pack_bits, packed_size, unpack_bits
from .pvq_enum import WORD_BITS, _check_nk, ints_to_words, pvq_index, pvq_point, pvq_size, pvq_words, words_to_ints
from .rotations import hadamard_transform

__all__ = [
    "PVQCodes",
    "PVQWeight",
    "PyramidVQ",
    "ROTATIONS",
    "WORD_BITS",
    "hadamard_transform",
    "ints_to_words",
    "pvq_index",
    "pvq_nearest",
    "pvq_point",
    "pvq_quantize_weight",
    "pvq_size",
    "pvq_words",
    "words_to_ints",
]

ROTATIONS = ("hadamard", None)


# ---- nearest point -------------------------------------------------------------


def _check_float(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _cos2(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``cos²(|x|, y) · ‖x‖²``: the quantity every step below compares (larger is closer)."""
    return (a * y).sum(-1) ** 2 / (y * y).sum(-1)


def _fill(a: torch.Tensor, y: torch.Tensor, K: int) -> torch.Tensor:
    """Add the missing pulses one at a time, each where it raises the cosine most."""
    xy, yy = (a * y).sum(-1), (y * y).sum(-1).double()
    missing = K - y.sum(-1)
    rows = torch.arange(y.shape[0], device=y.device)
    for _ in range(int(missing.max()) if missing.numel() else 0):
        best = ((xy[:, None] + a) ** 2 / (yy[:, None] + 2 * y + 1)).argmax(-1)
        add = (missing > 0).long()
        y[rows, best] += add
        xy = xy + a[rows, best] * add
        yy = yy + (2 * y[rows, best] - 1).double() * add
        missing = missing - add
    return y


def _largest_remainder(u: torch.Tensor, K: int) -> torch.Tensor:
    """The projection rounded onto the pyramid: floor, then +1 on the largest fractional parts."""
    y = torch.floor(u)
    missing = K - y.sum(-1, keepdim=True).long()
    rank = (u - y).argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    return y.long() + (rank < missing).long()


def _exchange(a: torch.Tensor, y: torch.Tensor, passes: int, candidates: int = 4) -> torch.Tensor:
    """Move one pulse ``i → j`` per pass where that raises the cosine most.

    Only the ``candidates`` best single removals × best single additions are
    scored, so a pass costs ``O(N)`` per row rather than ``O(N²)``; on
    Gaussian data (N ≤ 10) 8 candidates found no better points than 4.
    """
    N = y.shape[-1]
    t = min(candidates, N)
    rows = torch.arange(y.shape[0], device=y.device)
    for _ in range(passes if y.shape[0] else 0):
        xy, yy = (a * y).sum(-1), (y * y).sum(-1).double()
        add = (xy[:, None] + a) ** 2 / (yy[:, None] + 2 * y + 1)
        drop = ((xy[:, None] - a) ** 2 / (yy[:, None] - 2 * y + 1).clamp_min(1)).masked_fill(y == 0, -1.0)
        J, I = add.topk(t, -1).indices, drop.topk(t, -1).indices
        ai, aj = a.gather(1, I)[:, :, None], a.gather(1, J)[:, None, :]
        yi, yj = y.gather(1, I)[:, :, None], y.gather(1, J)[:, None, :]
        # ‖y'‖² = ‖y‖² − 2y_i + 1 + 2y_j + 1 for i ≠ j
        score = (xy[:, None, None] - ai + aj) ** 2 / (yy[:, None, None] - 2 * yi + 2 * yj + 2)
        score = score.masked_fill((yi == 0) | (I[:, :, None] == J[:, None, :]), -1.0)
        best, arg = score.reshape(y.shape[0], -1).max(-1)
        # a relative margin: a move that only wins by rounding could undo the last one forever
        move = (best > xy**2 / yy * (1 + 1e-12)).long()
        if not bool(move.any()):
            break
        i, j = I[rows, arg // t], J[rows, arg % t]
        y[rows, i] -= move
        y[rows, j] += move
    return y


def pvq_nearest(x: torch.Tensor, pulses: int, refine: int = 4) -> torch.Tensor:
    """The point of ``P(N, K)`` (``K = pulses``) closest in angle to each row of ``x``: ``(..., N)`` float →
    ``(..., N)`` int64.

    Project onto the L1 sphere of radius ``K``, ``u = K|x|/‖x‖₁``,
    and floor (``Σ⌊u_i⌋ ≤ K``, so pulses are only ever missing, never in
    excess). The missing ``K − Σ⌊u_i⌋ < N`` pulses are placed one at a time
    where they raise ``cos(x, y)`` most, i.e. maximise
    ``(⟨|x|, y⟩ + |x_i|)² / (‖y‖² + 2 y_i + 1)``. Greedy is not always the
    optimum, and not even always better than rounding the projection by
    largest remainders, so the better of the two is kept, then up to
    ``refine`` passes move single pulses while that raises the cosine. Each
    step only raises the cosine: never worse than either start point.
    Signs follow ``x`` (``+`` where ``x_i = 0``). A zero row has no direction:
    it gets all ``K`` pulses on its first coordinate.
    """
    _check_float(x, "x")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have shape (..., N) with N >= 1, got {tuple(x.shape)}")
    lead, N = x.shape[:-1], x.shape[-1]
    K = pulses
    _check_nk(N, K)
    if not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be an integer >= 0, got {refine!r}")
    # float64: the floor must not cross an integer through rounding, and the
    # scores of near-ties must compare like the true cosines
    a = x.reshape(-1, N).double().abs()
    l1 = a.sum(-1, keepdim=True)
    zero = l1[:, 0] == 0
    u = K * a / torch.where(zero[:, None], 1.0, l1)
    y = _fill(a, torch.floor(u).long(), K)
    rounded = _largest_remainder(u, K)
    y = torch.where((_cos2(a, rounded) > _cos2(a, y))[:, None], rounded, y)
    y = _exchange(a, y, refine)
    y[zero] = 0
    y[zero, 0] = K
    sign = torch.where(x.reshape(-1, N) < 0, -1, 1)
    return (y * sign).reshape(*lead, N)


# ---- the codec -----------------------------------------------------------------


@dataclass
class PVQCodes:
    """What :class:`PyramidVQ` stores for a batch of vectors, bit-packed along the last dim.

    ``index``: ``(..., ceil(S·L/8))`` uint8, the ranks of the ``S`` sub-vectors, ``L = ceil(log2 V)`` bits each;
    ``amplitude``: ``(..., ceil(S·amplitude_bits/8))`` uint8, the gain level of each sub-vector.
    """

    index: torch.Tensor
    amplitude: torch.Tensor

    @property
    def code_size(self) -> int:
        """Bytes stored per vector."""
        return self.index.shape[-1] + self.amplitude.shape[-1]

    @property
    def nbytes(self) -> int:
        """Bytes stored for the whole batch."""
        return self.index.numel() + self.amplitude.numel()


def _lloyd_max(g: torch.Tensor, n_levels: int, iters: int) -> torch.Tensor:
    """``n_levels`` ascending levels minimising ``E(g − Q(g))²`` with the first level pinned at 0.

    The zero level keeps all-zero groups (pruned weights, padding) exactly
    zero; it costs one level of ``2^amplitude_bits``.
    """
    g = g.double().flatten()
    if g.numel() == 0:
        raise ValueError("cannot fit amplitude levels on an empty input")
    free = n_levels - 1
    # start from the quantiles: Lloyd only finds a local optimum, and this one is near it
    ranks = ((torch.arange(free, dtype=torch.float64) + 0.5) / free * g.numel()).long().clamp_max(g.numel() - 1)
    levels = torch.cat([g.new_zeros(1), g.sort().values[ranks.to(g.device)]])
    for _ in range(iters):
        cell = torch.bucketize(g, (levels[1:] + levels[:-1]) / 2)
        sums = torch.zeros_like(levels).index_add_(0, cell, g)
        counts = torch.zeros_like(levels).index_add_(0, cell, torch.ones_like(g))
        new = torch.where(counts > 0, sums / counts.clamp_min(1), levels)
        new[0] = 0.0
        new = new.sort().values
        if torch.equal(new, levels):
            break
        levels = new
    return levels.float()


class PyramidVQ(Codec, nn.Module):
    """PVQ of ``dim``-vectors in sub-vectors of ``vector_size``, each a pyramid point and a gain.

    The codec contract (:class:`~vqlib.quantizers.Codec`): ``fit(x)`` fits the
    gain levels and returns the codec, ``encode(x)`` returns bit-packed
    :class:`PVQCodes`, ``decode(codes)`` the reconstruction, and
    ``forward(x) = decode(encode(x))``. Not a :class:`~vqlib.quantizers.Quantizer`:
    ranks outgrow int64 (``log2 V(128, 128) ≈ 320``) and there is no gradient
    estimator or usage count.

    Sizes, each sub-vector taking ``L = ceil(log2 V(D, K))`` index bits and
    ``amplitude_bits`` gain bits:

    * ``code_size``: bytes per encoded vector, every stored byte counted (the
      index bits and the gain bits of its ``dim / D`` sub-vectors, each stream
      rounded up to whole bytes); ``bits_per_weight = 8 · code_size / dim``
      (from :class:`~vqlib.quantizers.Codec`). The ``2^amplitude_bits`` gain
      levels are stored once per codec, like a codebook, and not counted.
    * ``stored_bits_per_weight = (L + amplitude_bits) / D``: the same without
      the last byte's padding (what a long packed stream costs per weight);
      equal to ``bits_per_weight`` when both streams fill whole bytes.
    * ``information_bits_per_weight = (log2 V(D, K) + amplitude_bits) / D``:
      the information content, what ranks coded jointly would cost.

    The state dict holds everything decoding needs: the gain levels, whether
    they are fitted, and the rotation's random signs (so a state loaded into an
    instance built with another ``seed`` decodes exactly as the original).

    Args:
        dim: vector length; a multiple of ``vector_size``.
        pulses: ``K``, pulses per sub-vector (the pyramid's L1 radius); more pulses, finer directions.
        vector_size: ``D``, the length of the sub-vector that gets one pyramid code (default ``dim``).
        amplitude_bits: bits of a sub-vector's gain (1–16); level 0 is pinned at 0.
        rotate: ``"hadamard"``: random signs then an orthonormal Walsh–Hadamard
            transform per sub-vector before coding (``vector_size`` must be a power
            of 2; no padding, since padded coordinates would cost index bits);
            ``None`` (default): code the sub-vectors as they are. The paper rotates to
            spread outliers; measured here (runs on Gaussian, Laplace, Student-t and
            outlier-channel data at ~3 bits/weight) the rotation never lowered the
            MSE and up to doubled it on heavy-tailed sub-vectors, which PVQ's pyramid
            already suits, so it is opt-in.
        seed: seed of the random signs drawn at construction (a loaded state brings its own).
        lloyd_iters: Lloyd–Max iterations of :meth:`fit`.
    ``group_size=`` is accepted as the deprecated name of ``vector_size``.
    """

    _renamed_arguments = {"group_size": "vector_size"}

    def __init__(
        self,
        dim: int,
        pulses: int,
        vector_size: int | None = None,
        amplitude_bits: int = 8,
        rotate: str | None = None,
        seed: int = 0,
        lloyd_iters: int = 50,
    ):
        super().__init__()
        vector_size = dim if vector_size is None else vector_size
        for name, v in (("pulses", pulses), ("vector_size", vector_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(dim, int) or dim < 1 or dim % vector_size:
            raise ValueError(f"dim must be a positive multiple of vector_size {vector_size}, got {dim!r}")
        if not isinstance(amplitude_bits, int) or isinstance(amplitude_bits, bool) or not 1 <= amplitude_bits <= 16:
            raise ValueError(f"amplitude_bits must be an integer in [1, 16], got {amplitude_bits!r}")
        if rotate not in ROTATIONS:
            raise ValueError(f"rotate must be one of {ROTATIONS}, got {rotate!r}")
        if rotate == "hadamard" and vector_size & (vector_size - 1):
            raise ValueError(
                f"rotate='hadamard' needs a power-of-2 vector_size, got {vector_size} (or pass rotate=None)"
            )
        if lloyd_iters < 1:
            raise ValueError(f"lloyd_iters must be >= 1, got {lloyd_iters}")
        self.dim, self.pulses, self.vector_size = dim, pulses, vector_size
        self.num_subvectors = dim // vector_size
        self.amplitude_bits, self.rotate, self.seed, self.lloyd_iters = amplitude_bits, rotate, seed, lloyd_iters
        self.words = pvq_words(vector_size, pulses)
        self.index_bits = (pvq_size(vector_size, pulses) - 1).bit_length()
        gen = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (dim,), generator=gen).float() * 2 - 1
        self.register_buffer("signs", signs)
        self.register_buffer("levels", torch.zeros(2**amplitude_bits))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs):
        key = prefix + "signs"
        if key not in state_dict and self.rotate != "hadamard":
            state_dict[key] = self.signs.clone()  # unused without a rotation
        if key not in state_dict:
            problem = (
                f"{key!r} is missing: the state holds no rotation signs (saved before PyramidVQ stored them), so "
                "codes made with it cannot be decoded reliably; add them from a PyramidVQ built with the seed it "
                f"was saved with: state[{key!r}] = PyramidVQ(..., seed=<that seed>).signs"
            )
        elif not bool((state_dict[key].abs() == 1).all()):
            problem = f"{key!r} must hold only +1 and -1 (the rotation's random signs): the state is damaged"
        else:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, error_msgs)
            return
        error_msgs.append(problem)  # refused before anything is copied: the levels stay as they were

    # ---- sizes ---------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    @property
    def code_dim(self) -> int:
        return self.dim

    @property
    def code_size(self) -> int:
        """Bytes per encoded vector: its packed ranks plus its packed gain codes."""
        return self._index_bytes + self._amplitude_bytes

    @property
    def _index_bytes(self) -> int:
        return packed_size(self.num_subvectors * self.index_bits, 1)

    @property
    def _amplitude_bytes(self) -> int:
        return packed_size(self.num_subvectors, self.amplitude_bits)

    @property
    def codebook_size(self) -> int:
        """``V(D, K)``, directions per sub-vector (an exact Python int)."""
        return pvq_size(self.vector_size, self.pulses)

    @property
    def information_bits_per_weight(self) -> float:
        """``(log2 V(D, K) + amplitude_bits) / D``, the exact information per weight."""
        return (math.log2(self.codebook_size) + self.amplitude_bits) / self.vector_size

    @property
    def stored_bits_per_weight(self) -> float:
        """``(ceil(log2 V(D, K)) + amplitude_bits) / D``: whole bits per sub-vector, without per-vector byte padding."""
        return (self.index_bits + self.amplitude_bits) / self.vector_size

    # ---- sub-vector steps (the surface pvq_quantize_weight uses) ---------------

    def to_coding_space(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim)`` → ``(..., dim)`` in the basis the pyramid codes: ``x M``, with ``M`` the random signs
        followed by an orthonormal Hadamard transform per sub-vector (identity for ``rotate=None``); keeps the dtype."""
        if self.rotate != "hadamard":
            return x
        z = (x * self.signs.to(x.dtype)).reshape(*x.shape[:-1], self.num_subvectors, self.vector_size)
        return hadamard_transform(z).reshape(x.shape)

    def from_coding_space(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_coding_space` (``z Mᵀ``)."""
        if self.rotate != "hadamard":
            return z
        x = hadamard_transform(z.reshape(*z.shape[:-1], self.num_subvectors, self.vector_size))
        return x.reshape(z.shape) * self.signs.to(z.dtype)

    def quantize_subvectors(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(..., vector_size)`` sub-vectors in coding space → their pyramid points (int64), gain codes, and
        dequantized values (float32): the point nearest in angle, then the fitted level nearest to the gain."""
        self.require_fitted()
        _check_float(z, "z")
        if z.dim() < 1 or z.shape[-1] != self.vector_size:
            raise ValueError(f"expected sub-vectors of vector_size {self.vector_size}, got shape {tuple(z.shape)}")
        z = z.float()
        y = pvq_nearest(z, self.pulses)
        unit = self._directions(y)
        # ⟨z, ŷ⟩ is the MSE-optimal gain for the chosen direction, and ≥ 0 since ŷ follows z's signs
        amp = torch.bucketize((z * unit).sum(-1), (self.levels[1:] + self.levels[:-1]) / 2)
        return y, amp, unit * self.levels[amp].unsqueeze(-1)

    def _subvectors(self, x: torch.Tensor):
        """``(..., dim)`` → lead shape and ``(M, S, D)`` float32 sub-vectors in coding space."""
        _check_float(x, "x")
        if x.dim() < 1 or x.shape[-1] != self.dim:
            got = x.shape[-1] if x.dim() else "a scalar"
            raise ValueError(f"expected last dim {self.dim}, got {got}")
        z = self.to_coding_space(x.reshape(-1, self.dim).float())
        return x.shape[:-1], z.reshape(-1, self.num_subvectors, self.vector_size)

    @staticmethod
    def _directions(y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        return y / y.norm(dim=-1, keepdim=True)

    def pack(self, index: torch.Tensor, amplitude: torch.Tensor) -> PVQCodes:
        """Pack ``(..., S, words)`` ranks and ``(..., S)`` gain codes into :class:`PVQCodes`."""
        lead, S = index.shape[:-2], self.num_subvectors
        shifts = torch.arange(WORD_BITS, device=index.device)
        bits = ((index.unsqueeze(-1) >> shifts) & 1).reshape(*lead, S, self.words * WORD_BITS)
        return PVQCodes(
            index=pack_bits(bits[..., : self.index_bits].reshape(*lead, S * self.index_bits), 1),
            amplitude=pack_bits(amplitude, self.amplitude_bits),
        )

    def unpack(self, codes: PVQCodes) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`pack`: ``(..., S, words)`` ranks and ``(..., S)`` gain codes."""
        if not isinstance(codes, PVQCodes):
            raise self.codes_mismatch(f"expected PVQCodes, got {type(codes).__name__}")
        for name, t, size in (
            ("index", codes.index, self._index_bytes),
            ("amplitude", codes.amplitude, self._amplitude_bytes),
        ):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() < 1:
                got = f"{t.dtype}, shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise self.codes_mismatch(f"{name} must be a uint8 tensor (..., bytes), got {got}")
            if t.shape[-1] != size:
                raise self.codes_mismatch(
                    f"{name} has {t.shape[-1]} bytes per vector, this one writes {size} "
                    f"(dim={self.dim}, pulses={self.pulses}, vector_size={self.vector_size}, "
                    f"amplitude_bits={self.amplitude_bits})"
                )
        if codes.index.shape[:-1] != codes.amplitude.shape[:-1]:
            shapes = f"{tuple(codes.index.shape)} vs {tuple(codes.amplitude.shape)}"
            raise ValueError(f"index and amplitude disagree on the batch shape: {shapes}")
        lead, S, L = codes.index.shape[:-1], self.num_subvectors, self.index_bits
        bits = unpack_bits(codes.index, 1, S * L).reshape(*lead, S, L)
        pad = bits.new_zeros(*lead, S, self.words * WORD_BITS - L)
        bits = torch.cat([bits, pad], -1).reshape(*lead, S, self.words, WORD_BITS)
        index = (bits << torch.arange(WORD_BITS, device=bits.device)).sum(-1)
        return index, unpack_bits(codes.amplitude, self.amplitude_bits, S)

    # ---- the codec -------------------------------------------------------------

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "PyramidVQ":
        """Fit the ``2^amplitude_bits`` gain levels (Lloyd–Max) to the gains of ``x`` (``(..., dim)``)."""
        _, z = self._subvectors(x)
        if z.shape[0] == 0:
            raise ValueError("cannot fit on an empty batch")
        unit = self._directions(pvq_nearest(z, self.pulses))
        levels = _lloyd_max((z * unit).sum(-1), 2**self.amplitude_bits, self.lloyd_iters)
        self.levels.copy_(levels.to(self.levels.device))
        self.fitted.fill_(True)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> PVQCodes:
        """``(..., dim)`` → :class:`PVQCodes` with the same leading shape."""
        self.require_fitted()
        lead, z = self._subvectors(x)
        y, amp, _ = self.quantize_subvectors(z)
        S = self.num_subvectors
        return self.pack(pvq_index(y, self.pulses).reshape(*lead, S, self.words), amp.reshape(*lead, S))

    @torch.no_grad()
    def decode(self, codes: PVQCodes) -> torch.Tensor:
        """``(..., dim)`` float32 reconstruction."""
        self.require_fitted()
        index, amp = self.unpack(codes)
        lead = index.shape[:-2]
        try:
            y = pvq_point(index, self.vector_size, self.pulses)
        except ValueError as err:
            raise self.codes_mismatch(f"{err}; were they made with other pulses or vector_size?") from None
        z = self._directions(y) * self.levels[amp].unsqueeze(-1)
        return self.from_coding_space(z.reshape(-1, self.dim)).reshape(*lead, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, pulses={self.pulses}, vector_size={self.vector_size}, "
            f"amplitude_bits={self.amplitude_bits}, rotate={self.rotate!r}, bits_per_weight={self.bits_per_weight:.3f}"
        )


# ---- Hessian-aware weights ---------------------------------------------------------


@dataclass
class PVQWeight:
    """Result of :func:`pvq_quantize_weight`: ``quantizer.decode(codes)`` equals ``weight`` (float32) exactly."""

    weight: torch.Tensor
    codes: PVQCodes
    quantizer: PyramidVQ


@torch.no_grad()
def pvq_quantize_weight(
    W: torch.Tensor,
    pulses: int,
    H: torch.Tensor,
    vector_size: int | None = None,
    amplitude_bits: int = 8,
    rotate: str | None = None,
    damp: float = 0.01,
    seed: int = 0,
    *,
    group_size: int | None = None,
) -> PVQWeight:
    """PVQ of a linear layer's weight ``W`` (out × in) that minimises the output error on calibration inputs.

    Each row is cut into sub-vectors of ``vector_size`` input columns (default: the
    whole row); the column blocks are quantized in order by :func:`gptq_quantize`
    (GPTQ's error feedback, arXiv 2210.17323), which pushes the error of each onto
    the columns not yet quantized, the least-squares optimum of ``‖X(W − Ŵ)ᵀ‖``
    given the blocks already fixed, with ``H = XᵀX`` dampened by
    ``λ = damp · mean diag(H)``. With ``rotate="hadamard"`` this happens in the
    rotated basis ``W M``, ``Mᵀ H M`` (``M`` orthogonal, block diagonal), which
    leaves ``XWᵀ`` unchanged. The gain levels are fitted on ``W`` before any
    update. ``group_size`` is the deprecated name of ``vector_size``.
    """
    vector_size = renamed_argument(vector_size, group_size, "group_size", "vector_size")
    _check_float(W, "W")
    _check_float(H, "H")
    if W.dim() != 2:
        raise ValueError(f"W must be (out, in), got shape {tuple(W.shape)}")
    cols = W.shape[1]
    if H.shape != (cols, cols):
        raise ValueError(f"H must be (in, in) = ({cols}, {cols}) for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    q = PyramidVQ(cols, pulses, vector_size, amplitude_bits, rotate=rotate, seed=seed).to(W.device)
    q.fit(W)
    # H ↦ Mᵀ H M: rotate the rows of H, then the rows of the transpose
    Hc = q.to_coding_space(q.to_coding_space(H.double()).T)
    points, amps = [], []

    def quantize_group(block: torch.Tensor) -> torch.Tensor:
        y, amp, deq = q.quantize_subvectors(block.float())
        points.append(y)
        amps.append(amp)
        return deq

    gptq_quantize(q.to_coding_space(W.double()), Hc, quantize_group, block_size=q.vector_size, damp=damp)
    index = pvq_index(torch.stack(points, 1), pulses)
    codes = q.pack(index.reshape(W.shape[0], q.num_subvectors, q.words), torch.stack(amps, 1))
    return PVQWeight(weight=q.decode(codes), codes=codes, quantizer=q)
