"""``quantize_(model, config, calibrate=None, filter_fn=None)``: torchao's shape, for any ``nn.Module``.

The config (one dataclass per method, :mod:`.config`) says what; this module does the
surgery. Layers are picked by ``filter_fn(module, name)`` (default: every module whose type is
exactly ``nn.Linear``, except names matching the method's ``keep_fp`` patterns), every
replacement is built first, and :func:`vqlib.quantizers.swap_modules` puts them in only when
all succeeded, so an error leaves the full-precision model untouched.

Calibrated methods (VQ4DiT, SSVQ) work block by block. A *block* is an element of the
outermost ``nn.ModuleList`` holding selected layers (a transformer block); a selected layer in
no list is its own block. ``calibrate(model)`` runs the model on calibration data while a
:class:`vqlib.quantizers.calibration.CallRecorder` stores each block's inputs and outputs;
then each block's layers are optimised to reproduce the full-precision block's outputs, and
frozen into :class:`vqlib.kernels.VQLinear` layers.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqlib.kernels import VQLinear
from vqlib.quantizers import swap_modules
from vqlib.quantizers.calibration import CallRecorder, float_tensors

from .config import KMeansVQConfig, QuantConfig, RTNConfig, SSVQConfig, VQ4DiTConfig
from .kmeans_vq import kmeans_init, to_vq_linear
from .rtn import RTNLinear
from .ssvq import SignSplitLinear
from .vq4dit import SoftVQLinear

__all__ = ["LayerReport", "QuantReport", "find_blocks", "model_bytes", "quantize_", "select_layers"]

logger = logging.getLogger(__name__)

FilterFn = Callable[[nn.Module, str], bool]


# ---- reports ------------------------------------------------------------------------------


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def model_bytes(model: nn.Module) -> int:
    """Every parameter and buffer of ``model`` in bytes, a tensor shared by several modules counted once."""
    return _tensor_bytes([*model.parameters(), *model.buffers()])


def _stored_bytes(module: nn.Module) -> int:
    """Bytes of a quantized layer's weight as stored (not its bias)."""
    if isinstance(module, VQLinear):
        return round(module.code_size * module.out_features)
    if isinstance(module, RTNLinear):
        return module.nbytes
    return module.weight.numel() * module.weight.element_size()


@dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str
    in_features: int
    out_features: int
    nbytes: int  # the stored weight, every byte counted (codes, codebook, scales, signs); bias excluded

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.in_features * self.out_features)


@dataclass
class QuantReport:
    """What :func:`quantize_` did: per layer and in total, every stored byte counted."""

    method: str
    layers: list[LayerReport] = field(default_factory=list)
    fp_bytes: int = 0  # the whole model before
    model_bytes: int = 0  # the whole model after (kept FP layers, biases, norms, embeddings included)
    config: QuantConfig | None = None

    @property
    def bits_per_weight(self) -> float:
        """Stored bits of the quantized layers' weights over their number of weights."""
        weights = sum(r.in_features * r.out_features for r in self.layers)
        return 8 * sum(r.nbytes for r in self.layers) / weights if weights else float("nan")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def table(self) -> str:
        lines = [f"{'layer':<60} {'kind':<10} {'shape':>12} {'bytes':>10} {'bpw':>7}"]
        for r in self.layers:
            shape = f"{r.out_features}x{r.in_features}"
            lines.append(f"{r.name:<60} {r.kind:<10} {shape:>12} {r.nbytes:>10} {r.bits_per_weight:>7.3f}")
        lines.append(
            f"{'total (quantized layers)':<60} {self.method:<10} {'':>12} {sum(r.nbytes for r in self.layers):>10} "
            f"{self.bits_per_weight:>7.3f}"
        )
        lines.append(f"model bytes: {self.fp_bytes} -> {self.model_bytes}")
        return "\n".join(lines)


# ---- selection -------------------------------------------------------------------------------


def select_layers(model: nn.Module, config: QuantConfig, filter_fn: FilterFn | None = None) -> dict[str, nn.Linear]:
    """The layers ``quantize_`` would replace: ``{first qualified name: nn.Linear}`` in model order."""
    chosen: dict[str, nn.Linear] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not name or id(module) in seen:
            continue
        if filter_fn is None:
            take = type(module) is nn.Linear and not any(fnmatch.fnmatchcase(name, p) for p in config.keep_fp)
        else:
            take = bool(filter_fn(module, name))
            if take and not isinstance(module, nn.Linear):
                raise ValueError(
                    f"filter_fn selected {name!r}, a {type(module).__name__}; vqlib.diffusion quantizes nn.Linear "
                    "layers only: make filter_fn return False for it"
                )
        if take:
            chosen[name] = module
            seen.add(id(module))
    return chosen


def find_blocks(model: nn.Module, names: list[str]) -> list[tuple[str, list[str]]]:
    """Group layer names by block: the element of the outermost ``nn.ModuleList`` above each (or the layer itself).

    Returns ``[(block name, [layer names])]`` in model order.
    """
    modules = dict(model.named_modules())
    blocks: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        block = name
        for i in range(1, len(parts)):
            if isinstance(modules.get(".".join(parts[:i])), nn.ModuleList):
                block = ".".join(parts[: i + 1])
                break
        blocks.setdefault(block, []).append(name)
    return list(blocks.items())


# ---- the entry point ---------------------------------------------------------------------------


def _check_shapes(targets: dict[str, nn.Linear], config: QuantConfig) -> None:
    width, _ = config.resolved()
    what = "group_size" if isinstance(config, RTNConfig) else "vector_size"
    for name, layer in targets.items():
        if layer.in_features % width:
            raise ValueError(
                f"layer {name!r} has in_features {layer.in_features}, which {what} {width} does not divide; "
                f"skip it with filter_fn (e.g. filter_fn=lambda m, name: isinstance(m, nn.Linear) and name != {name!r}) "
                f"or pick a {what} that divides {layer.in_features}"
            )
        if not torch.isfinite(layer.weight).all():
            raise ValueError(f"layer {name!r} has NaN or inf weights; only finite weights can be quantized")


def quantize_(
    model: nn.Module,
    config: QuantConfig,
    calibrate: Callable[[nn.Module], object] | None = None,
    filter_fn: FilterFn | None = None,
) -> QuantReport:
    """Quantize ``model``'s layers in place by ``config``'s method; returns the :class:`QuantReport`.

    Args:
        model: any ``nn.Module`` (a diffusers model gets the ``vqlib`` quantization config attached, so
            ``save_pretrained`` writes the compressed tensors; see :mod:`vqlib.diffusion.plugin`).
        config: :class:`VQ4DiTConfig`, :class:`SSVQConfig`, :class:`KMeansVQConfig` or :class:`RTNConfig`.
        calibrate: ``calibrate(model)`` runs the model it is given on calibration data (needed by VQ4DiT
            and SSVQ; it may be called several times, once per block with ``block_inputs="quantized"``).
        filter_fn: ``filter_fn(module, name) -> bool`` picks the layers (``nn.Linear`` only); default every
            ``nn.Linear`` except names matching ``config.keep_fp``.

    Nothing in ``model`` changes unless every layer was quantized.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_ needs an nn.Module, got {type(model).__name__}")
    if not isinstance(config, QuantConfig):
        raise TypeError(
            f"config must be a vqlib.diffusion config (VQ4DiTConfig, SSVQConfig, KMeansVQConfig, RTNConfig), "
            f"got {type(config).__name__}"
        )
    if calibrate is not None and not callable(calibrate):
        raise TypeError(f"calibrate must be a callable calibrate(model), got {type(calibrate).__name__}")
    if config.needs_calibration and calibrate is None:
        raise ValueError(
            f"{type(config).__name__} calibrates against the full-precision model: pass calibrate=lambda m: ... "
            "that runs the model on calibration data, or use vqlib.diffusion.quantize_pipeline for a diffusion "
            "pipeline (data-free, along its own sampling path); KMeansVQConfig and RTNConfig need no data"
        )
    if not config.needs_calibration and calibrate is not None:
        raise ValueError(f"{type(config).__name__} is data-free and does not use calibrate; drop calibrate=")
    targets = select_layers(model, config, filter_fn)
    if not targets:
        raise ValueError("no layer to quantize: filter_fn (or the default, nn.Linear outside keep_fp) selected none")
    _check_shapes(targets, config)
    fp_bytes = model_bytes(model)

    if isinstance(config, RTNConfig):
        built = {n: RTNLinear.from_linear(m, config.bits, config.group_size) for n, m in targets.items()}
    elif isinstance(config, KMeansVQConfig):
        built = _kmeans(targets, config)
    elif isinstance(config, (VQ4DiTConfig, SSVQConfig)):
        built = _calibrated(model, targets, config, calibrate)
    else:
        raise TypeError(f"no quantize_ implementation for {type(config).__name__}")

    swap_modules(model, lambda name, module: built.get(name), include=list(targets))
    applied = dataclasses.replace(config)
    applied.modules = {name: layout_of(built[name]) for name in targets}
    report = QuantReport(
        config.method,
        [LayerReport(n, config.method, m.in_features, m.out_features, _stored_bytes(built[n])) for n, m in targets.items()],
        fp_bytes,
        model_bytes(model),
        applied,
    )
    if _is_diffusers_model(model):
        from .plugin import attach

        attach(model, applied)
    return report


def layout_of(module: nn.Module) -> dict:
    """The JSON layout the diffusers plugin needs to rebuild a quantized layer before its tensors load."""
    if isinstance(module, VQLinear):
        return {
            "format": "vq", "vector_size": module.vector_size, "codebook_size": module.codebook_size,
            "num_groups": module.num_groups, "scales": module.scales is not None, "signs": module.signs is not None,
            "bias": module.bias is not None,
        }  # fmt: skip
    if isinstance(module, RTNLinear):
        return {"format": "rtn", "bits": module.bits, "group_size": module.group_size, "bias": module.bias is not None}
    raise TypeError(f"no stored layout for {type(module).__name__}")


def _is_diffusers_model(model: nn.Module) -> bool:
    try:
        from diffusers import ModelMixin
    except ImportError:
        return False
    return isinstance(model, ModelMixin)


# ---- methods ---------------------------------------------------------------------------------


def _kmeans(targets: dict[str, nn.Linear], config: KMeansVQConfig) -> dict[str, nn.Module]:
    v, k = config.resolved()
    generator = torch.Generator().manual_seed(config.seed)
    out = {}
    for name, layer in targets.items():
        init = kmeans_init(layer.weight, v, k, scales=config.scales, signs=config.signs, iters=config.kmeans_iters,
                           max_samples=config.max_samples, generator=generator)  # fmt: skip
        out[name] = to_vq_linear(layer, init.codebook, init.codes, init.scales, init.neg,
                                 config.codebook_dtype, config.scales_dtype)  # fmt: skip
    return out


def _soft_layer(layer: nn.Linear, config, generator) -> nn.Module:
    v, k = config.resolved()
    signs = isinstance(config, SSVQConfig)
    init = kmeans_init(layer.weight, v, k, scales=config.scales, signs=signs, iters=config.kmeans_iters,
                       max_samples=config.max_samples, generator=generator)  # fmt: skip
    if signs:
        return SignSplitLinear(layer, init, config.flip_momentum, config.freeze_start, config.freeze_end)
    return SoftVQLinear(layer, init, config.candidates, config.freeze_threshold, config.harden_at)


def _record(model: nn.Module, calibrate, names: list[str], outputs: bool) -> dict:
    with torch.no_grad(), CallRecorder(model, names, outputs=outputs) as rec:
        calibrate(model)
    if not any(rec.calls.values()):
        raise ValueError(
            "calibrate(model) never ran the model: it must call the model it is given (e.g. "
            "calibrate=lambda m: [m(x) for x in batches]), not another object or a copy made before"
        )
    return rec.calls


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _block_loss(output, target) -> torch.Tensor:
    outs, tgts = float_tensors(output), float_tensors(target)
    if len(outs) != len(tgts) or not outs:
        raise RuntimeError("a block returned different outputs during calibration than when it was recorded")
    losses = [F.mse_loss(o.float(), t.float()) / t.float().pow(2).mean().clamp_min(1e-12) for o, t in zip(outs, tgts)]
    return torch.stack(losses).mean()


def _calibrated(model: nn.Module, targets: dict[str, nn.Linear], config, calibrate) -> dict[str, nn.Module]:
    if config.block_inputs not in ("quantized", "fp"):
        raise ValueError(f"block_inputs must be 'quantized' or 'fp', got {config.block_inputs!r}")
    generator = torch.Generator().manual_seed(config.seed)
    softs = {name: _soft_layer(layer, config, generator) for name, layer in targets.items()}
    blocks = find_blocks(model, list(targets))
    fp_calls = _record(model, calibrate, [b for b, _ in blocks], outputs=True)
    work = copy.deepcopy(model) if config.block_inputs == "quantized" else None
    built: dict[str, nn.Module] = {}
    for i, (block_name, names) in enumerate(blocks):
        calls = fp_calls[block_name]
        if not calls:
            warnings.warn(
                f"block {block_name!r} never ran during calibrate(model); its layers {names} keep their "
                "uncalibrated k-means assignment",
                stacklevel=3,
            )
            inputs = []
        elif work is not None and i > 0:
            inputs = _record(work, calibrate, [block_name], outputs=False)[block_name]
            if len(inputs) != len(calls):
                raise ValueError(
                    f"calibrate ran block {block_name!r} {len(calls)} times on the full-precision model and "
                    f"{len(inputs)} times on the partly quantized one; it must run the same data each time"
                )
        else:
            inputs = calls
        if block_name in softs:  # a layer in no list is its own block
            block = softs[block_name]
        elif work is not None:
            for name in names:
                _set(work, name, softs[name])
            block = work.get_submodule(block_name)
        else:
            block = copy.deepcopy(model.get_submodule(block_name))
            for name in names:
                _set(block, name[len(block_name) + 1 :], softs[name])
        if inputs:
            first, last = _optimise(block, [softs[n] for n in names], inputs, [c.output for c in calls], config)
            logger.info("%s: block %s, relative output error %.4g -> %.4g", config.method, block_name, first, last)
        for name in names:
            built[name] = softs[name].to_module(config)
            if work is not None:
                _set(work, name, built[name])
    return built


def _optimise(block: nn.Module, layers: list[nn.Module], inputs, targets, config) -> tuple[float, float]:
    """Calibrate ``layers`` inside ``block``; returns the mean relative output error of the first and last pass."""
    mode = block.training
    block.eval()
    own = {id(p) for layer in layers for g in layer.param_groups(config) for p in g["params"]}
    flags = [(p, p.requires_grad) for p in block.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) in own)
    groups = [g for layer in layers for g in layer.param_groups(config)]
    opt = torch.optim.Adam(groups)
    losses = []
    try:
        with torch.enable_grad():
            for step in range(config.steps):
                call = inputs[step % len(inputs)]
                out = block(*call.args, **call.kwargs)
                loss = _block_loss(out, targets[step % len(inputs)])
                losses.append(loss.item())
                reg = sum(layer.regulariser() for layer in layers)
                weight = getattr(config, "soft_weight", 0.0)
                opt.zero_grad(set_to_none=True)
                (loss + weight * reg).backward()
                opt.step()
                for layer in layers:
                    layer.after_step(step, config.steps)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        block.train(mode)
    n = min(len(inputs), len(losses))
    return (sum(losses[:n]) / n, sum(losses[-n:]) / n) if n else (float("nan"), float("nan"))
