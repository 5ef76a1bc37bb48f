"""``ARModule``: the LightningModule that trains a :class:`LlamaGen` on pre-tokenised images (with REPA).

Loss ``Σ_factors CE + repa_weight · L_REPA`` (see :mod:`vqlib.generation.repa`). AdamW (weight decay on
matrices only, as LlamaGen), linear warm-up then cosine decay to ``min_lr_ratio·lr`` over the trainer's
steps, gradient clipping, an EMA copy of the generator used for validation, sampling and export. The frozen
REPA encoder is held outside the module's state (never in checkpoints; rebuilt from the config on resume).
Precision (bf16-mixed), DDP, checkpoints and resume are the Trainer's.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn as nn

from ..io import atomic_write
from .llamagen import LlamaGen
from .repa import DINOv2Encoder, repa_loss, resample_to_grid

__all__ = ["ARModule", "ExportGenerator"]


class ARModule(pl.LightningModule):
    """Train a :class:`LlamaGen`.

    Args:
        generator: the model (its ``repa_dim`` must equal the encoder's width when ``repa_weight > 0``).
        encoder: REPA's frozen target (images → ``(B, N, C)``); ``None`` with ``repa_weight > 0`` loads
            timm's DINOv2 ViT-B/14 (fails loudly without its weights).
        repa_weight: λ of the REPA loss (2.0 in LlamaGen-REPA); 0 trains without REPA.
        lr, betas, weight_decay: AdamW (LlamaGen: 1e-4, (0.9, 0.95), 0.05).
        warmup_steps, min_lr_ratio: warm-up then cosine to ``min_lr_ratio·lr`` at the last step.
        ema_decay: EMA of the weights (0 disables); grad_clip: max gradient norm (0 disables).
        sample_cfg: the guidance scale of the sample grids (ignored without class dropout).
    """

    def __init__(
        self,
        generator: LlamaGen,
        encoder: nn.Module | None = None,
        repa_weight: float = 2.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        ema_decay: float = 0.9999,
        grad_clip: float = 1.0,
        sample_cfg: float = 4.0,
    ):
        super().__init__()
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if repa_weight < 0:
            raise ValueError(f"repa_weight must be >= 0, got {repa_weight}")
        if repa_weight > 0:
            if generator.repa_dim is None:
                raise ValueError("repa_weight > 0 needs a generator with a REPA projector: set generator repa_dim to the encoder's width")
            if encoder is None:
                encoder = DINOv2Encoder()
            width = getattr(encoder, "feature_dim", None)
            if width is not None and width != generator.repa_dim:
                raise ValueError(f"the encoder's features are {width}-d but the generator's repa_dim is {generator.repa_dim}: set repa_dim: {width}")
        self.save_hyperparameters(ignore=["generator", "encoder"])
        self.generator = generator
        self.ema = copy.deepcopy(generator).requires_grad_(False) if ema_decay > 0 else None
        # outside the module tree: frozen, never checkpointed, not wrapped by DDP
        object.__setattr__(self, "encoder", encoder.requires_grad_(False).eval() if encoder is not None and repa_weight > 0 else None)
        self.register_buffer("step", torch.tensor(0, dtype=torch.long))

    @property
    def eval_model(self) -> LlamaGen:
        return self.ema if self.ema is not None else self.generator

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "tokenizer"):
            self.generator.check_tokenizer(dm.tokenizer)

    def on_fit_start(self) -> None:
        if self.encoder is not None:
            self.encoder.to(self.device)

    # ---- optimisation ------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for p in self.generator.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.generator.parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, betas=tuple(hp.betas),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, hp.warmup_steps, total, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def losses(self, model: LlamaGen, batch) -> dict[str, torch.Tensor]:
        tokens, labels, images = batch
        digits = model.to_digits(tokens)
        out = {}
        if self.encoder is not None and model.training:
            logits, projected = model(digits, labels, repa=True)
            target = resample_to_grid(self.encoder(images), model.grid, self.encoder)
            out["repa_loss"], out["repa_cos"] = repa_loss(projected, target)
        else:
            logits = model(digits, labels)
        out["ce"] = model.loss(logits, digits)
        out["loss"] = out["ce"] + self.hparams.repa_weight * out["repa_loss"] if "repa_loss" in out else out["ce"]
        return out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = self.losses(self.generator, batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=True)
        return out["loss"]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._update_ema()
        self.step += 1

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = min(self.hparams.ema_decay, (1 + int(self.step)) / (10 + int(self.step)))
        for e, p in zip(self.ema.parameters(), self.generator.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1 - decay)

    # ---- validation and samples ----------------------------------------------------

    def validation_step(self, batch, batch_idx: int) -> None:
        out = self.losses(self.eval_model, batch)
        self.log("val/ce", out["ce"], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "tokenizer"):
            return
        log_dir = Path(self.trainer.log_dir or ".")
        save_samples(self.eval_model, dm.tokenizer.to(self.device), log_dir / "samples" / f"step{int(self.step):07d}.png", self.hparams.sample_cfg)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def save_samples(model: LlamaGen, tokenizer, path: Path, cfg: float | None, per_class: int = 2, seed: int = 0) -> None:
    """A grid of ``per_class`` samples for each of the first ten classes (one row per sample round)."""
    from ..tokenizers.callbacks import save_grid

    classes = list(range(min(10, model.num_classes))) * per_class
    cfg = cfg if model.class_dropout > 0 else None
    _, images = model.generate(classes, cfg, tokenizer=tokenizer, seed=seed)
    save_grid(images, path, rows=per_class)


class ExportGenerator(pl.Callback):
    """At the end of ``fit``: ``save_pretrained`` of the EMA generator, ``metrics.json`` and ``samples.png``."""

    def __init__(self, dirpath: str = "runs/generator"):
        super().__init__()
        self.dirpath = dirpath

    def on_fit_end(self, trainer: pl.Trainer, module: ARModule) -> None:
        if not trainer.is_global_zero:
            return
        out = Path(self.dirpath)
        model = module.eval_model.eval()
        model.save_pretrained(out / "generator")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["step"] = int(module.step)
        atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "tokenizer"):
            save_samples(model, dm.tokenizer.to(module.device), out / "samples.png", module.hparams.sample_cfg)
        print(f"exported the generator to {out / 'generator'}")
