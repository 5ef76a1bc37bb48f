"""Whole models: :func:`compress_model`, :func:`decompress_model`, :func:`compression_report` (on ``swap_modules``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..module_swap import Selector, swap_modules
from .codec import LR2VQWeight
from .layers import LR2VQConv2d, LR2VQLinear

__all__ = ["LR2VQLayerReport", "LR2VQReport", "compress_model", "compression_report", "decompress_model"]


@dataclass
class LR2VQLayerReport:
    """One compressed layer: n weights, N = n/vector_size assignments of ``code_bits`` bits, ``bits`` in all."""

    name: str
    n: int
    vector_size: int
    rank: int
    codebook_size: int
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


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def compress_model(
    model: nn.Module,
    *,
    vector_size: int,
    codebook_size: int | None,
    rank: int,
    layers: Selector | Iterable[Selector] | None = None,
    exclude: Selector | Iterable[Selector] | None = None,
    kmeans_iters: int = 25,
    seed: int = 0,
    init: str = "kmeans",
) -> nn.Module:
    """Swap ``nn.Linear`` / ``nn.Conv2d`` submodules of ``model`` for LR²VQ layers, in place.

    Args:
        vector_size: subvector length (sets the ratio); must divide each layer's input size.
        codebook_size: centroids per layer; ``None`` for no clustering (a low-rank R·P
            layer, see :class:`LR2VQWeight`).
        rank: d̃ ≤ vector_size, the dimension of the representations that are clustered.
        layers: which layers to compress, as :func:`~vqlib.quantizers.swap_modules`'s
            ``include``: qualified names (as in ``named_modules``), fnmatch patterns and/or
            types (``nn.Linear`` then also takes its subclasses). By default every module whose
            type is exactly ``nn.Linear`` or ``nn.Conv2d`` (subclasses such as attention's
            ``out_proj`` are used through their ``.weight`` elsewhere, so they are left alone
            unless named). Call again with other layers for per-layer settings: compressed
            layers are no longer ``nn.Linear``.
        exclude: names, patterns or types to leave dense.
        init: ``"kmeans"`` fits each layer (SVD then k-means, seeded by ``seed``);
            ``"empty"`` only builds the compressed layers, to load a saved state dict into.

    A layer used in two places stays one layer; two layers that share one weight parameter
    get one shared :class:`LR2VQWeight`. A weight tied to a module that is not compressed
    (an embedding tied to the LM head) cannot stay tied and is reported with a warning.
    Nothing changes when a layer cannot be compressed (the error names it).

    Returns:
        ``model``. :func:`compression_report` gives the per-layer numbers.

    The paper's recipe, low-rank pre-training then clustering::

        compress_model(model, vector_size=v, codebook_size=None, rank=r)  # R·P from the SVD
        finetune(model, loader, loss_fn, steps)                           # learn R and P on the task
        compress_model(decompress_model(model), vector_size=v, codebook_size=k, rank=r)  # SVD now exact
        finetune(model, loader, loss_fn, steps)                           # C and P
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(model, _DENSE):
        raise ValueError("the model is itself the layer; use LR2VQLinear/LR2VQConv2d.from_module for a bare layer")
    named = dict(model.named_modules())
    if layers is not None:
        for name in [layers] if isinstance(layers, (str, type)) else list(layers):
            if isinstance(name, str) and not _is_pattern(name) and not isinstance(named.get(name), _DENSE):
                found = type(named[name]).__name__ if name in named else "no such module"
                raise ValueError(f"layer {name!r} is not an nn.Linear or nn.Conv2d ({found})")
    generator = torch.Generator().manual_seed(seed)
    settings = {"vector_size": vector_size, "codebook_size": codebook_size, "rank": rank}
    by_weight: dict[int, nn.Module] = {}  # id of a dense weight -> its compressed layer (tied weights)

    def build(name: str, layer: nn.Module) -> nn.Module | None:
        if not (type(layer) in _DENSE if layers is None else isinstance(layer, _DENSE)):
            return None
        cls = LR2VQLinear if isinstance(layer, nn.Linear) else LR2VQConv2d
        twin = by_weight.get(id(layer.weight))
        if twin is not None and type(twin) is not cls:
            twin = None
        try:
            if init == "empty" or twin is not None:
                new = cls.empty_like(layer, **settings)
            else:
                new = cls.from_module(layer, **settings, kmeans_iters=kmeans_iters, generator=generator)
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None
        if twin is not None:
            new.vq = twin.vq  # one weight, one codec
            if layer.bias is not None:
                new.bias.data.copy_(layer.bias.detach())
        by_weight.setdefault(id(layer.weight), new)
        return new

    report = swap_modules(model, build, include=layers, exclude=exclude)
    if not report:
        raise ValueError("the model has no nn.Linear or nn.Conv2d layer to compress (check layers= and exclude=)")
    return model


def decompress_model(model: nn.Module) -> nn.Module:
    """Swap every LR²VQ layer of ``model`` back for a dense ``nn.Linear`` / ``nn.Conv2d``, in place.

    Layers that shared one :class:`LR2VQWeight` get one shared dense weight parameter.
    """
    if isinstance(model, (LR2VQLinear, LR2VQConv2d)):
        raise ValueError("the model is itself the layer; call .weight on it instead")
    by_vq: dict[int, nn.Parameter] = {}

    def build(name: str, mod: nn.Module) -> nn.Module:
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
            if id(mod.vq) in by_vq and by_vq[id(mod.vq)].shape == dense.weight.shape:
                dense.weight = by_vq[id(mod.vq)]
            else:
                dense.weight.copy_(w)
                by_vq[id(mod.vq)] = dense.weight
            if bias:
                dense.bias.copy_(mod.bias)
        return dense

    swap_modules(model, build, include=[LR2VQLinear, LR2VQConv2d])
    return model


def compression_report(model: nn.Module) -> LR2VQReport:
    """Per-layer and total storage of the LR²VQ layers in ``model`` (a shared weight counted once)."""
    report = LR2VQReport()
    inside = set()
    for name, mod in model.named_modules():
        if isinstance(mod, LR2VQWeight):
            inside.update(id(p) for p in mod.parameters())
            layer = name.rpartition(".")[0] if name.endswith(".vq") else name
            report.layers.append(
                LR2VQLayerReport(
                    layer,
                    mod.rows * mod.cols,
                    mod.vector_size,
                    mod.rank,
                    mod.codebook_size,
                    mod.code_bits,
                    mod.bits,
                    mod.dense_bits,
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
