"""Record what modules see while a model runs on calibration data: inputs, outputs, Hessian statistics.

Post-training quantization methods (GPTQ, VQ4DiT, SSVQ, the PTQ family) calibrate each
layer or block against what the full-precision model computes on real inputs. A
:class:`CallRecorder` hooks named submodules of any ``nn.Module``; while it is active, every
call of a hooked module stores a :class:`Call` (its positional and keyword arguments and its
output, detached) and, for ``nn.Linear`` modules asked for it, accumulates the input
second-moment ``H = Σ xᵀx`` (the Hessian of the layer's squared output error, up to a factor
of 2) over every input row::

    with CallRecorder(model, ["blocks.0", "blocks.1"], hessian=["head"]) as rec:
        model(x)
    rec.calls["blocks.0"][0].args, rec.hessians["head"], rec.rows["head"]

Hooks are removed on exit, also after an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = ["Call", "CallRecorder", "detach_tree", "float_tensors"]


def detach_tree(value: Any) -> Any:
    """``value`` with every tensor detached (tuples, lists and dicts walked; other objects kept as they are)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(detach_tree(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(detach_tree(v) for v in value)
    if isinstance(value, dict):
        out = {k: detach_tree(v) for k, v in value.items()}
        try:
            return type(value)(out)
        except TypeError:  # a dict subclass that cannot be rebuilt from a dict
            return out
    return value


def float_tensors(value: Any) -> list[torch.Tensor]:
    """Every floating-point tensor in ``value`` (tuples, lists, dicts walked in order)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in float_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in float_tensors(v)]
    return []


@dataclass
class Call:
    """One call of a recorded module: ``module(*args, **kwargs) -> output`` (tensors detached)."""

    args: tuple
    kwargs: dict
    output: Any = None


@dataclass
class CallRecorder:
    """Context manager recording the calls of ``names`` and the input Hessians of the linear layers in ``hessian``.

    Args:
        model: any ``nn.Module``.
        names: qualified names (as in ``named_modules``) whose calls are stored.
        hessian: names of ``nn.Linear`` modules whose input ``Σ xᵀx`` (fp32, ``(in, in)``) is accumulated.
        outputs: also store each call's output (False keeps only the inputs).
    """

    model: nn.Module
    names: Iterable[str] = ()
    hessian: Iterable[str] = ()
    outputs: bool = True
    calls: dict[str, list[Call]] = field(default_factory=dict, init=False)
    hessians: dict[str, torch.Tensor] = field(default_factory=dict, init=False)
    rows: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.names, self.hessian = list(self.names), list(self.hessian)
        self._handles: list = []
        modules = dict(self.model.named_modules())
        for name in (*self.names, *self.hessian):
            if name not in modules:
                raise ValueError(f"{name!r} is no submodule of the model (names as in model.named_modules())")
        for name in self.hessian:
            if not isinstance(modules[name], nn.Linear):
                raise ValueError(f"Hessian statistics need an nn.Linear, {name!r} is a {type(modules[name]).__name__}")
        self._modules = modules

    @property
    def total_calls(self) -> int:
        return sum(len(c) for c in self.calls.values()) + sum(self.rows.values())

    def __enter__(self) -> CallRecorder:
        for name in self.names:
            self.calls[name] = []
            self._handles.append(
                self._modules[name].register_forward_pre_hook(self._pre_hook(name), with_kwargs=True)
            )
            if self.outputs:
                self._handles.append(self._modules[name].register_forward_hook(self._post_hook(name)))
        for name in self.hessian:
            self.rows[name] = 0
            self._handles.append(self._modules[name].register_forward_pre_hook(self._hessian_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre_hook(self, name: str):
        def hook(module, args, kwargs):
            self.calls[name].append(Call(detach_tree(tuple(args)), detach_tree(dict(kwargs))))

        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output):
            self.calls[name][-1].output = detach_tree(output)

        return hook

    def _hessian_hook(self, name: str):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            h = x.T @ x
            self.hessians[name] = h if name not in self.hessians else self.hessians[name] + h
            self.rows[name] += x.shape[0]

        return hook
