"""One dataclass per quantization method (torchao's shape): what :func:`vqlib.diffusion.quantize_` does.

Every config is also a diffusers quantization config (``QuantizationConfigMixin``, when diffusers
is installed) whose ``quant_method`` is ``"vqlib"``: the same object goes to ``quantize_``, to
``PipelineQuantizationConfig(quant_mapping=...)`` and, with the layout of a quantized model in
``modules``, into the ``quantization_config`` of a saved component's ``config.json``. ``to_dict()``
is JSON-safe; ``from_dict`` picks the method's class from ``method``; ``__init__`` takes the keys
a saved config adds (``quant_method``, ``format_version``, ``method``, ``modules``) as ``**kwargs``
and refuses any other unknown key, naming the ones it takes.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

try:  # the diffusers plugin needs the configs to be diffusers quantization configs
    from diffusers.quantizers.quantization_config import QuantizationConfigMixin as _Base
except ImportError:  # quantize_ works without diffusers
    _Base = object

__all__ = [
    "FORMAT_VERSION",
    "KMeansVQConfig",
    "METHODS",
    "QuantConfig",
    "RTNConfig",
    "SSVQConfig",
    "VQ4DiTConfig",
    "VQLibMethod",
]

#: version of the stored layout (``modules``) and tensors; a checkpoint naming a newer one is refused
FORMAT_VERSION = 1

#: layers every method keeps in full precision by default (VQ4DiT's choice for DiT: the patch, timestep and
#: class/caption embedders and the final projection stay FP, arXiv 2408.17131 §4.1)
DEFAULT_KEEP_FP = ("*embed*", "proj_out*", "caption_projection*")


class VQLibMethod(str, Enum):
    """diffusers reads ``quant_method.value``; a str-Enum member compares and hashes as its string."""

    VQLIB = "vqlib"


_SAVED_KEYS = ("quant_method", "format_version", "method", "modules")


def _config(cls):
    """``@dataclass`` plus an ``__init__`` that takes the keys a saved config adds (``**kwargs``)."""
    cls = dataclass(cls)
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        saved = {k: kwargs.pop(k) for k in _SAVED_KEYS if k in kwargs}
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"{cls.__name__} got unknown arguments {unknown}; it takes {names}")
        quant_method = saved.get("quant_method", VQLibMethod.VQLIB.value)
        if str(getattr(quant_method, "value", quant_method)) != VQLibMethod.VQLIB.value:
            raise ValueError(f"{cls.__name__} is a 'vqlib' config, got quant_method={quant_method!r}")
        version = saved.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ValueError(
                f"this quantization_config has format version {version!r}, but this vqlib reads versions 1 to "
                f"{FORMAT_VERSION}: the checkpoint was written by a newer vqlib; upgrade vqlib to load it"
            )
        method = saved.get("method", cls.method)
        if method != cls.method:
            raise ValueError(f"{cls.__name__} is method {cls.method!r}, got method={method!r}")
        init(self, *args, **kwargs)
        self.modules = saved.get("modules")

    cls.__init__ = __init__
    return cls


@dataclass
class QuantConfig(_Base):
    """Base of the method configs; the class registered with diffusers (its ``from_dict`` picks the method)."""

    quant_method: VQLibMethod = field(default=VQLibMethod.VQLIB, init=False, repr=False)
    method: ClassVar[str] = ""
    #: the quantized layout (filled on the copy attached to a quantized model; None on a user's config)
    modules: dict | None = field(default=None, init=False, repr=False, compare=False)

    #: whether this method needs calibration data (``calibrate=`` / :func:`quantize_pipeline`)
    needs_calibration: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.keep_fp = tuple(self.keep_fp)

    # -- diffusers' QuantizationConfigMixin surface
    @classmethod
    def from_dict(cls, config_dict: dict, return_unused_kwargs: bool = False, **kwargs):
        data = dict(config_dict)
        method = data.get("method", cls.method or None)
        if method not in METHODS:
            raise ValueError(f"unknown vqlib quantization method {method!r}; known: {sorted(METHODS)}")
        config = METHODS[method](**data)
        unused = {k: v for k, v in kwargs.items() if not hasattr(config, k)}
        for key, value in kwargs.items():
            if key not in unused:
                setattr(config, key, value)
        return (config, unused) if return_unused_kwargs else config

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain strings, numbers, lists and dicts."""
        out: dict[str, Any] = {"quant_method": VQLibMethod.VQLIB.value, "format_version": FORMAT_VERSION}
        out["method"] = self.method
        for f in dataclasses.fields(self):
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        out["modules"] = self.modules
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def to_json_string(self, use_diff: bool = True) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __iter__(self):
        yield from self.to_dict().items()

    def resolved(self) -> tuple[int, int]:
        """``(vector_size, codebook_size)`` for VQ methods."""
        raise NotImplementedError


def _pick(bits: int, vector_size: int | None, codebook_size: int | None, table: dict, name: str) -> tuple[int, int]:
    if vector_size is not None and codebook_size is not None:
        v, k = vector_size, codebook_size
    elif bits in table:
        v, k = table[bits]
        v, k = vector_size or v, codebook_size or k
    else:
        raise ValueError(
            f"{name}(bits={bits}) has no paper setting (known: {sorted(table)}); pass vector_size= and codebook_size="
        )
    if not isinstance(v, int) or v < 1:
        raise ValueError(f"vector_size must be a positive integer, got {v!r}")
    if not isinstance(k, int) or not 2 <= k <= 65536:
        raise ValueError(f"codebook_size must be an integer in [2, 65536], got {k!r}")
    return v, k


@_config
class KMeansVQConfig(QuantConfig):
    """Plain k-means VQ, no calibration: the starting point of VQ4DiT and SSVQ (data-free).

    ``bits=2`` is ``vector_size=4, codebook_size=256``, ``bits=3`` is ``vector_size=2, codebook_size=64``
    (VQ4DiT's settings); ``signs=True`` clusters magnitudes and stores a sign bit per weight.
    """

    method: ClassVar[str] = "kmeans"
    bits: int = 2
    vector_size: int | None = None
    codebook_size: int | None = None
    scales: bool = True
    signs: bool = False
    codebook_dtype: str = "float16"
    scales_dtype: str = "float16"
    kmeans_iters: int = 25
    max_samples: int | None = 1 << 16
    seed: int = 0
    keep_fp: tuple[str, ...] = DEFAULT_KEEP_FP

    def resolved(self) -> tuple[int, int]:
        return _pick(self.bits, self.vector_size, self.codebook_size, {2: (4, 256), 3: (2, 64)}, "KMeansVQConfig")


@_config
class VQ4DiTConfig(QuantConfig):
    """VQ4DiT (arXiv 2408.17131): k-means codebooks, candidate assignments with softmax ratios, calibration.

    ``bits=2`` → ``vector_size=4, codebook_size=256``; ``bits=3`` → ``vector_size=2, codebook_size=64``
    (the paper's settings); ``vector_size=`` / ``codebook_size=`` set them directly. ``candidates`` is
    the paper's n (nearest codewords per sub-vector); a ratio above ``freeze_threshold`` freezes its
    assignment (progressive freezing); after ``harden_at`` of the steps every assignment is hard and
    the rest calibrate the codebook for the stored codes. ``steps`` optimiser steps per block; ``block_inputs="quantized"``
    feeds each block the output of the blocks already quantized (the paper's student path),
    ``"fp"`` the full-precision model's inputs.
    """

    method: ClassVar[str] = "vq4dit"
    needs_calibration: ClassVar[bool] = True
    bits: int = 2
    vector_size: int | None = None
    codebook_size: int | None = None
    candidates: int = 2
    steps: int = 200
    lr_codebook: float = 1e-3
    lr_ratios: float = 5e-2
    lr_scales: float = 1e-3
    soft_weight: float = 0.01
    freeze_threshold: float = 0.99
    harden_at: float = 0.75
    block_inputs: str = "quantized"
    scales: bool = True
    codebook_dtype: str = "float16"
    scales_dtype: str = "float16"
    kmeans_iters: int = 25
    max_samples: int | None = 1 << 16
    seed: int = 0
    keep_fp: tuple[str, ...] = DEFAULT_KEEP_FP

    def resolved(self) -> tuple[int, int]:
        return _pick(self.bits, self.vector_size, self.codebook_size, {2: (4, 256), 3: (2, 64)}, "VQ4DiTConfig")


@_config
class SSVQConfig(QuantConfig):
    """SSVQ (arXiv 2503.08668): sign bits split off, magnitudes clustered, learnable latent signs (STE).

    A sign costs one bit per weight, so ``bits=2`` is ``vector_size=8, codebook_size=256`` (1 bit of
    magnitude code + 1 sign bit per weight) and ``bits=3`` is ``vector_size=4, codebook_size=256``.
    A sign whose flip rate (an EMA with ``flip_momentum``) exceeds the freezing threshold, annealed
    from ``freeze_start`` to ``freeze_end`` over the steps, is frozen (progressive freezing).
    """

    method: ClassVar[str] = "ssvq"
    needs_calibration: ClassVar[bool] = True
    bits: int = 2
    vector_size: int | None = None
    codebook_size: int | None = None
    steps: int = 200
    lr_codebook: float = 1e-3
    lr_signs: float = 1e-3
    lr_scales: float = 1e-3
    flip_momentum: float = 0.9
    freeze_start: float = 0.5
    freeze_end: float = 0.05
    block_inputs: str = "quantized"
    scales: bool = True
    codebook_dtype: str = "float16"
    scales_dtype: str = "float16"
    kmeans_iters: int = 25
    max_samples: int | None = 1 << 16
    seed: int = 0
    keep_fp: tuple[str, ...] = DEFAULT_KEEP_FP

    def resolved(self) -> tuple[int, int]:
        return _pick(self.bits, self.vector_size, self.codebook_size, {2: (8, 256), 3: (4, 256)}, "SSVQConfig")


@_config
class RTNConfig(QuantConfig):
    """Round-to-nearest integer weights, asymmetric per group of ``group_size`` inputs (data-free baseline).

    Stored: ``bits``-bit codes packed, an fp16 scale and a ``bits``-bit zero point per group.
    """

    method: ClassVar[str] = "rtn"
    bits: int = 4
    group_size: int = 128
    keep_fp: tuple[str, ...] = DEFAULT_KEEP_FP

    def resolved(self) -> tuple[int, int]:
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ValueError(f"RTNConfig bits must be an integer in [1, 8], got {self.bits!r}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"RTNConfig group_size must be a positive integer, got {self.group_size!r}")
        return self.group_size, 1 << self.bits


METHODS: dict[str, type[QuantConfig]] = {
    c.method: c for c in (KMeansVQConfig, VQ4DiTConfig, SSVQConfig, RTNConfig)
}
