"""SAQ and CAQ: segmented, code-adjusted scalar quantization of vectors.

Paper: "SAQ: Pushing the Limits of Vector Quantization through Code Adjustment
and Dimension Segmentation", arXiv 2509.12086 (SIGMOD 2026).

CAQ, for one vector ``o`` (centred, randomly rotated), with ``B`` bits per dimension:

    v = max_i |o_i|,  Δ = 2v / 2^B,  c_i = clamp(⌊(o_i + v) / Δ⌋, 0, 2^B − 1),  ō = Δ(c + ½) − v

then ``rounds`` of coordinate descent move each ``ō_i`` by ±Δ when that raises
``cos(ō, o)`` (⟨ō, o⟩ and ‖ō‖² are updated incrementally). Inner products are
estimated as ``⟨o, q⟩ ≈ ⟨ō, q⟩ · ‖o‖² / ⟨ō, o⟩``, from the integer codes:
``⟨ō, q⟩ = Δ⟨c, q⟩ + (Δ/2 − v) Σq``. Codes are stored with ``v`` normalised to 1,
so each vector keeps ``B·D`` bits plus two floats: ``‖o‖²`` and ``‖o‖²/⟨ō₁, o⟩``.

SAQ rotates the data onto its principal axes (variances ``σ²`` sorted), then a
dynamic programme splits the dimensions into contiguous segments with bit
widths ``B_j`` (0 drops the segment) minimising ``Σ_j Σ_{i∈seg_j} σ_i² / 2^{B_j}``
under ``Σ_j B_j·|seg_j| + factors ≤ B·D + factors of one segment``. Each segment
gets its own random rotation and CAQ with ``B_j`` bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .codec import Codec
from .packing import pack_bits, packed_size, unpack_bits
from .rotations import random_orthogonal

FACTOR_BITS = 64  # two float32 factors per coded segment
DROP_BITS = 32  # one float32 (the dropped segment's squared norm)
MAX_BITS = 16


# ---------------------------------------------------------------------------
# CAQ on rotated vectors


def caq_codes(o: torch.Tensor, bits: int, rounds: int = 6, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CAQ of rows of ``o`` (already centred and rotated) with ``bits`` bits per dimension.

    Returns ``(codes, norm2, rescale)``: integer codes in ``[0, 2^bits)`` (int32),
    ``‖o‖²`` and ``‖o‖² / ⟨ō₁, o⟩`` where ``ō₁ = Δ₁(c + ½) − 1``, ``Δ₁ = 2 / 2^bits``
    (the reconstruction with ``v`` normalised to 1). Zero rows get zero factors.
    """
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"CAQ bits must be in [1, {MAX_BITS}], got {bits}")
    o = o.double()
    n, d = o.shape
    top = (1 << bits) - 1
    vmax = o.abs().amax(1, keepdim=True)
    delta = 2 * vmax / (1 << bits)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    codes = torch.floor((o + vmax) / safe).clamp_(0, top)
    codes = torch.where(delta > 0, codes, torch.zeros_like(codes))
    # at 1 bit ō₁ = ±½ per sign of o already maximises cos(ō, o): nothing would move
    if rounds > 0 and d > 0 and bits > 1:
        codes = _adjust(o, codes, vmax[:, 0], delta[:, 0], top, rounds, eps)
    delta1 = 2.0 / (1 << bits)
    ob1 = delta1 * (codes + 0.5) - 1  # v normalised to 1
    ip1 = (ob1 * o).sum(1)
    norm2 = o.square().sum(1)
    rescale = torch.where(ip1 > 0, norm2 / ip1.clamp_min(1e-300), torch.zeros_like(ip1))
    return codes.to(torch.int32), norm2.float(), rescale.float()


def _adjust(o, codes, vmax, delta, top, rounds, eps):
    """Coordinate descent on the codes: move ō_i by ±Δ while cos(ō, o) grows (vectorised over rows).

    Runs in NumPy: the loop is a few thousand small element-wise steps, where
    NumPy's per-call overhead is a fraction of torch's (2.5× faster here).
    """
    ot = np.ascontiguousarray(o.cpu().numpy().T)  # column access per dimension
    ct = np.ascontiguousarray(codes.cpu().numpy().T)
    vmax, delta = vmax.cpu().numpy(), delta.cpu().numpy()
    ob = delta[None, :] * (ct + 0.5) - vmax[None, :]
    ip, ln = (ob * ot).sum(0), (ob * ob).sum(0)
    for _ in range(rounds):
        moved = False
        for j in range(ot.shape[0]):
            oj, cj = ot[j], ct[j]
            obj = delta * (cj + 0.5) - vmax
            rest = ln - obj * obj
            step_ip = delta * oj
            up_ip, up_ln = ip + step_ip, rest + (obj + delta) ** 2
            dn_ip, dn_ln = ip - step_ip, rest + (obj - delta) ** 2
            # cos grows: new_ip / √new_ln > ip / √ln, inner products positive
            now = ip * ip + eps * ln
            up = (cj < top) & (up_ip > 0) & (up_ip * up_ip * ln > now * up_ln)
            dn = (cj > 0) & (dn_ip > 0) & (dn_ip * dn_ip * ln > now * dn_ln)
            both = up & dn
            if both.any():  # keep the larger cosine
                down_wins = both & (dn_ip * dn_ip * up_ln > up_ip * up_ip * dn_ln)
                up &= ~down_wins
                dn &= ~(both & ~down_wins)
            if up.any() or dn.any():
                ct[j] = cj + up - dn
                ip = np.where(up, up_ip, np.where(dn, dn_ip, ip))
                ln = np.where(up, up_ln, np.where(dn, dn_ln, ln))
                moved = True
        if not moved:
            break
    return torch.from_numpy(np.ascontiguousarray(ct.T)).to(codes.device)


def caq_reconstruct(codes: torch.Tensor, norm2: torch.Tensor, rescale: torch.Tensor, bits: int) -> torch.Tensor:
    """MSE-optimal reconstruction ``ō₁ · ⟨ō₁, o⟩ / ‖ō₁‖²`` from the codes and the two factors."""
    ob1 = (2.0 / (1 << bits)) * (codes.double() + 0.5) - 1
    ip1 = torch.where(rescale > 0, norm2.double() / rescale.double().clamp_min(1e-300), torch.zeros_like(norm2, dtype=torch.float64))
    return (ob1 * (ip1 / ob1.square().sum(1).clamp_min(1e-300))[:, None]).float()


def caq_inner_products(q: torch.Tensor, codes: torch.Tensor, rescale: torch.Tensor, bits: int, code_bits: int | None = None) -> torch.Tensor:
    """Estimated ``⟨o, q⟩`` for rotated queries ``q`` (nq, d) against CAQ codes (n, d): (nq, n).

    ``code_bits`` (≤ ``bits``) uses only the top bits of each code, a valid
    ``code_bits`` code with ``Δ·2^(bits − code_bits)`` (progressive estimation;
    the stored rescale factor of the full code is reused).
    """
    b = bits if code_bits is None else code_bits
    if not 1 <= b <= bits:
        raise ValueError(f"code_bits must be in [1, {bits}], got {code_bits}")
    c = codes if b == bits else codes >> (bits - b)
    delta1 = 2.0 / (1 << b)
    q = q.float()
    # ⟨ō₁, q⟩ = Δ₁⟨c, q⟩ + (Δ₁/2 − 1)Σq, from integer codes
    ip = delta1 * (q @ c.float().T) + (delta1 / 2 - 1) * q.sum(1, keepdim=True)
    return ip * rescale.float()[None, :]


# ---------------------------------------------------------------------------
# Segmentation plan


def plan_segments(variances, bits: float, granularity: int, max_bits: int = MAX_BITS, tolerance: float = 1e-3) -> list[tuple[int, int]]:
    """SAQ's dynamic programme: ``[(length, bits), ...]`` covering the dimensions in order.

    ``variances`` are sorted in decreasing order (PCA). Segments are multiples of
    ``granularity`` (the last one may be shorter when it does not divide the
    dimension). Budget: ``bits·D`` code bits plus one segment's factors; each
    coded segment costs ``B_j·len + 64`` bits, a dropped tail 32 bits (its norm).
    The error model is ``Σ σ_i² / 2^{B_j}``. Among plans within ``tolerance`` of
    the least error the one with fewest segments is taken.
    """
    var = np.asarray(variances, dtype=np.float64)
    d = len(var)
    bounds = list(range(0, d, granularity)) + [d]
    units = len(bounds) - 1
    unit = math.gcd(granularity, FACTOR_BITS, DROP_BITS, *(bounds[i + 1] - bounds[i] for i in range(units)))
    budget = int(math.floor((bits * d + FACTOR_BITS) / unit + 1e-9))
    cum = np.concatenate([[0.0], np.cumsum(var)])
    inf = np.inf
    # f[s, i, u]: least error covering the first i units with s segments using u·unit bits
    f = np.full((units + 1, units + 1, budget + 1), inf)
    choice = np.zeros((units + 1, units + 1, budget + 1, 2), dtype=np.int64)  # (previous unit, bits)
    f[0, 0, 0] = 0.0
    for s in range(units):
        for i in range(units):
            row = f[s, i]
            if not np.isfinite(row).any():
                continue
            for k in range(i + 1, units + 1):
                length = bounds[k] - bounds[i]
                seg_var = cum[bounds[k]] - cum[bounds[i]]
                for b in range(1, max_bits + 1):
                    cost = (b * length + FACTOR_BITS) // unit
                    if cost > budget:
                        break
                    _relax(f[s + 1, k], choice[s + 1, k], row, cost, seg_var / 2.0**b, i, b)
                if k == units:  # drop the whole tail
                    _relax(f[s + 1, k], choice[s + 1, k], row, DROP_BITS // unit, seg_var, i, 0)
    final = f[:, units, :]
    best = final.min()
    if not np.isfinite(best):
        raise ValueError(f"bits={bits} leaves no feasible plan for dim {d} (granularity {granularity})")
    s = next(s for s in range(units + 1) if final[s].min() <= best * (1 + tolerance) + 1e-300)
    u = int(final[s].argmin())
    plan, i = [], units
    while i > 0:
        prev, b = (int(v) for v in choice[s, i, u])
        length = bounds[i] - bounds[prev]
        plan.append((length, b))
        u -= (b * length + FACTOR_BITS) // unit if b else DROP_BITS // unit
        i, s = prev, s - 1
    return plan[::-1]


def _relax(dst, dst_choice, src, cost, err, i, b):
    n = len(src) - cost
    if n <= 0:
        return
    cand = src[:n] + err
    better = cand < dst[cost:]
    if better.any():
        dst[cost:][better] = cand[better]
        dst_choice[cost:][better] = (i, b)


def plan_num_factors(plan: list[tuple[int, int]]) -> int:
    """float32 factors per vector: two per coded segment, one for a dropped tail."""
    coded = sum(1 for _, b in plan if b > 0)
    return 2 * coded + (1 if coded < len(plan) else 0)


def plan_code_size(plan: list[tuple[int, int]]) -> int:
    """Bytes per vector that a plan stores: packed codes of each coded segment plus float32 factors."""
    return sum(packed_size(length, b) for length, b in plan if b > 0) + 4 * plan_num_factors(plan)


def default_granularity(dim: int) -> int:
    """64 dimensions per segment unit as in the paper; finer for small dimensions (at least 8)."""
    return min(dim, max(8, min(64, 8 * round(dim / 64))))


# ---------------------------------------------------------------------------
# Codes and the codec


@dataclass
class SAQCodes:
    """Encoded vectors: packed codes per coded segment and float32 factors per vector.

    ``factors`` columns: ``(‖o_j‖², ‖o_j‖²/⟨ō₁_j, o_j⟩)`` per coded segment, then
    ``‖o_tail‖²`` when the plan drops a tail. ``nbytes`` counts everything stored.
    """

    packed: list[torch.Tensor]
    factors: torch.Tensor
    n: int

    def __len__(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        return sum(p.numel() for p in self.packed) + self.factors.numel() * 4

    def __getitem__(self, idx) -> SAQCodes:
        rows = torch.arange(self.n)[idx]
        rows = rows.reshape(-1)
        return SAQCodes([p[rows] for p in self.packed], self.factors[rows], len(rows))

    @staticmethod
    def cat(parts: list[SAQCodes]) -> SAQCodes:
        if not parts:
            raise ValueError("SAQCodes.cat needs at least one part")
        packed = [torch.cat([p.packed[j] for p in parts]) for j in range(len(parts[0].packed))]
        return SAQCodes(packed, torch.cat([p.factors for p in parts]), sum(p.n for p in parts))


def check_plan(plan, dim: int) -> list[tuple[int, int]]:
    """``plan`` as a list of ``(length, bits)`` tuples covering ``dim`` dimensions, or a ValueError saying what is wrong.

    Lengths are positive and sum to ``dim``; bits are integers in ``[0, MAX_BITS]``
    where 0 (a dropped segment, only its norm is kept) may only be the last segment.
    """
    if isinstance(plan, (str, bytes)) or not hasattr(plan, "__iter__"):
        raise ValueError(f"plan must be a list of (length, bits) pairs, got {plan!r}")
    out = []
    for i, item in enumerate(plan):
        if not hasattr(item, "__len__") or len(item) != 2:
            raise ValueError(f"plan[{i}] must be a (length, bits) pair, got {item!r}")
        length, b = item
        for name, v in (("length", length), ("bits", b)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"plan[{i}] {name} must be an integer, got {v!r}")
        if length < 1:
            raise ValueError(f"plan[{i}] length must be positive, got {length}")
        if not 0 <= b <= MAX_BITS:
            raise ValueError(f"plan[{i}] bits must be in [0, {MAX_BITS}], got {b}")
        out.append((int(length), int(b)))
    if not out:
        raise ValueError("plan is empty: give at least one (length, bits) pair")
    if any(b == 0 for _, b in out[:-1]):
        raise ValueError(f"only the last segment of a plan may have 0 bits (be dropped), got {out}")
    total = sum(length for length, _ in out)
    if total != dim:
        raise ValueError(f"plan lengths sum to {total}, expected dim={dim}")
    return out


def principal_axes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes of centred rows ``x`` (n, d): ``(basis, variances)``, columns by decreasing variance."""
    d = x.shape[1]
    cov = torch.cov(x.T.double()).reshape(d, d)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)
    return evecs[:, order].float(), evals[order].clamp_min(0).float()


@dataclass(frozen=True, eq=False)
class Segment:
    """One segment of a fitted SAQ plan: PCA dimensions ``start:stop`` coded with ``bits`` bits.

    ``bits == 0`` marks a dropped tail (only its squared norm is stored).
    ``factors`` are the columns of :attr:`SAQCodes.factors` the segment owns:
    ``(‖o_j‖², ‖o_j‖²/⟨ō₁_j, o_j⟩)`` for a coded segment, ``(‖o_tail‖²,)`` for a
    dropped one. ``code`` indexes :attr:`SAQCodes.packed` (``None`` when dropped).
    ``variance`` is ``Σ σ_i²`` over the segment's dimensions (training data);
    ``rotation`` the segment's orthonormal ``length × length`` matrix (``None`` when dropped).
    """

    start: int
    stop: int
    bits: int
    factors: tuple[int, ...]
    variance: float
    code: int | None = None
    rotation: torch.Tensor | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def coded(self) -> bool:
        return self.bits > 0


class SAQ(Codec, nn.Module):
    """SAQ codec (arXiv 2509.12086): PCA, dimension segmentation by dynamic programming, CAQ per segment.

    Args:
        dim: vector dimension.
        bits: average bits per dimension, may be fractional (0.5 is 64× smaller than float32
            before factors); the plan's code bits plus factors never exceed ``bits·dim`` + 64.
        granularity: segment length unit (default: 64 for large ``dim``, finer for small).
        rounds: code-adjustment rounds (the paper's default 6; 0 gives plain scalar quantisation).
        seed: for the random rotations.
        plan: a fixed segmentation ``[(length, bits), ...]`` (see :func:`check_plan`); ``fit``
            then uses it instead of the dynamic programme, and ``bits`` is only the nominal rate.

    Usage::

        saq = SAQ(128, bits=4).fit(train)
        codes = saq.encode(base)             # SAQCodes; saq.code_size bytes per vector
        d2 = saq.estimate_sq_distances(queries, codes)   # (nq, n)
        approx = saq.decode(codes)
    """

    def __init__(
        self,
        dim: int,
        bits: float,
        granularity: int | None = None,
        rounds: int = 6,
        seed: int = 0,
        plan: list[tuple[int, int]] | None = None,
    ):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not 0 < float(bits) <= MAX_BITS:
            raise ValueError(f"bits must be in (0, {MAX_BITS}], got {bits}")
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        granularity = default_granularity(dim) if granularity is None else granularity
        if not 1 <= granularity <= dim:
            raise ValueError(f"granularity must be in [1, dim={dim}], got {granularity}")
        self.dim, self.bits, self.granularity, self.rounds, self.seed = dim, float(bits), granularity, rounds, seed
        self.fixed_plan = None if plan is None else check_plan(plan, dim)
        self.plan: list[tuple[int, int]] = []  # the fitted plan
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.eye(dim))  # columns: principal axes, decreasing variance
        self.register_buffer("variances", torch.zeros(dim))
        self.rotations = nn.ParameterList()  # one orthonormal matrix per coded segment (frozen)

    # ---- training -----------------------------------------------------------

    def fit(self, x) -> SAQ:
        """Learn the mean, principal axes, segment plan and rotations from training vectors ``(n, dim)``."""
        x = self._check(x, "training vectors")
        if len(x) < 2:
            raise ValueError(f"need at least 2 training vectors to estimate variances, got {len(x)}")
        mean = x.mean(0)
        basis, variances = principal_axes(x - mean)
        plan = self.fixed_plan or plan_segments(variances.tolist(), self.bits, self.granularity)
        g = torch.Generator().manual_seed(self.seed)
        rotations = [nn.Parameter(random_orthogonal(length, g), requires_grad=False) for length, b in plan if b > 0]
        self.mean, self.basis, self.variances, self.plan = mean, basis, variances, plan
        self.rotations = nn.ParameterList(rotations)
        return self

    @property
    def is_fitted(self) -> bool:
        return bool(self.plan)

    @property
    def is_trained(self) -> bool:
        """Alias of :attr:`is_fitted`."""
        return self.is_fitted

    # ---- accounting ----------------------------------------------------------

    @property
    def code_size(self) -> int:
        """Bytes per encoded vector, all-inclusive (packed codes of every segment and float32 factors)."""
        self.require_fitted()
        return plan_code_size(self.plan)

    @property
    def code_dim(self) -> int:
        return self.dim

    # ---- the plan's segments ----------------------------------------------------

    def segments(self) -> list[Segment]:
        """The fitted plan as :class:`Segment` records, in order of decreasing variance."""
        self.require_fitted()
        out, start, code, col = [], 0, 0, 0
        coded = sum(1 for _, b in self.plan if b > 0)
        for length, b in self.plan:
            variance = float(self.variances[start : start + length].sum())
            if b > 0:
                seg = Segment(start, start + length, b, (col, col + 1), variance, code, self.rotations[code])
                code, col = code + 1, col + 2
            else:  # the dropped tail's norm follows every coded segment's two factors
                seg = Segment(start, start + length, 0, (2 * coded,), variance)
            out.append(seg)
            start += length
        return out

    def check_codes(self, codes: SAQCodes) -> None:
        """Raise :class:`~vqlib.quantizers.CodesMismatchError` unless ``codes`` fit this codec's plan."""
        self.require_fitted()
        if not isinstance(codes, SAQCodes):
            raise self.codes_mismatch(f"expected SAQCodes, got {type(codes).__name__}")
        coded = [(length, b) for length, b in self.plan if b > 0]
        if len(codes.packed) != len(coded):
            raise self.codes_mismatch(f"{len(codes.packed)} coded segments, this plan has {len(coded)}")
        if codes.factors.shape != (codes.n, plan_num_factors(self.plan)):
            raise self.codes_mismatch(
                f"factors of shape {tuple(codes.factors.shape)}, expected ({codes.n}, {plan_num_factors(self.plan)})"
            )
        for j, (p, (length, b)) in enumerate(zip(codes.packed, coded)):
            if p.shape != (codes.n, packed_size(length, b)):
                raise self.codes_mismatch(
                    f"segment {j} holds {tuple(p.shape)} packed bytes, expected ({codes.n}, {packed_size(length, b)}) "
                    f"for {length} dimensions at {b} bits"
                )

    def unpack(self, codes: SAQCodes) -> list[tuple[Segment, torch.Tensor]]:
        """``(segment, integer codes (n, length) int64)`` for each coded segment of ``codes``."""
        self.check_codes(codes)
        return [(s, unpack_bits(codes.packed[s.code], s.bits, s.length)) for s in self.segments() if s.coded]

    # ---- encode / decode ---------------------------------------------------

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Centre and project onto the principal axes (distances are preserved)."""
        return (x - self.mean) @ self.basis

    @torch.no_grad()
    def encode(self, x, batch_size: int = 65536) -> SAQCodes:
        """Encode vectors ``(n, dim)`` into :class:`SAQCodes`."""
        self.require_fitted()
        x = self._check(x, "vectors")
        segments = self.segments()
        parts = [self._encode_block(x[i : i + batch_size], segments) for i in range(0, len(x), batch_size)]
        return SAQCodes.cat(parts) if parts else self._encode_block(x, segments)

    def _encode_block(self, x: torch.Tensor, segments: list[Segment]) -> SAQCodes:
        o = self.transform(x)
        packed, factors, tail = [], [], None
        for s in segments:
            seg = o[:, s.start : s.stop]
            if not s.coded:
                tail = seg.double().square().sum(1).float()
                continue
            codes, norm2, rescale = caq_codes(seg @ s.rotation, s.bits, self.rounds)
            packed.append(pack_bits(codes, s.bits))
            factors += [norm2, rescale]
        if tail is not None:
            factors.append(tail)
        return SAQCodes(packed, torch.stack(factors, 1) if factors else torch.zeros(len(x), 0), len(x))

    @torch.no_grad()
    def decode(self, codes: SAQCodes) -> torch.Tensor:
        """Reconstruct ``(n, dim)`` vectors (dropped segments come back as the mean)."""
        parts = self.unpack(codes)
        o = torch.zeros(codes.n, self.dim)
        for s, c in parts:
            norm2, rescale = codes.factors[:, s.factors[0]], codes.factors[:, s.factors[1]]
            o[:, s.start : s.stop] = caq_reconstruct(c, norm2, rescale, s.bits) @ s.rotation.T
        return o @ self.basis.T + self.mean

    # ---- estimation ----------------------------------------------------------

    @torch.no_grad()
    def estimate_inner_products(self, q, codes: SAQCodes, code_bits: int | None = None) -> torch.Tensor:
        """Estimated ``⟨x − mean, q − mean⟩`` in the centred space, ``(nq, n)``.

        ``code_bits`` caps the bits read per segment (progressive estimation from the top bits).
        """
        qo = self.transform(self._check(q, "queries"))
        return self._estimate_ip(qo, codes, code_bits)

    def _estimate_ip(self, qo: torch.Tensor, codes: SAQCodes, code_bits: int | None = None) -> torch.Tensor:
        parts = self.unpack(codes)
        ip = torch.zeros(len(qo), codes.n)
        for s, c in parts:
            cb = None if code_bits is None else min(s.bits, code_bits)
            ip += caq_inner_products(qo[:, s.start : s.stop] @ s.rotation, c, codes.factors[:, s.factors[1]], s.bits, cb)
        return ip

    def norms2(self, codes: SAQCodes) -> torch.Tensor:
        """Stored ``‖x − mean‖²`` per vector (all segments, dropped ones included)."""
        self.check_codes(codes)
        f = codes.factors
        coded = f[:, 0 : 2 * sum(1 for _, b in self.plan if b > 0) : 2].sum(1)
        return coded + (f[:, -1] if any(b == 0 for _, b in self.plan) else 0)

    @torch.no_grad()
    def estimate_sq_distances(self, q, codes: SAQCodes, code_bits: int | None = None) -> torch.Tensor:
        """Estimated squared L2 distances ``‖q − x‖²``, ``(nq, n)``."""
        qo = self.transform(self._check(q, "queries"))
        ip = self._estimate_ip(qo, codes, code_bits)
        return (qo.square().sum(1, keepdim=True) + self.norms2(codes)[None, :] - 2 * ip).clamp_min_(0)

    # ---- checks ----------------------------------------------------------------

    def _check(self, x, what: str) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what}: expected shape (n, {self.dim}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{what}: expected floating point values, got {x.dtype}")
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError(f"{what}: contain NaN or Inf")
        return x

    # ---- state ---------------------------------------------------------------

    def get_extra_state(self):
        return {"plan": [list(p) for p in self.plan]}

    def set_extra_state(self, state) -> None:
        self.plan = [tuple(p) for p in state["plan"]]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # recreate the rotation slots before loading (their number and sizes come from the plan)
        key = prefix + "_extra_state"
        if key in state_dict:
            plan = [tuple(p) for p in state_dict[key]["plan"]]
            self.rotations = nn.ParameterList(
                [nn.Parameter(torch.empty(length, length), requires_grad=False) for length, b in plan if b > 0]
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        plan = ", ".join(f"{length}x{b}b" for length, b in self.plan) or "unfitted"
        return f"dim={self.dim}, bits={self.bits:g}, plan=[{plan}]"


class CAQ(SAQ):
    """CAQ alone (arXiv 2509.12086): SAQ with the one-segment plan ``[(dim, bits)]`` (integer ``bits``)."""

    def __init__(self, dim: int, bits: int, rounds: int = 6, seed: int = 0):
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_BITS:
            raise ValueError(f"CAQ bits must be an integer in [1, {MAX_BITS}], got {bits!r}")
        super().__init__(dim, bits, granularity=dim, rounds=rounds, seed=seed, plan=[(dim, bits)])
