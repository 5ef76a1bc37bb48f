"""The diffusers plugin: ``import vqlib.diffusion`` registers a ``vqlib`` quantization backend.

diffusers (tested: 0.42) has no public registration API; like the ``sdnq`` package, vqlib adds
itself to ``AUTO_QUANTIZER_MAPPING`` and ``AUTO_QUANTIZATION_CONFIG_MAPPING`` in
``diffusers.quantizers.auto``. Then:

* a model quantized by :func:`vqlib.diffusion.quantize_` carries ``hf_quantizer`` and
  ``config.quantization_config`` (``quant_method: "vqlib"``, the method's settings, the layout
  of every quantized layer in ``modules``); ``save_pretrained`` writes the compressed tensors
  (safetensors) with a SHA-256 of each quantized layer's tensors in the file's metadata;
* ``from_pretrained`` reads the config, builds :class:`vqlib.kernels.VQLinear` (or
  :class:`~vqlib.diffusion.rtn.RTNLinear`) shells whose state-dict keys and shapes match the
  checkpoint *before* the weights load (diffusers' loader skips keys the model lacks), loads
  the stored tensors exactly as written (no dtype cast), checks every checksum and rebuilds
  each layer from its tensors;
* ``PipelineQuantizationConfig(quant_mapping={"transformer": KMeansVQConfig(...)})`` quantizes
  data-free methods while loading; a method that needs calibration (VQ4DiT, SSVQ) is refused
  with an error pointing to :func:`vqlib.diffusion.quantize_pipeline`.

Without ``import vqlib.diffusion`` a vqlib checkpoint fails in diffusers' own check
("Unknown quantization type, got vqlib"), never with silently wrong weights.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn as nn
from diffusers.quantizers import auto
from diffusers.quantizers.base import DiffusersQuantizer

from vqlib.kernels import VQLinear
from vqlib.quantizers import swap_modules

from .config import FORMAT_VERSION, QuantConfig, VQLibMethod
from .rtn import RTNLinear

__all__ = ["TESTED_DIFFUSERS", "VQLibQuantizer", "attach", "register", "tensor_checksum"]

#: the diffusers versions the plugin's tests cover (the ``diffusion`` extra pins the same range)
TESTED_DIFFUSERS = ">=0.42,<0.43"
_METADATA_KEY = "vqlib_checksums"


def tensor_checksum(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = t.detach().contiguous().cpu()
    digest = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _shell(linear: nn.Linear, spec: dict, name: str) -> nn.Module:
    """An empty quantized layer of the stored layout (meta tensors where the model's are)."""
    device = linear.weight.device
    bias = spec.get("bias", linear.bias is not None)
    try:
        if spec.get("format") == "vq":
            return VQLinear(
                linear.in_features, linear.out_features, spec["vector_size"], spec["codebook_size"],
                spec.get("num_groups", 1), bias=bias, scales=spec["scales"], signs=spec["signs"], device=device,
            )  # fmt: skip
        if spec.get("format") == "rtn":
            return RTNLinear(linear.in_features, linear.out_features, spec["bits"], spec["group_size"], bias, device)
    except (KeyError, ValueError) as err:
        raise ValueError(f"quantization_config.modules[{name!r}] = {spec} does not fit the layer: {err}") from None
    raise ValueError(f"quantization_config.modules[{name!r}] has unknown format {spec.get('format')!r}")


def _rebuild(shell: nn.Module, spec: dict) -> nn.Module:
    """A fitted layer made from the loaded tensors alone, each kept exactly as stored."""
    state = dict(shell.state_dict())
    if isinstance(shell, VQLinear):
        layer = VQLinear.from_state_dict(state)
        layer.validate()
        return layer
    layer = RTNLinear(shell.in_features, shell.out_features, shell.bits, shell.group_size, shell.bias is not None,
                      device=shell.qweight.device)  # fmt: skip
    for key, value in state.items():
        if getattr(layer, key).shape != value.shape or getattr(layer, key).dtype != value.dtype and key != "bias":
            raise ValueError(f"stored {key} of shape {tuple(value.shape)} {value.dtype} does not fit {layer}")
        setattr(layer, key, value)
    return layer


class VQLibQuantizer(DiffusersQuantizer):
    """diffusers' side of vqlib: loads (and for data-free methods, makes) vqlib-quantized models."""

    requires_calibration = False
    required_packages = None

    def __init__(self, quantization_config: QuantConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        if not isinstance(quantization_config, QuantConfig):
            raise TypeError(f"the vqlib backend needs a vqlib.diffusion config, got {type(quantization_config).__name__}")
        if not self.pre_quantized and quantization_config.needs_calibration:
            raise ValueError(
                f"{type(quantization_config).__name__} calibrates against the full-precision model and cannot "
                "quantize while loading: load the pipeline in full precision, then call "
                "vqlib.diffusion.quantize_pipeline(pipe, config, class_labels=... or prompts=...); "
                "KMeansVQConfig and RTNConfig quantize while loading"
            )
        if self.pre_quantized and not isinstance(quantization_config.modules, dict):
            raise ValueError(
                "this checkpoint's quantization_config (quant_method 'vqlib') has no 'modules' layout; it was not "
                "written by vqlib.diffusion's save path"
            )
        self._checksums: dict[str, str] | None = None

    # -- loading a quantized checkpoint
    def maybe_update_loaded_keys(self, loaded_keys: list[str], checkpoint_files: list[str]) -> list[str]:
        if self.pre_quantized:
            from safetensors import safe_open

            sums: dict[str, str] = {}
            for path in checkpoint_files or ():
                if not str(path).endswith(".safetensors"):
                    raise ValueError(f"vqlib checkpoints are safetensors files; {path} is not one")
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                if _METADATA_KEY not in meta:
                    raise ValueError(f"{path} has no vqlib checksums in its metadata; it was not written by vqlib")
                sums.update(json.loads(meta[_METADATA_KEY]))
            self._checksums = sums
        return loaded_keys

    def _process_model_before_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:
            return model
        layout = self.quantization_config.modules
        modules = dict(model.named_modules())
        wrong = [n for n in layout if not isinstance(modules.get(n), nn.Linear)]
        if wrong:
            raise ValueError(
                f"quantization_config.modules names layers this {type(model).__name__} has no nn.Linear for: "
                f"{wrong[:5]}; the checkpoint belongs to another model"
            )
        swap_modules(model, lambda name, m: _shell(m, layout[name], name) if name in layout else None,
                     include=list(layout))  # fmt: skip
        return model

    def _owner(self, param_name: str) -> str | None:
        module, _, _ = param_name.rpartition(".")
        return module if module in (self.quantization_config.modules or {}) else None

    def check_if_quantized_param(self, model, param_value, param_name, state_dict, **kwargs) -> bool:
        return self.pre_quantized and self._owner(param_name) is not None

    def check_quantized_param_shape(self, param_name, current_param, loaded_param):
        if tuple(current_param.shape) != tuple(loaded_param.shape):
            raise ValueError(
                f"{param_name} has shape {tuple(loaded_param.shape)} in the checkpoint, but its layout in "
                f"quantization_config gives {tuple(current_param.shape)}; the checkpoint is inconsistent"
            )
        return True

    def create_quantized_param(self, model, param_value, param_name, target_device, state_dict, unexpected_keys=None,
                               **kwargs):  # fmt: skip
        module_name, _, attr = param_name.rpartition(".")
        module = model.get_submodule(module_name)
        stored = state_dict[param_name]  # as written: diffusers may have cast param_value to torch_dtype
        current = getattr(module, attr, None)
        if not isinstance(current, torch.Tensor) or tuple(current.shape) != tuple(stored.shape):
            self.check_quantized_param_shape(param_name, current, stored)
        setattr(module, attr, stored.to(target_device if target_device is not None else "cpu"))

    def _process_model_after_weight_loading(self, model, **kwargs):
        if not self.pre_quantized:  # a data-free method, quantizing the weights just loaded
            from .quantize import quantize_

            report = quantize_(model, self.quantization_config)
            self.quantization_config = report.config
            self.pre_quantized = True
            return model
        layout = self.quantization_config.modules
        checksums = self._checksums or {}
        rebuilt = {}
        for name in layout:
            shell = model.get_submodule(name)
            for key, t in shell.state_dict().items():
                full = f"{name}.{key}"
                if t.device.type == "meta":
                    raise ValueError(f"the checkpoint lacks {full!r}, which layer {name!r} stores; it is incomplete")
                if full not in checksums:
                    raise ValueError(f"the checkpoint has no checksum for {full!r}; it was not written by vqlib")
                if tensor_checksum(t) != checksums[full]:
                    raise ValueError(
                        f"tensor {full!r} does not match its SHA-256 checksum: the checkpoint file was altered or "
                        "corrupted; re-save it from the quantized model"
                    )
            rebuilt[name] = _rebuild(shell, layout[name])
        swap_modules(model, lambda name, m: rebuilt.get(name), include=list(layout))
        model.register_to_config(quantization_config=self.quantization_config)
        return model

    # -- saving
    def get_state_dict_and_metadata(self, state_dict, safe_serialization: bool = False):
        if not safe_serialization:
            raise ValueError("vqlib-quantized models are saved as safetensors only: use safe_serialization=True")
        layout = self.quantization_config.modules or {}
        sums = {k: tensor_checksum(v) for k, v in state_dict.items() if k.rpartition(".")[0] in layout}
        return state_dict, {_METADATA_KEY: json.dumps(sums, sort_keys=True), "vqlib_format_version": str(FORMAT_VERSION)}

    def _dequantize(self, model):
        layers = {}
        for name in self.quantization_config.modules or {}:
            q = model.get_submodule(name)
            w = q.dequantize() if isinstance(q, (VQLinear, RTNLinear)) else None
            if w is None:
                continue
            dense = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None, device=w.device)
            with torch.no_grad():
                dense.weight.copy_(w.float())
                if q.bias is not None:
                    dense.bias.copy_(q.bias.float())
            layers[name] = dense
        swap_modules(model, lambda name, m: layers.get(name), include=list(layers))
        return model

    @property
    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def attach(model: nn.Module, config: QuantConfig) -> None:
    """Mark a diffusers model quantized by :func:`quantize_` so ``save_pretrained`` writes the vqlib format."""
    model.hf_quantizer = VQLibQuantizer(config, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = VQLibMethod.VQLIB
    model.register_to_config(quantization_config=config)


def register() -> None:
    """Add the ``vqlib`` backend to diffusers' quantizer mappings (idempotent)."""
    auto.AUTO_QUANTIZER_MAPPING[VQLibMethod.VQLIB.value] = VQLibQuantizer
    auto.AUTO_QUANTIZATION_CONFIG_MAPPING[VQLibMethod.VQLIB.value] = QuantConfig
