"""Codebook-compressed linear layers: the storage format, a torch reference, and ``VQLinear``.

Weight vector quantization in the AQLM / VPTQ / QuIP# family (Egiazarian et al.
2024, arXiv 2401.06118; Liu et al. 2024, arXiv 2409.17066; Tseng et al. 2024,
arXiv 2402.04396). A weight ``W ∈ R^{N×D}`` (out × in) is cut into sub-vectors
of length ``v`` along the input dimension, ``J = D / v`` per row, and

    W[n, j·v + t] = s_n · σ[n, j·v + t] · C[g(n), a[n, j], t]

with codes ``a[n, j] ∈ [0, K)``, a codebook ``C ∈ R^{G×K×v}`` shared by the
``N / G`` consecutive rows of group ``g(n) = n // (N / G)``, a per-output-channel
scale ``s`` and, in sign-split formats, one stored sign ``σ = ±1`` per weight
(the codebook then holds magnitudes). The layer computes ``y = x Wᵀ + b``.

What is stored, and so what the bits per weight count (the bias is not
counted, as for a dense layer): codes as ``uint8`` for ``K ≤ 256`` or ``int16``
for ``K ≤ 65536`` (read as unsigned 16-bit), the codebook in fp16 / bf16 /
fp32, the scales, and the signs packed 8 per byte along the input dimension
with :func:`vqlib.quantizers.packing.pack_bits` (bit ``k mod 8`` of byte
``k // 8`` of row n is set where the weight is negative).

On CUDA with Triton, ``VQLinear.forward`` runs the kernels of
:mod:`vqlib.kernels.vq_triton`; elsewhere it runs the torch reference below.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqlib.quantizers.kmeans import kmeans
from vqlib.quantizers.nearest import nearest
from vqlib.quantizers.packing import pack_bits, packed_size

from . import vq_triton
from .vq_triton import LUT_MAX_ROWS

__all__ = [
    "KERNELS",
    "VQLinear",
    "choose_kernel",
    "code_dtype",
    "quantize_linear",
    "vq_dequantize_reference",
    "vq_linear_reference",
    "vq_lut_linear_reference",
]

KERNELS = ("auto", "reference", "reference-lut", "triton-gemm", "triton-lut", "triton-dequant")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_CODEBOOK_SIZE = 1 << 16


def code_dtype(codebook_size: int) -> torch.dtype:
    """The smallest stored code type: ``uint8`` up to 256 codewords, ``int16`` (read as unsigned) up to 65536."""
    if not 1 <= codebook_size <= MAX_CODEBOOK_SIZE:
        raise ValueError(f"codebook size must be in [1, {MAX_CODEBOOK_SIZE}], got {codebook_size}")
    return torch.uint8 if codebook_size <= 256 else torch.int16


def _to_stored_codes(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Integer codes in ``[0, K)`` → the stored dtype; out-of-range codes are an error, never wrapped."""
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    c = _unsigned(codes) if codes.dtype == torch.int16 else codes.long()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= codebook_size):
        raise ValueError(
            f"codes must lie in [0, {codebook_size}) (the codebook size), got range [{int(c.min())}, {int(c.max())}]"
        )
    dtype = code_dtype(codebook_size)
    if dtype == torch.int16:
        c = torch.where(c >= 1 << 15, c - (1 << 16), c)  # two's complement of the unsigned 16-bit code
    return c.to(dtype).contiguous()


def _unsigned(codes: torch.Tensor) -> torch.Tensor:
    """Stored codes (uint8, or int16 holding unsigned 16-bit values) → int64 in ``[0, 65536)``."""
    return codes.long() & 0xFFFF


def _check_format(
    codebook: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor | None,
    signs: torch.Tensor | None,
    bias: torch.Tensor | None,
    in_features: int,
) -> None:
    """Shapes and dtypes of a stored layer; a clear error rather than a wrong number later."""
    if codebook.dim() != 3:
        raise ValueError(f"codebook must be (groups, codebook_size, vector_size), got shape {tuple(codebook.shape)}")
    if codebook.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"codebook must be fp16, bf16 or fp32, got {codebook.dtype}")
    groups, k, v = codebook.shape
    if codes.dim() != 2:
        raise ValueError(f"codes must be (out_features, in_features / vector_size), got shape {tuple(codes.shape)}")
    n, j = codes.shape
    if codes.dtype != code_dtype(k):
        raise ValueError(f"a codebook of {k} codewords stores {code_dtype(k)} codes, got {codes.dtype}")
    if j * v != in_features:
        raise ValueError(f"codes hold {j} sub-vectors of {v} per row = {j * v} inputs, expected {in_features}")
    if groups < 1 or n % groups:
        raise ValueError(f"{groups} codebooks must split the {n} output rows evenly")
    devices = {t.device for t in (codebook, codes, scales, signs, bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors of a layer must be on one device, got {sorted(map(str, devices))}")
    for name, t in (("scales", scales), ("bias", bias)):
        if t is not None and (t.shape != (n,) or t.dtype not in _FLOAT_DTYPES):
            raise ValueError(f"{name} must be a float (out_features,) = ({n},) tensor, got {t.dtype} {tuple(t.shape)}")
    if signs is not None and (signs.dtype != torch.uint8 or signs.shape != (n, packed_size(in_features, 1))):
        need = (n, packed_size(in_features, 1))
        raise ValueError(f"packed signs must be uint8 of shape {need}, got {signs.dtype} {tuple(signs.shape)}")


def _check_codes_in_range(codes: torch.Tensor, codebook_size: int) -> None:
    if codes.numel() == 0:
        return
    hi = int(_unsigned(codes).max())  # stored codes are unsigned: only the top can be out of range
    if hi >= codebook_size:
        raise ValueError(f"codes must lie in [0, {codebook_size}) (the codebook size), got a code {hi}")


# ---- torch reference -------------------------------------------------------------------


def vq_dequantize_reference(
    codebook: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor | None = None,
    signs: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The dense ``(N, J·v)`` weight of a stored layer, computed in fp32, returned in ``dtype`` (the codebook's)."""
    groups, k, v = codebook.shape
    n, j = codes.shape
    idx = _unsigned(codes)
    if groups > 1:  # one flat table: group g's codewords start at row g·K
        idx = idx + (torch.arange(n, device=codes.device) // (n // groups) * k)[:, None]
    w = F.embedding(idx, codebook.reshape(groups * k, v).float()).reshape(n, j * v)
    if signs is not None:
        w = torch.where(_unpack_signs(signs, j * v), -w, w)
    if scales is not None:
        w = w * scales.float()[:, None]
    return w.to(dtype or codebook.dtype)


def _unpack_signs(signs: torch.Tensor, d: int) -> torch.Tensor:
    """Packed sign bytes ``(N, ⌈d/8⌉)`` → bool ``(N, d)``, True where negative (pack_bits' 1-bit layout)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=signs.device)
    return ((signs[..., None] >> shifts) & 1).reshape(signs.shape[0], -1)[:, :d].bool()


def vq_linear_reference(x, codebook, codes, scales=None, signs=None, bias=None) -> torch.Tensor:
    """``x Wᵀ + b`` by dequantising W (fp32 maths when x is fp32, else in x's dtype as ``F.linear`` does)."""
    w = vq_dequantize_reference(codebook, codes, scales, signs, dtype=x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def vq_lut_linear_reference(x, codebook, codes, scales=None, bias=None) -> torch.Tensor:
    """``x Wᵀ + b`` through look-up tables, never forming W (no signs: a sign per weight breaks the table).

    For each row m and input group j the table holds ``T[m, j, c] = ⟨x[m, j·v:(j+1)·v], C[c]⟩`` for every
    codeword; output n sums ``T[m, j, a[n, j]]`` over j. In fp32.
    """
    groups, k, v = codebook.shape
    n, j = codes.shape
    lead = x.shape[:-1]
    xm = x.reshape(-1, j, v).float()
    rows_per_group = n // groups
    a = _unsigned(codes)
    out = []
    for g in range(groups):
        table = torch.einsum("mjv,kv->mjk", xm, codebook[g].float())  # (M, J, K)
        ag = a[g * rows_per_group : (g + 1) * rows_per_group]  # (R, J)
        picked = table.gather(2, ag.T.unsqueeze(0).expand(xm.shape[0], j, -1))  # (M, J, R)
        out.append(picked.sum(1))
    y = torch.cat(out, 1)
    if scales is not None:
        y = y * scales.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*lead, n)


# ---- dispatch --------------------------------------------------------------------------

# Provisional thresholds, NOT yet measured on a GPU (no GPU was available when this was
# written): benchmarks/bench_kernels.py times every kernel per (M, shape) and prints the
# fastest, and these constants are to be set from its table.
LUT_MAX_CODEBOOK = 256  # tables of K fp32 entries per input group; 65536 would not stay in L2
GEMM_MAX_ROWS = 2048  # above this, dequantise once and let cuBLAS run the GEMM
# Off the GPU the torch look-up-table path beats dequantise + F.linear only for a single row
# (benchmarks/bench_kernels.py, 2-core EPYC, 1 thread: 1152→1152 at v = 4, 0.36 ms against 1.4 ms;
# at M = 8 it was 2× slower).
CPU_LUT_MAX_ROWS = 1


def choose_kernel(m: int, layer: "VQLinear", x_dtype: torch.dtype) -> str:
    """Which kernel runs ``m`` rows through ``layer`` on a GPU with Triton (see the constants above)."""
    if x_dtype not in (torch.float16, torch.bfloat16):
        return "triton-dequant"  # fp32 activations: cuBLAS on the dequantised weight keeps fp32 semantics
    if m <= LUT_MAX_ROWS and layer.signs is None and layer.codebook_size <= LUT_MAX_CODEBOOK:
        return "triton-lut"
    if m <= GEMM_MAX_ROWS:
        return "triton-gemm"
    return "triton-dequant"


# ---- the module ------------------------------------------------------------------------


class VQLinear(nn.Module):
    """A linear layer stored as codes into a codebook (format in the module docstring).

    Args:
        in_features, out_features: the dense layer's shape; ``vector_size`` must divide ``in_features``.
        vector_size: ``v``, inputs per code.
        codebook_size: ``K`` codewords (codes stored as uint8 up to 256, int16 up to 65536).
        num_codebooks: ``G`` codebooks, each shared by ``out_features / G`` consecutive output rows.
        bias: keep a bias.
        scales: keep a per-output-channel scale.
        signs: keep one sign bit per weight (sign-split: the codebook holds magnitudes).
        codebook_dtype: fp16, bf16 or fp32.
        kernel: ``"auto"`` (the Triton kernels on CUDA, chosen by :func:`choose_kernel`; the torch
            reference elsewhere), or one of :data:`KERNELS` to force a path. A Triton kernel on CPU
            tensors needs ``TRITON_INTERPRET=1`` (the tests run them that way).

    The state dict holds only the compressed tensors: ``codebook``, ``codes``, ``scales``, ``signs``
    (packed), ``bias``. :meth:`from_state_dict` rebuilds a layer from them alone (shapes say the
    configuration), so a safetensors file round-trips.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        vector_size: int = 4,
        codebook_size: int = 256,
        num_codebooks: int = 1,
        bias: bool = True,
        scales: bool = True,
        signs: bool = False,
        codebook_dtype: torch.dtype = torch.float16,
        kernel: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if vector_size < 1 or in_features < 1 or out_features < 1 or in_features % vector_size:
            raise ValueError(f"vector_size {vector_size} must divide in_features {in_features} (both positive)")
        if num_codebooks < 1 or out_features % num_codebooks:
            raise ValueError(f"num_codebooks {num_codebooks} must divide out_features {out_features}")
        if codebook_dtype not in _FLOAT_DTYPES:
            raise ValueError(f"codebook_dtype must be fp16, bf16 or fp32, got {codebook_dtype}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.in_features, self.out_features = in_features, out_features
        self.kernel = kernel
        cdt = code_dtype(codebook_size)
        shape = (num_codebooks, codebook_size, vector_size)
        self.register_buffer("codebook", torch.zeros(shape, dtype=codebook_dtype, device=device))
        self.register_buffer("codes", torch.zeros(out_features, in_features // vector_size, dtype=cdt, device=device))
        self.register_buffer("scales", torch.ones(out_features, device=device) if scales else None)
        nbytes = packed_size(in_features, 1)
        packed = torch.zeros(out_features, nbytes, dtype=torch.uint8, device=device) if signs else None
        self.register_buffer("signs", packed)
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self._checked_version: tuple | None = None

    # -- configuration read off the stored tensors
    @property
    def vector_size(self) -> int:
        return self.codebook.shape[2]

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[1]

    @property
    def num_codebooks(self) -> int:
        return self.codebook.shape[0]

    @property
    def bits_per_weight(self) -> float:
        """Stored bits (codes, codebook, scales, signs; not the bias) per weight."""
        stored = [self.codes, self.codebook, self.scales, self.signs]
        bits = sum(8 * t.numel() * t.element_size() for t in stored if t is not None)
        return bits / (self.out_features * self.in_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, vector_size={self.vector_size}, "
            f"codebook_size={self.codebook_size}, num_codebooks={self.num_codebooks}, "
            f"signs={self.signs is not None}, bits_per_weight={self.bits_per_weight:.3f}"
        )

    # -- construction
    @classmethod
    @torch.no_grad()
    def from_linear(
        cls,
        linear: nn.Linear,
        codebook: torch.Tensor,
        codes: torch.Tensor,
        scales: torch.Tensor | None = None,
        signs: torch.Tensor | None = None,
        kernel: str = "auto",
    ) -> "VQLinear":
        """A layer with ``linear``'s shape and bias and the given compressed weight.

        Args:
            codebook: ``(K, v)`` or ``(G, K, v)`` float.
            codes: ``(out, in / v)`` integers in ``[0, K)`` (any integer dtype; stored as uint8 / int16).
            scales: ``(out,)`` per-output-channel scales, or None.
            signs: ``(out, in)`` bool, True where the weight is negative (packed here), or None.
        """
        if codebook.dim() == 2:
            codebook = codebook.unsqueeze(0)
        if codebook.dim() != 3:
            raise ValueError(f"codebook must be (K, v) or (G, K, v), got shape {tuple(codebook.shape)}")
        g, k, v = codebook.shape
        n, d = linear.out_features, linear.in_features
        if codes.shape != (n, d // v) or d % v:
            need, got = (n, d // v), tuple(codes.shape)
            raise ValueError(f"codes for a {n}×{d} layer with vector size {v} must have shape {need}, got {got}")
        if signs is not None and (signs.dtype != torch.bool or signs.shape != (n, d)):
            got = f"{signs.dtype} {tuple(signs.shape)}"
            raise ValueError(f"signs must be a bool (out, in) = {(n, d)} tensor, got {got}")
        device = linear.weight.device
        layer = cls(
            d, n, v, k, g, bias=linear.bias is not None, scales=scales is not None, signs=signs is not None,
            codebook_dtype=codebook.dtype, kernel=kernel, device=device,
        )  # fmt: skip
        layer.codebook.copy_(codebook)
        layer.codes.copy_(_to_stored_codes(codes, k))
        if scales is not None:
            if scales.shape != (n,):
                raise ValueError(f"scales must have shape ({n},), got {tuple(scales.shape)}")
            layer.scales = scales.detach().to(device).clone()
        if signs is not None:
            layer.signs.copy_(pack_bits(signs.to(torch.uint8), 1))
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        layer.validate()
        return layer

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], kernel: str = "auto") -> "VQLinear":
        """Rebuild a layer from its compressed tensors alone (e.g. ``safetensors.torch.load_file``)."""
        missing = {"codebook", "codes"} - state.keys()
        if missing:
            raise ValueError(f"state dict lacks {sorted(missing)}")
        g, k, v = state["codebook"].shape
        n, j = state["codes"].shape
        layer = cls(
            j * v, n, v, k, g, bias="bias" in state, scales="scales" in state, signs="signs" in state,
            codebook_dtype=state["codebook"].dtype, kernel=kernel, device=state["codes"].device,
        )  # fmt: skip
        layer.load_state_dict(state)
        return layer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # take the stored dtypes of scales and bias as they are (fp16 scales stay fp16)
        for name in ("scales", "bias"):
            t = state_dict.get(prefix + name)
            if t is not None and getattr(self, name) is not None and t.dtype in _FLOAT_DTYPES:
                setattr(self, name, torch.empty_like(t, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._checked_version = None

    def validate(self) -> None:
        """Check shapes, dtypes, devices and that every code indexes the codebook (ValueError otherwise)."""
        _check_format(self.codebook, self.codes, self.scales, self.signs, self.bias, self.in_features)
        _check_codes_in_range(self.codes, self.codebook_size)
        self._checked_version = self._version_key()

    def _version_key(self) -> tuple:
        # in-place edits bump a tensor's _version; reassignment changes its identity
        ts = (self.codebook, self.codes, self.scales, self.signs, self.bias)
        return tuple((id(t), t._version) if t is not None else None for t in ts)

    def _ensure_valid(self) -> None:
        if self._checked_version != self._version_key():
            self.validate()

    # -- compute
    def _tensors(self):
        return self.codebook, self.codes, self.scales, self.signs

    @torch.no_grad()
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``(out, in)`` weight, in ``dtype`` (default the codebook's)."""
        self._ensure_valid()
        dtype = dtype or self.codebook.dtype
        if self.codes.is_cuda and vq_triton.HAS_TRITON:
            return vq_triton.dequantize(*self._tensors(), dtype=dtype)
        return vq_dequantize_reference(*self._tensors(), dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._ensure_valid()
        if not x.is_floating_point() or x.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"expected fp16, bf16 or fp32 input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected last dim {self.in_features}, got {x.shape[-1]}")
        if x.device != self.codes.device:
            raise ValueError(f"input is on {x.device} but the layer is on {self.codes.device}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        kernel = self._pick(x2)
        if kernel == "reference":
            y = vq_linear_reference(x2, *self._tensors(), self.bias)
        elif kernel == "reference-lut":
            if self.signs is not None:
                raise ValueError("the look-up-table path does not support sign bits (a sign per weight breaks tables)")
            y = vq_lut_linear_reference(x2, self.codebook, self.codes, self.scales, self.bias)
        elif kernel == "triton-dequant":
            w = vq_triton.dequantize(*self._tensors(), dtype=x.dtype)
            y = F.linear(x2, w, None if self.bias is None else self.bias.to(x.dtype))
        elif kernel == "triton-lut":
            y = vq_triton.lut_linear(x2, self.codebook, self.codes, self.scales, self.signs, self.bias)
        else:
            y = vq_triton.gemm(x2, *self._tensors(), self.bias)
        return y.reshape(*lead, self.out_features)

    def _pick(self, x2: torch.Tensor) -> str:
        kernel = self.kernel
        on_triton = vq_triton.HAS_TRITON and (x2.is_cuda or vq_triton.INTERPRET)
        if kernel == "auto":
            if not (x2.is_cuda and vq_triton.HAS_TRITON):
                lut = x2.shape[0] <= CPU_LUT_MAX_ROWS and self.signs is None and self.codebook_size <= LUT_MAX_CODEBOOK
                return "reference-lut" if lut else "reference"
            return choose_kernel(x2.shape[0], self, x2.dtype)
        if kernel.startswith("triton") and not on_triton:
            need = "Triton and a CUDA input (or TRITON_INTERPRET=1 set before triton loads)"
            raise ValueError(f"kernel {kernel!r} needs {need}")
        return kernel


# ---- building one from a dense layer ---------------------------------------------------


@torch.no_grad()
def quantize_linear(
    linear: nn.Linear,
    vector_size: int = 4,
    codebook_size: int = 256,
    num_codebooks: int = 1,
    scales: bool = True,
    signs: bool = False,
    iters: int = 10,
    codebook_dtype: torch.dtype = torch.float16,
    max_samples: int | None = 1 << 16,
    generator: torch.Generator | None = None,
    kernel: str = "auto",
) -> VQLinear:
    """Compress a dense ``linear`` by k-means on its sub-vectors (round-to-nearest codes, no calibration data).

    Rows are first divided by their RMS (the stored scale) so that one codebook fits rows of
    different magnitude; with ``signs`` the codebook is fitted to magnitudes and the signs are
    stored. The codebook is fitted on at most ``max_samples`` sub-vectors per group (drawn with
    ``generator``); every sub-vector then gets its nearest codeword.
    """
    n, d = linear.out_features, linear.in_features
    if d % vector_size:
        raise ValueError(f"vector_size {vector_size} must divide in_features {d}")
    if n % num_codebooks:
        raise ValueError(f"num_codebooks {num_codebooks} must divide out_features {n}")
    w = linear.weight.detach().float()
    s = w.pow(2).mean(1).sqrt().clamp_min(torch.finfo(torch.float32).tiny) if scales else None
    if s is not None:
        w = w / s[:, None]
    neg = w < 0 if signs else None
    if signs:
        w = w.abs()
    rows = n // num_codebooks
    books, codes = [], []
    for g in range(num_codebooks):
        sub = w[g * rows : (g + 1) * rows].reshape(-1, vector_size)
        book = kmeans(sub, codebook_size, iters=iters, generator=generator, max_samples=max_samples).centroids
        book = book.to(codebook_dtype)  # assign against the codewords as they will be stored
        codes.append(nearest(sub, book.float())[1][:, 0].reshape(rows, d // vector_size))
        books.append(book)
    return VQLinear.from_linear(linear, torch.stack(books), torch.cat(codes), s, neg, kernel=kernel)
