"""Codebook-compressed linear layers: the format, ``VQLinear`` (a layer and a weight codec) and model surgery.

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

``G`` is ``num_groups``. The package is cut along its seams: :mod:`.format` (code types
and checks), :mod:`.reference` (the torch references), :mod:`.dispatch` (which path runs:
the Triton kernels of :mod:`.vq_triton` on CUDA, the references elsewhere) and this module.

``VQLinear`` is itself the weight codec (:class:`~vqlib.quantizers.codec.Codec`): ``fit(weight)``
learns the codebook and stores the weight's codes, ``encode(weight)`` gives the
:class:`VQCodes` (codes, scales, packed signs) of any weight of its shape against the fitted
codebook, ``decode(codes)`` the dense weight; one encoded item is one output row, so
``code_size`` is the stored bytes per row (codebook amortised) and ``bits_per_weight`` is
every stored bit over ``out_features·in_features``. The codec's configuration *is* the
layer's (vector size, codebook size, groups, scales, signs, codebook dtype), so a separate
codec class would only restate it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn as nn

from vqlib.quantizers import Codec, SwapReport, kmeans, nearest, swap_modules
from vqlib.quantizers.packing import pack_bits, packed_size

from . import dispatch
from .format import FLOAT_DTYPES, as_dtype, check_codes_in_range, check_format, code_dtype, to_stored_codes

__all__ = ["VQCodes", "VQLinear", "quantize_linear", "quantize_model"]


class VQCodes(NamedTuple):
    """A weight encoded by a :class:`VQLinear`: everything stored per output row."""

    codes: torch.Tensor  # (out, in / v), uint8 or int16 (read as unsigned)
    scales: torch.Tensor | None  # (out,) float, when the layer keeps scales
    signs: torch.Tensor | None  # (out, ⌈in/8⌉) packed uint8, when the layer keeps signs


class VQLinear(Codec, nn.Module):
    """A linear layer stored as codes into a codebook (format in the module docstring), and its weight codec.

    Args:
        in_features, out_features: the dense layer's shape; ``vector_size`` must divide ``in_features``.
        vector_size: ``v``, inputs per code.
        codebook_size: ``K`` codewords (codes stored as uint8 up to 256, int16 up to 65536).
        num_groups: ``G`` codebooks, each shared by ``out_features / G`` consecutive output rows.
        bias: keep a bias.
        scales: keep a per-output-channel scale.
        signs: keep one sign bit per weight (sign-split: the codebook holds magnitudes).
        codebook_dtype: fp16, bf16 or fp32.
        kernel: ``"auto"`` (the Triton kernels on CUDA, the torch reference elsewhere; see
            :mod:`vqlib.kernels.dispatch`), or one of :data:`KERNELS` to force a path. A Triton kernel
            on CPU tensors needs ``TRITON_INTERPRET=1`` (the tests run them that way).

    A layer is fitted by :meth:`fit`, :meth:`from_linear`, :func:`quantize_linear` or by loading a
    state dict; before that ``forward`` raises ``NotFittedError``. The state dict holds only the
    compressed tensors: ``codebook``, ``codes``, ``scales``, ``signs`` (packed), ``bias``.
    :meth:`from_state_dict` rebuilds a layer from them alone (shapes say the configuration), so a
    safetensors file round-trips; ``save_pretrained`` / ``from_pretrained`` add the recorded
    constructor in ``config.json``.
    """

    _config_default_module = "vqlib.kernels"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        vector_size: int = 4,
        codebook_size: int = 256,
        num_groups: int = 1,
        bias: bool = True,
        scales: bool = True,
        signs: bool = False,
        codebook_dtype: torch.dtype | str = torch.float16,
        kernel: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if vector_size < 1 or in_features < 1 or out_features < 1 or in_features % vector_size:
            raise ValueError(f"vector_size {vector_size} must divide in_features {in_features} (both positive)")
        if num_groups < 1 or out_features % num_groups:
            raise ValueError(f"num_groups {num_groups} must divide out_features {out_features}")
        codebook_dtype = as_dtype(codebook_dtype)
        if codebook_dtype not in FLOAT_DTYPES:
            raise ValueError(f"codebook_dtype must be fp16, bf16 or fp32, got {codebook_dtype}")
        if kernel not in dispatch.KERNELS:
            raise ValueError(f"kernel must be one of {dispatch.KERNELS}, got {kernel!r}")
        self.in_features, self.out_features = in_features, out_features
        self.kernel = kernel
        cdt = code_dtype(codebook_size)
        shape = (num_groups, codebook_size, vector_size)
        self.register_buffer("codebook", torch.zeros(shape, dtype=codebook_dtype, device=device))
        self.register_buffer("codes", torch.zeros(out_features, in_features // vector_size, dtype=cdt, device=device))
        self.register_buffer("scales", torch.ones(out_features, device=device) if scales else None)
        nbytes = packed_size(in_features, 1)
        packed = torch.zeros(out_features, nbytes, dtype=torch.uint8, device=device) if signs else None
        self.register_buffer("signs", packed)
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self._checked_version: tuple | None = None
        self._fitted = False

    # -- configuration read off the stored tensors
    @property
    def vector_size(self) -> int:
        return self.codebook.shape[2]

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[1]

    @property
    def num_groups(self) -> int:
        return self.codebook.shape[0]

    # -- the codec contract
    @property
    def is_fitted(self) -> bool:
        return self._fitted

    @property
    def code_dim(self) -> int:
        return self.in_features

    @property
    def code_size(self) -> float:
        """Stored bytes (codes, codebook, scales, signs; not the bias) per output row."""
        stored = [self.codes, self.codebook, self.scales, self.signs]
        return sum(t.numel() * t.element_size() for t in stored if t is not None) / self.out_features

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, vector_size={self.vector_size}, "
            f"codebook_size={self.codebook_size}, num_groups={self.num_groups}, "
            f"signs={self.signs is not None}, bits_per_weight={self.bits_per_weight:.3f}"
        )

    def _check_weight(self, weight: torch.Tensor) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != shape:
            got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(f"expected an (out_features, in_features) = {shape} weight, got {got}")
        w = weight.detach().float()
        if not torch.isfinite(w).all():
            raise ValueError("weight contains NaN or inf; only finite weights can be quantized")
        return w

    def _normalise(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Rows divided by their RMS (the stored scale) so one codebook fits rows of any size; magnitudes + signs."""
        s = w.pow(2).mean(1).sqrt().clamp_min(torch.finfo(torch.float32).tiny) if self.scales is not None else None
        if s is not None:
            w = w / s[:, None]
        neg = w < 0 if self.signs is not None else None
        if neg is not None:
            w = w.abs()
        return w, s, neg

    def _groups(self, w: torch.Tensor):
        rows = self.out_features // self.num_groups
        for g in range(self.num_groups):
            yield g, w[g * rows : (g + 1) * rows].reshape(-1, self.vector_size)

    @torch.no_grad()
    def fit(
        self,
        weight: torch.Tensor,
        iters: int = 10,
        max_samples: int | None = 1 << 16,
        generator: torch.Generator | None = None,
    ) -> VQLinear:
        """Learn the codebook(s) by k-means on ``weight``'s normalised sub-vectors and store its codes; returns self.

        Each group's codebook is fitted on at most ``max_samples`` of its sub-vectors (drawn with
        ``generator``); every sub-vector then gets its nearest codeword as stored (round to
        nearest, no calibration data). With ``signs`` the codebook is fitted to magnitudes.
        """
        w, _, _ = self._normalise(self._check_weight(weight))
        for g, sub in self._groups(w):
            book = kmeans(sub, self.codebook_size, iters=iters, generator=generator, max_samples=max_samples)
            self.codebook[g].copy_(book.centroids.to(self.codebook.dtype))
        self._fitted = True
        self._store(self.encode(weight))
        return self

    @torch.no_grad()
    def encode(self, weight: torch.Tensor) -> VQCodes:
        """The :class:`VQCodes` of an ``(out_features, in_features)`` weight against the fitted codebook."""
        self.require_fitted()
        w, s, neg = self._normalise(self._check_weight(weight).to(self.codebook.device))
        rows, j = self.out_features // self.num_groups, self.in_features // self.vector_size
        codes = torch.cat(
            [nearest(sub, self.codebook[g].float())[1][:, 0].reshape(rows, j) for g, sub in self._groups(w)]
        )
        signs = pack_bits(neg.to(torch.uint8), 1) if neg is not None else None
        return VQCodes(to_stored_codes(codes, self.codebook_size), s, signs)

    def decode(self, codes: VQCodes, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``(out, in)`` weight that ``codes`` stand for, in ``dtype`` (default the codebook's)."""
        self.require_fitted()
        self._check_codes(codes)
        return dispatch.dequantize(
            self.codebook, codes.codes, codes.scales, codes.signs, dtype=dtype or self.codebook.dtype
        )

    def _check_codes(self, codes) -> None:
        if not isinstance(codes, VQCodes):
            raise self.codes_mismatch(
                f"expected VQCodes (codes, scales, signs) from encode, got {type(codes).__name__}"
            )
        for name, mine in (("scales", self.scales), ("signs", self.signs)):
            theirs = getattr(codes, name)
            if (theirs is None) != (mine is None):
                raise self.codes_mismatch(f"this layer {'keeps' if mine is not None else 'has no'} {name}")
        try:
            check_format(self.codebook, codes.codes, codes.scales, codes.signs, None, self.in_features)
            check_codes_in_range(codes.codes, self.codebook_size)
        except ValueError as err:
            raise self.codes_mismatch(str(err)) from None
        if codes.codes.shape[0] != self.out_features:
            raise self.codes_mismatch(f"codes for {codes.codes.shape[0]} rows, this layer has {self.out_features}")

    @torch.no_grad()
    def _store(self, codes: VQCodes) -> None:
        self.codes.copy_(codes.codes)
        if codes.scales is not None:
            self.scales = codes.scales.to(self.codes.device).clone()
        if codes.signs is not None:
            self.signs.copy_(codes.signs)

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
    ) -> VQLinear:
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
        layer.codes.copy_(to_stored_codes(codes, k))
        if scales is not None:
            if scales.shape != (n,):
                raise ValueError(f"scales must have shape ({n},), got {tuple(scales.shape)}")
            layer.scales = scales.detach().to(device).clone()
        if signs is not None:
            layer.signs.copy_(pack_bits(signs.to(torch.uint8), 1))
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        layer.validate()
        layer._fitted = True
        return layer

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], kernel: str = "auto") -> VQLinear:
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
            if t is not None and getattr(self, name) is not None and t.dtype in FLOAT_DTYPES:
                setattr(self, name, torch.empty_like(t, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._checked_version = None
        self._fitted = True

    def validate(self) -> None:
        """Check shapes, dtypes, devices and that every code indexes the codebook (ValueError otherwise)."""
        check_format(self.codebook, self.codes, self.scales, self.signs, self.bias, self.in_features)
        check_codes_in_range(self.codes, self.codebook_size)
        self._checked_version = self._version_key()

    def _version_key(self) -> tuple:
        # in-place edits bump a tensor's _version; reassignment changes its identity
        ts = (self.codebook, self.codes, self.scales, self.signs, self.bias)
        return tuple((id(t), t._version) if t is not None else None for t in ts)

    def _ensure_valid(self) -> None:
        self.require_fitted()
        if self._checked_version != self._version_key():
            self.validate()

    # -- compute
    def _tensors(self):
        return self.codebook, self.codes, self.scales, self.signs

    @torch.no_grad()
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``(out, in)`` weight, in ``dtype`` (default the codebook's)."""
        self._ensure_valid()
        return dispatch.dequantize(*self._tensors(), dtype=dtype or self.codebook.dtype)

    def kernel_for(self, x: torch.Tensor) -> str:
        """The path :meth:`forward` takes for input ``x`` (see :func:`vqlib.kernels.dispatch.select_kernel`)."""
        x2 = x.reshape(-1, x.shape[-1])
        return dispatch.select_kernel(self.kernel, x2, signs=self.signs is not None, codebook_size=self.codebook_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._ensure_valid()
        if not x.is_floating_point() or x.dtype not in FLOAT_DTYPES:
            raise ValueError(f"expected fp16, bf16 or fp32 input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected last dim {self.in_features}, got {x.shape[-1]}")
        if x.device != self.codes.device:
            raise ValueError(f"input is on {x.device} but the layer is on {self.codes.device}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        kernel = self.kernel_for(x2)
        y = dispatch.LINEAR[kernel](x2, *self._tensors(), self.bias)
        return y.reshape(*lead, self.out_features)


# ---- building layers from dense ones --------------------------------------------------


@torch.no_grad()
def quantize_linear(
    linear: nn.Linear,
    vector_size: int = 4,
    codebook_size: int = 256,
    num_groups: int = 1,
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
    ``generator``); every sub-vector then gets its nearest codeword. See :meth:`VQLinear.fit`.
    """
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"expected an nn.Linear, got {type(linear).__name__}")
    layer = VQLinear(
        linear.in_features, linear.out_features, vector_size, codebook_size, num_groups,
        bias=linear.bias is not None, scales=scales, signs=signs, codebook_dtype=codebook_dtype, kernel=kernel,
        device=linear.weight.device,
    )  # fmt: skip
    layer.fit(linear.weight, iters=iters, max_samples=max_samples, generator=generator)
    if linear.bias is not None:
        layer.bias = linear.bias.detach().clone()
    layer.validate()
    return layer


def quantize_model(
    model: nn.Module,
    *,
    vector_size: int = 4,
    codebook_size: int = 256,
    num_groups: int = 1,
    scales: bool = True,
    signs: bool = False,
    iters: int = 10,
    codebook_dtype: torch.dtype = torch.float16,
    max_samples: int | None = 1 << 16,
    seed: int = 0,
    kernel: str = "auto",
    include: str | type | Iterable[str | type] | None = None,
    exclude: str | type | Iterable[str | type] | None = None,
) -> SwapReport:
    """Swap ``nn.Linear`` layers of ``model`` for :class:`VQLinear` (:func:`quantize_linear` each), in place.

    ``include`` / ``exclude`` select layers as in :func:`vqlib.quantizers.swap_modules` (names,
    fnmatch patterns, types). By default every module whose type is exactly ``nn.Linear``
    (subclasses such as attention's ``out_proj`` are read through ``.weight`` by their parent,
    so they are left alone unless included). Codebooks are fitted with one generator seeded by
    ``seed``, layer after layer. A layer used in two places stays one layer; two layers sharing
    one weight parameter share one codebook and codes; a weight tied to a module that is not
    swapped (an embedding) is reported with a warning. Nothing changes when a layer cannot be
    quantized (the error names it: exclude it or pick a ``vector_size`` that divides it).

    Returns:
        The :class:`~vqlib.quantizers.SwapReport` of what was swapped.
    """
    if isinstance(model, nn.Linear):
        raise ValueError("the model is itself the layer; use quantize_linear for a bare nn.Linear")
    generator = torch.Generator().manual_seed(seed)
    by_weight: dict[int, VQLinear] = {}
    settings = dict(
        vector_size=vector_size, codebook_size=codebook_size, num_groups=num_groups, scales=scales, signs=signs,
        codebook_dtype=codebook_dtype, kernel=kernel,
    )  # fmt: skip

    def build(name: str, layer: nn.Module) -> VQLinear | None:
        if not (type(layer) is nn.Linear if include is None else isinstance(layer, nn.Linear)):
            return None
        twin = by_weight.get(id(layer.weight))
        try:
            if twin is None:
                new = quantize_linear(layer, iters=iters, max_samples=max_samples, generator=generator, **settings)
            else:  # the same weight: the same stored tensors, its own bias
                new = VQLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, **settings)
                for key in ("codebook", "codes", "scales", "signs"):
                    setattr(new, key, getattr(twin, key))
                if layer.bias is not None:
                    new.bias = layer.bias.detach().clone()
                new._fitted = True
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from None
        by_weight.setdefault(id(layer.weight), new)
        return new

    report = swap_modules(model, build, include=include, exclude=exclude)
    if not report:
        raise ValueError("the model has no nn.Linear layer to quantize (check include= and exclude=)")
    return report
