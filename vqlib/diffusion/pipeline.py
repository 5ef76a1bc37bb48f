"""``quantize_pipeline``: VQ4DiT's zero-data calibration along the pipeline's own sampling path.

VQ4DiT needs no calibration set (arXiv 2408.17131, §3.3): the full-precision pipeline samples
from its own noise for the given class labels or prompts; every call of the denoiser along
that path (its inputs at every timestep, guidance batch included) is recorded, and the
denoiser is then calibrated by replaying exactly those calls, each block matching the
full-precision block's outputs (:func:`vqlib.diffusion.quantize_`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from vqlib.quantizers.calibration import CallRecorder

from .config import QuantConfig
from .quantize import QuantReport, quantize_

__all__ = ["quantize_pipeline", "record_denoiser_calls"]


def _component(pipe, component: str) -> nn.Module:
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"expected a diffusers DiffusionPipeline, got {type(pipe).__name__}")
    model = components.get(component)
    if not isinstance(model, nn.Module):
        have = sorted(k for k, v in components.items() if isinstance(v, nn.Module))
        raise ValueError(
            f"the pipeline {type(pipe).__name__} has no {component!r} model component (its model components: "
            f"{have}); pass component= naming its denoiser"
        )
    return model


@torch.no_grad()
def record_denoiser_calls(pipe, component: str = "transformer", **call_kwargs):
    """Run ``pipe(**call_kwargs)`` in full precision; return the denoiser's recorded calls and the pipeline output."""
    model = _component(pipe, component)
    with CallRecorder(model, [""], outputs=False) as rec:
        output = pipe(**call_kwargs)
    if not rec.calls[""]:
        raise ValueError(f"the pipeline never called its {component!r} component while sampling")
    return rec.calls[""], output


def quantize_pipeline(
    pipe,
    config: QuantConfig,
    *,
    prompts: Sequence[str] | None = None,
    class_labels: Sequence[int] | None = None,
    num_inference_steps: int = 25,
    seed: int = 0,
    component: str = "transformer",
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    **pipe_kwargs,
) -> QuantReport:
    """Quantize ``pipe``'s denoiser in place, calibrated along the FP pipeline's own sampling path.

    Args:
        pipe: a diffusers ``DiffusionPipeline`` (or one following its conventions: ``components``,
            ``__call__(class_labels=... | prompt=..., num_inference_steps=..., generator=...)``).
        config: the method (:class:`VQ4DiTConfig`, :class:`SSVQConfig`; data-free ones work too).
        prompts / class_labels: what the FP pipeline samples for calibration (exactly one of them).
        num_inference_steps: sampling steps of the calibration run (one recorded call per step).
        seed: seeds the generator passed to the pipeline (the FP noise).
        component: the denoiser's name in ``pipe.components``.
        pipe_kwargs: further arguments for ``pipe(...)`` (e.g. ``guidance_scale``).
    """
    model = _component(pipe, component)
    if (prompts is None) == (class_labels is None):
        raise ValueError("pass exactly one of prompts= (text-conditional) or class_labels= (class-conditional)")
    if not config.needs_calibration:
        return quantize_(model, config, filter_fn=filter_fn)
    kwargs = dict(pipe_kwargs, num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed))
    if prompts is not None:
        kwargs["prompt"] = list(prompts)
    else:
        kwargs["class_labels"] = list(class_labels)
    calls, _ = record_denoiser_calls(pipe, component, **kwargs)

    def replay(m: nn.Module) -> None:
        for call in calls:
            m(*call.args, **call.kwargs)

    return quantize_(model, config, calibrate=replay, filter_fn=filter_fn)
