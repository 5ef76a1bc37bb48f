"""Lightning callbacks: export the (EMA) tokenizer and write a reconstruction grid; plain progress lines."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from ..io import atomic_write
from .images import save_grid


class ExportTokenizer(pl.Callback):
    """At the end of ``fit``, whatever stopped it (``max_steps``, ``max_time``, early stopping):
    ``save_pretrained`` of the EMA tokenizer, ``metrics.json`` and ``recon.png``.

    The metrics are those of the exported weights: when the last validation ran
    at an earlier step (or never), the held-out set is validated once more here.
    """

    def __init__(self, dirpath: str = "runs/export", num_images: int = 8):
        super().__init__()
        self.dirpath, self.num_images = dirpath, num_images
        self._validated_step: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, module) -> None:
        if not trainer.sanity_checking:
            self._validated_step = int(module.step)

    def on_fit_end(self, trainer: pl.Trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        out = Path(self.dirpath)
        model = module.eval_model.eval()
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        if self._validated_step == int(module.step) or loader is None:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        else:
            metrics = {f"val/{k}": float(v) for k, v in module.evaluate(loader).items()}
        metrics["step"] = int(module.step)
        metrics.update(stop_reason(trainer))
        model.save_pretrained(out / "tokenizer")
        atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
        if loader is not None:
            batch = next(iter(loader))[: self.num_images].to(module.device)
            with torch.no_grad():
                recon = model(batch)[0].clamp(-1, 1)
            save_grid(torch.cat([batch, recon]), out / "recon.png", rows=2)
        print(summary_table(metrics, model, out), flush=True)


def _timer(trainer: pl.Trainer):
    from lightning.pytorch.callbacks import Timer

    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


def stop_reason(trainer: pl.Trainer) -> dict:
    """``train_seconds`` (when a time budget was set) and ``stopped_by``: "max_time", "max_steps" or "other"."""
    timer = _timer(trainer)
    info: dict = {}
    if timer is not None and timer.time_remaining() is not None:
        info["train_seconds"] = round(timer.time_elapsed(), 1)
        info["max_seconds"] = round(timer.time_remaining() + timer.time_elapsed(), 1)
    # max_steps first: a run that reached it was stopped by it, even if validation then ran past the budget
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        info["stopped_by"] = "max_steps"
    elif "max_seconds" in info and info["train_seconds"] >= info["max_seconds"]:
        info["stopped_by"] = "max_time"
    else:
        info["stopped_by"] = "other"
    return info


class PrintProgress(pl.Callback):
    """Plain progress lines every ``every_n_steps`` batches (default: the trainer's ``log_every_n_steps``), for
    logs where a live progress bar writes nothing: ``step 100/1500  loss 0.0312  2.21 steps/s  ETA 8m 40s``.
    The ETA is the earlier of ``max_steps`` at the current rate and the end of the ``max_time`` budget.
    Validation results get a line too."""

    def __init__(self, every_n_steps: int | None = None, stream=None):
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._last: tuple[int, float] | None = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_train_start(self, trainer: pl.Trainer, module) -> None:
        self._last = (trainer.global_step, time.monotonic())

    def on_train_batch_end(self, trainer: pl.Trainer, module, outputs, batch, batch_idx: int) -> None:
        step = _steps(trainer, module)
        every = self.every_n_steps or max(trainer.log_every_n_steps, 1)
        if not trainer.is_global_zero or step % every or self._last is None:
            return
        # rates and max_steps in Lightning's optimiser steps (two per batch once a GAN discriminator trains)
        now, done = time.monotonic(), trainer.global_step
        rate = (done - self._last[0]) / max(now - self._last[1], 1e-9)
        per_batch = done / step if step else 1.0
        self._last = (done, now)
        limited = trainer.max_steps is not None and trainer.max_steps > 0
        parts = [f"step {step}" + (f"/{trainer.max_steps}" if limited and done == step else "")]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"{rate / per_batch:.2f} steps/s")
        eta = []
        if limited and rate > 0:
            eta.append((trainer.max_steps - done) / rate)
        timer = _timer(trainer)
        if timer is not None and timer.time_remaining() is not None:
            eta.append(max(timer.time_remaining(), 0.0))
        if eta:
            parts.append(f"ETA {_duration(min(eta))}")
        self._print("  ".join(parts))

    def on_validation_end(self, trainer: pl.Trainer, module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = [f"{k.removeprefix('val/')} {float(metrics[k]):.4g}" for k in ("val/psnr", "val/ssim", "val/rfid") if k in metrics]
        self._print(f"validation at step {_steps(trainer, module)}: " + "  ".join(shown))
        if self._last is not None:  # validation time is not training speed
            self._last = (trainer.global_step, time.monotonic())


def _steps(trainer: pl.Trainer, module) -> int:
    """Batches trained: the module's own counter when it has one (Lightning's counts optimiser steps)."""
    step = getattr(module, "step", None)
    return int(step) if isinstance(step, torch.Tensor) else trainer.global_step


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def summary_table(metrics: dict, model, out: Path) -> str:
    q = model.quantizer
    rows = [
        ("quantizer", f"{type(q).__name__} (K={q.codebook_size}, {q.bits_per_index:.2f} bits/token)"),
        ("steps", _steps_row(metrics)),
        ("PSNR (dB)", f"{metrics.get('val/psnr', float('nan')):.2f}"),
        ("SSIM", f"{metrics.get('val/ssim', float('nan')):.4f}"),
        ("codebook usage", f"{metrics.get('val/usage', float('nan')):.4f}"),
        ("perplexity", f"{metrics.get('val/perplexity', float('nan')):.1f}"),
        ("bits per pixel", f"{metrics.get('val/bpp', float('nan')):.4f}"),
        ("rFID", f"{metrics['val/rfid']:.2f} (FID Inception, {int(metrics['val/rfid_n'])} crops)" if "val/rfid" in metrics else "not computed"),
        ("exported to", str(out / "tokenizer")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", "validation (held-out images)", *[f"  {k.ljust(width)}  {v}" for k, v in rows], ""])


def _steps_row(metrics: dict) -> str:
    text = str(metrics.get("step"))
    if metrics.get("stopped_by") == "max_time":
        text += f" (stopped by the time budget, max_time {_duration(metrics['max_seconds'])}, after {_duration(metrics['train_seconds'])})"
    elif metrics.get("stopped_by") == "max_steps":
        text += " (max_steps reached" + (f" in {_duration(metrics['train_seconds'])})" if "train_seconds" in metrics else ")")
    return text
