"""LR²VQ: weight compression by clustering low-rank representations of subvectors.

Zhu, Zhou & Zhong 2022, "Learning Low-Rank Representations for Model
Compression" (LR²VQ, Low-Rank Representation Vector Quantization), arXiv 2211.11397.

A layer's n weights are cut into N = n/m subvectors of size m, the rows of
X ∈ R^{N×m}. LR²VQ writes X ≈ R·P with a low-rank representation R ∈ R^{N×d̃}
and one shared P ∈ R^{d̃×m}, and clusters the rows of R (not of X) into k
centroids C ∈ R^{k×d̃}:

    Ŵ = reshape(C[a]·P),   a_i = argmin_j ‖R_i − C_j‖²

It stores N·⌈log2 k⌉ bits of assignments plus k·d̃ + d̃·m floats, so

    ratio = 32·n / (N·⌈log2 k⌉ + 32·(k·d̃ + d̃·m))

(⌈log2 k⌉ = log2 k for the usual powers of two). m sets the ratio; d̃ ≤ m
trades the low-rank error ‖X − R·P‖ against the clustering error ‖R − C[a]‖,
which is smaller in d̃ dimensions than in m (the paper's point). C and P are
then fine-tuned on the task loss.

Here R and P start from the truncated SVD of X, the best rank-d̃ fit of a
trained layer. The paper first learns R and P by low-rank pre-training on the
task, then clusters; ``k=None`` gives that unclustered stage (recipe in
:func:`compress_model`), and it pays off at small d̃ (runs/lr2vq_notes.md).
Fine-tuning keeps the assignments fixed or makes them soft
(``assignments="soft"``, see :func:`finetune`).

Layout of the subvectors (row-major, consecutive blocks of m):

- ``nn.Linear`` ``(out, in)``: row o gives ``in/m`` subvectors
  ``W[o, j·m:(j+1)·m]``, so m must divide ``in_features``;
- ``nn.Conv2d`` ``(out, in/groups, kh, kw)``: output channel o's weights are
  flattened in PyTorch's memory order (input channel, kernel row, kernel
  column) and cut into blocks of m, so m must divide ``in/groups·kh·kw``.

Biases are kept as they are, in full precision, and are not counted in n.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kmeans import kmeans
from .nearest import nearest
from .packing import pack_bits, packed_size, unpack_bits

__all__ = [
    "LR2VQConv2d",
    "LR2VQLayerReport",
    "LR2VQLinear",
    "LR2VQReport",
    "LR2VQWeight",
    "compress_model",
    "compression_report",
    "decompress_model",
    "finetune",
]

# pack_bits handles up to 16 bits per code
_MAX_K = 1 << 16


def _check_config(rows: int, cols: int, m: int, rank: int, k: int | None, cols_name: str) -> None:
    for name, value in (("m", m), ("rank", rank), ("k", k if k is not None else 1)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if m < 1:
        raise ValueError(f"m (the subvector size) must be >= 1, got {m}")
    if cols % m:
        raise ValueError(
            f"m={m} must divide {cols_name}={cols}: subvectors are cut along it and never straddle two outputs"
        )
    if not 1 <= rank <= m:
        raise ValueError(
            f"rank (d̃) must be in [1, m={m}]: the representation cannot have more dimensions than the subvectors; "
            f"got {rank}"
        )
    num = rows * cols // m
    if k is None:
        return
    if not 1 <= k <= num:
        raise ValueError(f"k must be in [1, {num}] (the number of subvectors of size {m}), got {k}")
    if k > _MAX_K:
        raise ValueError(f"k must be at most {_MAX_K} (assignments are stored in at most 16 bits), got {k}")


def _refresh_assign(module: LR2VQWeight, incompatible_keys) -> None:
    # a module-level function, not a lambda, so that torch.save(model) can pickle the hook
    module._unpack()


class LR2VQWeight(nn.Module):
    """A ``(rows, cols)`` weight matrix stored as LR²VQ codes; calling it returns the matrix.

    Holds ``centroids`` C ``(k, rank)`` and ``proj`` P ``(rank, m)`` as parameters
    and the assignments packed to ⌈log2 k⌉ bits each in the ``codes`` buffer
    (empty when k = 1); nothing else goes into the state dict. Build it empty
    and load a state dict, or call :meth:`fit_` on a dense weight.

    ``k=None`` skips the clustering: C is R itself (one row per subvector,
    a_i = i, no codes stored), a plain low-rank layer R·P for the paper's
    low-rank pre-training stage.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        m: int,
        rank: int,
        k: int | None,
        cols_name: str = "cols",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        _check_config(rows, cols, m, rank, k, cols_name)
        self.num_subvectors = rows * cols // m
        self.clustered = k is not None
        self.rows, self.cols, self.m, self.rank = rows, cols, m, rank
        self.k = k if self.clustered else self.num_subvectors
        # ⌈log2 k⌉, 0 for k = 1; none for the identity assignments of k=None
        self.code_bits = (k - 1).bit_length() if self.clustered else 0
        factory = {"device": device, "dtype": dtype}
        self.centroids = nn.Parameter(torch.zeros(self.k, rank, **factory))
        self.proj = nn.Parameter(torch.zeros(rank, m, **factory))
        nbytes = packed_size(self.num_subvectors, self.code_bits) if self.code_bits else 0
        self.register_buffer("codes", torch.zeros(nbytes, dtype=torch.uint8, device=device))
        # unpacked copy for the gather in forward; rebuilt from `codes` after every load
        assign = torch.zeros(self.num_subvectors, dtype=torch.long, device=device)
        self.register_buffer("assign", assign, persistent=False)
        self._unpack()
        # R, only while fine-tuning with soft assignments (see soften / harden)
        self.register_parameter("latent", None)
        self.temperature = 1.0
        self._distance_scale = 1.0
        self.register_load_state_dict_post_hook(_refresh_assign)

    # --- storage -------------------------------------------------------------

    @property
    def bits(self) -> int:
        """Bits stored: N·⌈log2 k⌉ for the assignments plus the floats of C and P."""
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
        if int(assign.max()) >= self.k:
            raise ValueError(f"stored codes reach {int(assign.max())}, outside the {self.k} centroids")
        self.assign.copy_(assign)

    # --- fitting -------------------------------------------------------------

    @torch.no_grad()
    def fit_(
        self, weight: torch.Tensor, kmeans_iters: int = 25, generator: torch.Generator | None = None
    ) -> LR2VQWeight:
        """Compress ``weight`` (any shape with ``rows·cols`` elements, row-major) in place.

        P = the top-``rank`` right singular vectors of X, R = X·Pᵀ, then k-means
        on the rows of R. When X has no more than k distinct rows each gets its
        own centroid, which makes the reconstruction exact for rank = m.
        """
        if weight.numel() != self.rows * self.cols:
            raise ValueError(f"expected a weight of {self.rows}x{self.cols} elements, got shape {tuple(weight.shape)}")
        x = weight.detach().float().reshape(self.num_subvectors, self.m)
        if not torch.isfinite(x).all():
            raise ValueError("weight contains NaN or inf; LR²VQ can only compress finite weights")
        # full_matrices only when N < m, so that vh still has m rows (U is N×N, small then)
        _, _, vh = torch.linalg.svd(x, full_matrices=self.num_subvectors < self.m)
        proj = vh[: self.rank]
        if not self.clustered:
            self.centroids.copy_(x @ proj.T)
            self.proj.copy_(proj)
            return self
        distinct, inverse = torch.unique(x, dim=0, return_inverse=True)
        if distinct.shape[0] <= self.k:
            # centroids straight from the distinct rows (projected once, so equal rows stay
            # bit-equal); Lloyd could seed two centroids on equal rows and merge clusters
            centroids = distinct @ proj.T
            pad = centroids[:1].expand(self.k - centroids.shape[0], -1)
            centroids, assign = torch.cat([centroids, pad]), inverse
        else:
            r = x @ proj.T
            centroids, assign, _ = kmeans(r, self.k, iters=kmeans_iters, generator=generator)
        self.centroids.copy_(centroids)
        self.proj.copy_(proj)
        self._set_assign(assign)
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
            raise ValueError("soft assignments need a clustered layer (k given, not None)")
        c = self.centroids.float()
        gaps = torch.cdist(c, c).square()
        gaps[gaps <= 0] = math.inf  # itself, and duplicate centroids
        nearest_gap = gaps.min(1).values
        finite = nearest_gap[torch.isfinite(nearest_gap)]
        self._distance_scale = float(finite.mean()) if finite.numel() and finite.mean() > 0 else 1.0
        self.temperature = float(temperature)
        self.latent = nn.Parameter(self.centroids[self.assign].clone())

    def soft_assignments(self) -> torch.Tensor:
        """``(N, k)`` softmax over −‖R_i − C_j‖² / (temperature·s); needs :meth:`soften` first."""
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

    def forward(self) -> torch.Tensor:
        # the k possible subvectors; gathering rows of C·P equals C[a]·P with fewer flops
        table = self.centroids @ self.proj
        if self.latent is None:
            sub = F.embedding(self.assign, table)
        else:
            sub = self.soft_assignments() @ table
        return sub.reshape(self.rows, self.cols)

    def extra_repr(self) -> str:
        mode = "" if self.latent is None else f", soft (temperature={self.temperature:.3g})"
        return (
            f"{self.rows}x{self.cols}, m={self.m}, rank={self.rank}, k={self.k}, "
            f"ratio={self.compression_ratio:.2f}{mode}"
        )


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class _LR2VQLayer(nn.Module):
    """What the Linear and Conv2d layers share: the compressed weight ``vq``, the bias, fitting from a dense layer."""

    vq: LR2VQWeight

    def _init_bias(self, bias: bool, size: int, device, dtype) -> None:
        if bias:
            self.bias = nn.Parameter(torch.zeros(size, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def _fit_from(self, layer: nn.Module, kmeans_iters: int, generator: torch.Generator | None):
        self.vq.fit_(layer.weight, kmeans_iters, generator)
        if layer.bias is not None:
            self.bias.data.copy_(layer.bias.detach())
        return self

    @property
    def compression_ratio(self) -> float:
        return self.vq.compression_ratio


class LR2VQLinear(_LR2VQLayer):
    """``nn.Linear`` whose weight is an :class:`LR2VQWeight` (subvectors along ``in_features``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        m: int,
        rank: int,
        k: int | None,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.vq = LR2VQWeight(out_features, in_features, m, rank, k, "in_features", device, dtype)
        self._init_bias(bias, out_features, device, dtype)

    @classmethod
    def from_module(
        cls,
        layer: nn.Linear,
        m: int,
        rank: int,
        k: int | None,
        kmeans_iters: int = 25,
        generator: torch.Generator | None = None,
    ) -> LR2VQLinear:
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"expected an nn.Linear, got {type(layer).__name__}")
        w = layer.weight
        new = cls(layer.in_features, layer.out_features, m, rank, k, layer.bias is not None, w.device, w.dtype)
        return new._fit_from(layer, kmeans_iters, generator)

    @property
    def weight(self) -> torch.Tensor:
        return self.vq()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class LR2VQConv2d(_LR2VQLayer):
    """``nn.Conv2d`` whose weight is an :class:`LR2VQWeight` (subvectors along ``in/groups·kh·kw``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        m: int,
        rank: int,
        k: int | None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        kh, kw = _pair(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.groups = groups
        cols = in_channels // groups * kh * kw
        self.vq = LR2VQWeight(out_channels, cols, m, rank, k, "in_channels/groups·kh·kw", device, dtype)
        self._init_bias(bias, out_channels, device, dtype)

    @classmethod
    def from_module(
        cls,
        layer: nn.Conv2d,
        m: int,
        rank: int,
        k: int | None,
        kmeans_iters: int = 25,
        generator: torch.Generator | None = None,
    ) -> LR2VQConv2d:
        if not isinstance(layer, nn.Conv2d):
            raise ValueError(f"expected an nn.Conv2d, got {type(layer).__name__}")
        if layer.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported, got {layer.padding_mode!r}")
        w = layer.weight
        new = cls(
            layer.in_channels, layer.out_channels, layer.kernel_size, m, rank, k, layer.stride, layer.padding,
            layer.dilation, layer.groups, layer.bias is not None, w.device, w.dtype,
        )  # fmt: skip
        return new._fit_from(layer, kmeans_iters, generator)

    @property
    def weight(self) -> torch.Tensor:
        return self.vq().reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )


# --- whole models ------------------------------------------------------------


@dataclass
class LR2VQLayerReport:
    """One compressed layer: n weights, N = n/m assignments of ``code_bits`` bits, ``bits`` stored in all."""

    name: str
    n: int
    m: int
    rank: int
    k: int
    code_bits: int
    bits: int
    dense_bits: int
    ratio: float


@dataclass
class LR2VQReport:
    """Per-layer reports and totals.

    ``ratio`` = Σ dense_bits / Σ bits over the compressed layers (the paper's
    convention); ``model_ratio`` also counts every other parameter of the model
    (biases, layers left dense) on both sides, at its own width.
    """

    layers: list[LR2VQLayerReport] = field(default_factory=list)
    n: int = 0
    bits: int = 0
    dense_bits: int = 0
    ratio: float = 1.0
    other_bits: int = 0
    model_ratio: float = 1.0


_DENSE = (nn.Linear, nn.Conv2d)
INITS = ("kmeans", "empty")


def _empty_like(layer: nn.Module, m: int, rank: int, k: int | None) -> nn.Module:
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return LR2VQLinear(layer.in_features, layer.out_features, m, rank, k, layer.bias is not None, w.device, w.dtype)
    return LR2VQConv2d(
        layer.in_channels, layer.out_channels, layer.kernel_size, m, rank, k, layer.stride, layer.padding,
        layer.dilation, layer.groups, layer.bias is not None, w.device, w.dtype,
    )  # fmt: skip


def compress_model(
    model: nn.Module,
    m: int,
    rank: int,
    k: int | None,
    layers: Iterable[str] | None = None,
    kmeans_iters: int = 25,
    seed: int = 0,
    init: str = "kmeans",
) -> nn.Module:
    """Swap ``nn.Linear`` / ``nn.Conv2d`` submodules of ``model`` for LR²VQ layers, in place.

    Args:
        k: centroids per layer; ``None`` for no clustering (a low-rank R·P
            layer, see :class:`LR2VQWeight`).
        layers: qualified names (as in ``named_modules``) of the layers to
            compress; by default every module whose type is exactly ``nn.Linear``
            or ``nn.Conv2d`` (subclasses such as attention's ``out_proj`` are
            used through their ``.weight`` elsewhere, so they are left alone
            unless named). Call again with other names for per-layer settings.
        init: ``"kmeans"`` fits each layer (SVD then k-means, seeded by
            ``seed``); ``"empty"`` only builds the compressed layers, to load a
            saved state dict into.

    Returns:
        ``model``. :func:`compression_report` gives the per-layer numbers.

    The paper's recipe, low-rank pre-training then clustering::

        compress_model(model, m, rank, k=None)        # R·P from the SVD
        finetune(model, loader, loss_fn, steps)       # learn R and P on the task
        compress_model(decompress_model(model), m, rank, k)  # the weight has rank d̃: SVD is exact
        finetune(model, loader, loss_fn, steps)       # C and P
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    named = dict(model.named_modules())
    if layers is None:
        targets = [name for name, mod in named.items() if type(mod) in _DENSE]
        if not targets:
            raise ValueError("the model has no nn.Linear or nn.Conv2d layer to compress")
    else:
        targets = list(layers)
        for name in targets:
            if not isinstance(named.get(name), _DENSE):
                found = type(named[name]).__name__ if name in named else "no such module"
                raise ValueError(f"layer {name!r} is not an nn.Linear or nn.Conv2d ({found})")
    if "" in targets:
        raise ValueError("the model is itself the layer; use LR2VQLinear/LR2VQConv2d.from_module for a bare layer")
    generator = torch.Generator().manual_seed(seed)
    for name in targets:
        layer = named[name]
        try:
            if init == "empty":
                new = _empty_like(layer, m, rank, k)
            else:
                cls = LR2VQLinear if isinstance(layer, nn.Linear) else LR2VQConv2d
                new = cls.from_module(layer, m, rank, k, kmeans_iters, generator)
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model


def decompress_model(model: nn.Module) -> nn.Module:
    """Swap every LR²VQ layer of ``model`` back for a dense ``nn.Linear`` / ``nn.Conv2d``, in place."""
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, (LR2VQLinear, LR2VQConv2d)):
            continue
        if name == "":
            raise ValueError("the model is itself the layer; call .weight on it instead")
        w = mod.weight.detach()
        bias = mod.bias is not None
        if isinstance(mod, LR2VQLinear):
            dense = nn.Linear(mod.in_features, mod.out_features, bias, w.device, w.dtype)
        else:
            dense = nn.Conv2d(
                mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                mod.groups, bias, device=w.device, dtype=w.dtype,
            )  # fmt: skip
        with torch.no_grad():
            dense.weight.copy_(w)
            if bias:
                dense.bias.copy_(mod.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, dense)
    return model


def compression_report(model: nn.Module) -> LR2VQReport:
    """Per-layer and total storage of the LR²VQ layers in ``model``."""
    report = LR2VQReport()
    inside = set()
    for name, mod in model.named_modules():
        if isinstance(mod, LR2VQWeight):
            inside.update(id(p) for p in mod.parameters())
            layer = name.rpartition(".")[0] if name.endswith(".vq") else name
            report.layers.append(
                LR2VQLayerReport(
                    layer, mod.rows * mod.cols, mod.m, mod.rank, mod.k, mod.code_bits, mod.bits, mod.dense_bits,
                    mod.compression_ratio,
                )  # fmt: skip
            )
    if not report.layers:
        raise ValueError("the model has no LR²VQ layer; run compress_model first")
    report.n = sum(r.n for r in report.layers)
    report.bits = sum(r.bits for r in report.layers)
    report.dense_bits = sum(r.dense_bits for r in report.layers)
    report.ratio = report.dense_bits / report.bits
    report.other_bits = sum(p.numel() * p.element_size() * 8 for p in model.parameters() if id(p) not in inside)
    report.model_ratio = (report.dense_bits + report.other_bits) / (report.bits + report.other_bits)
    return report


# --- fine-tuning -------------------------------------------------------------

ASSIGNMENTS = ("fixed", "soft")
TRAIN = ("codebooks", "all")


def finetune(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    assignments: str = "fixed",
    temperature: tuple[float, float] = (0.3, 0.01),
    train: str = "codebooks",
) -> list[float]:
    """Fine-tune the LR²VQ layers of ``model`` end to end on ``loss_fn(model(x), y)``, with Adam.

    ``loader`` yields ``(x, y)`` batches and is cycled until ``steps`` steps.

    ``assignments="fixed"``: the assignments stay; C and P get the gradient.

    ``assignments="soft"`` (differentiable k-means as in DKM, Cho et al. 2022,
    which the paper compares against): each layer's R becomes a trainable parameter
    (started at C[a]) and the weight is A·C·P with
    A_ij = softmax_j(−‖R_i − C_j‖² / (τ·s)), s the layer's mean squared
    nearest-centroid gap. τ is annealed geometrically from ``temperature[0]``
    to ``temperature[1]``; at the end (or on an error) the assignments are
    hardened to a_i = argmin_j ‖R_i − C_j‖² and R is dropped. Soft mode holds an
    N×k matrix per layer. Layers built with ``k=None`` have no clusters: their
    C (= R) and P train directly in either mode, which is the paper's low-rank
    pre-training.

    ``train="codebooks"`` optimises only C and P (and R); ``"all"`` also every
    other parameter of the model (biases, layers left dense). The model is in
    train mode during the steps (batch-norm statistics move) and back in its
    own mode after.

    Returns the loss of every step.
    """
    if assignments not in ASSIGNMENTS:
        raise ValueError(f"assignments must be one of {ASSIGNMENTS}, got {assignments!r}")
    if train not in TRAIN:
        raise ValueError(f"train must be one of {TRAIN}, got {train!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t_start, t_end = (float(t) for t in temperature)
    if not (t_start > 0 and t_end > 0):
        raise ValueError(f"temperatures must be positive, got {temperature}")
    weights = [mod for mod in model.modules() if isinstance(mod, LR2VQWeight)]
    if not weights:
        raise ValueError("the model has no LR²VQ layer; run compress_model first")
    soft = assignments == "soft"
    was_training = model.training
    try:
        if soft:
            for w in weights:
                if w.clustered:
                    w.soften(t_start)
        params = [p for w in weights for p in w.parameters()]
        if train == "all":
            seen = {id(p) for p in params}
            params += [p for p in model.parameters() if id(p) not in seen]
        opt = torch.optim.Adam(params, lr=lr)
        device = weights[0].centroids.device
        batches = _cycle(loader)
        model.train()
        losses = []
        for step in range(steps):
            if soft:
                tau = t_start * (t_end / t_start) ** (step / max(steps - 1, 1))
                for w in weights:
                    w.temperature = tau
            x, y = next(batches)
            loss = loss_fn(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for w in weights:
            w.harden()
        model.train(was_training)
    return losses


def _cycle(loader: Iterable):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yielded no batch")
