import copy
import warnings

import lightning.pytorch as pl
import pytest
import torch

from vqlib.tokenizers.data import SkimageDataModule
from vqlib.tokenizers.module import TokenizerModule

from .conftest import tiny_tokenizer


def make_trainer(tmp_path, max_steps, **kw):
    kw.setdefault("limit_val_batches", 2)
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kw,
    )  # fmt: skip


def small_data():
    return SkimageDataModule(size=32, batch_size=4, crops_per_epoch=64, train_images=("camera", "coins"), val_images=("clock",))


def test_steps_discriminator_start_and_ema(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = TokenizerModule(tiny_tokenizer("vq"), lr=1e-3, disc_start=3, perceptual_weight=0.0, ema_decay=0.9, disc_layers=2)
    d0 = [p.clone() for p in module.discriminator.parameters()]
    trainer = make_trainer(tmp_path, 2, val_check_interval=2, check_val_every_n_epoch=None)
    trainer.fit(module, datamodule=small_data())
    assert int(module.step) == 2
    # with two optimisers Lightning's global_step counts optimiser steps; ours counts batches
    assert all(torch.equal(a, b) for a, b in zip(d0, module.discriminator.parameters())), "no D update before disc_start"
    trainer = make_trainer(tmp_path, 8)  # a new trainer: 8 optimiser steps = 4 more batches
    trainer.fit(module, datamodule=small_data())
    # batch 2 steps only the generator (D starts at 3), later batches step both: 1 + 2 + 2 + 2 + 2 >= 8
    assert int(module.step) == 7
    assert any(not torch.equal(a, b) for a, b in zip(d0, module.discriminator.parameters())), "D trains after disc_start"
    ema, live = module.ema.encoder.conv_in.weight, module.model.encoder.conv_in.weight
    assert not torch.equal(ema, live)
    metrics = module.validation_metrics()
    assert {"psnr", "ssim", "usage", "perplexity", "bpp"} <= set(metrics)
    assert metrics["rfid_n"] == 8 and metrics["rfid"] > 0  # 2 validation batches of 4 crops, FID features of each


def test_bf16_mixed_precision(tmp_path):
    torch.manual_seed(0)
    module = TokenizerModule(tiny_tokenizer("vq"), lr=1e-3, disc_start=1, perceptual_weight=0.0, disc_layers=2, rfid=False)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = make_trainer(tmp_path, 6, precision="bf16-mixed", limit_val_batches=0)
    trainer.fit(module, datamodule=small_data())
    assert int(module.step) == 4  # 1 generator-only batch, then 2 optimiser steps per batch: 1 + 2 + 2 < 6 <= 7
    state = module.model.state_dict()
    # the weights stay fp32 (autocast computes in bf16), finite, and trained
    assert all(v.dtype == before[k].dtype and torch.isfinite(v.float()).all() for k, v in state.items())
    assert not torch.equal(state["encoder.conv_in.weight"], before["encoder.conv_in.weight"])
    assert not torch.equal(state["quantizer.embed"], before["quantizer.embed"])  # the EMA codebook moved
    # under bf16 autocast the quantizer still searches in fp32: the codes match encode()
    x = next(iter(small_data_loader()))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        recon, q = module.model.eval()(x)
        codes = module.model.encode(x)
    assert recon.dtype == torch.bfloat16 and torch.isfinite(recon.float()).all()
    torch.testing.assert_close(q.indices, codes, rtol=0, atol=0)


def small_data_loader():
    data = small_data()
    data.setup("fit")
    return data.val_dataloader()


class Snapshots(pl.Callback):
    """The module's state and both optimisers' state at the start of every batch, by the module's step."""

    def __init__(self):
        self.at: dict[int, tuple[dict, list[dict]]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        state = dict(module.state_dict())
        if module.ema is not None:  # the EMA weights count even if a change left them out of state_dict()
            state.update({f"ema.{k}": v for k, v in module.ema.state_dict().items()})
        state = {k: v.detach().clone() for k, v in state.items()}
        optimisers = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]
        self.at.setdefault(int(module.step), (state, optimisers))


def same(a, b) -> bool:
    """Exact equality of nested dicts / lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_resume_after_kill_continues_the_uninterrupted_run(tmp_path):
    def fresh():
        torch.manual_seed(0)
        return TokenizerModule(tiny_tokenizer(), perceptual_weight=0.0, disc_start=1, disc_layers=2)

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    module = fresh()
    make_trainer(tmp_path, 3, callbacks=[ckpt], limit_val_batches=0).fit(module, datamodule=small_data())
    # a fresh process: new module, resumed from the last checkpoint, same max_steps target
    resumed, seen = fresh(), Snapshots()
    trainer = make_trainer(tmp_path, 6, limit_val_batches=0, callbacks=[seen])
    trainer.fit(resumed, datamodule=small_data(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    straight, reference_seen = fresh(), Snapshots()
    reference = make_trainer(tmp_path / "ref", 6, limit_val_batches=0, callbacks=[reference_seen])
    reference.fit(straight, datamodule=small_data())
    assert int(resumed.step) == int(straight.step) > 0
    assert trainer.global_step == reference.global_step >= 6

    # the first batch after the resume starts from exactly the state the uninterrupted run had at that step:
    # every weight and buffer (generator, quantizer, discriminator, EMA copy, step) and both optimisers
    step = min(seen.at)
    assert step > 0, "the resumed run started from scratch"
    state, optimisers = seen.at[step]
    ref_state, ref_optimisers = reference_seen.at[step]
    assert state.keys() == ref_state.keys()
    differ = [k for k in state if not torch.equal(state[k], ref_state[k])]
    assert not differ, f"resumed weights differ from the uninterrupted run at step {step}: {differ[:5]}"
    assert same(optimisers, ref_optimisers), f"resumed optimiser state differs from the uninterrupted run at step {step}"
    # and that state is the checkpoint's
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert same(saved["state_dict"], state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="recon_loss"):
        TokenizerModule(tiny_tokenizer(), recon_loss="huber", perceptual_weight=0.0)
    with pytest.raises(ValueError, match="ema_decay"):
        TokenizerModule(tiny_tokenizer(), ema_decay=1.0, perceptual_weight=0.0)


def test_missing_perceptual_weights_warn():
    with pytest.warns(UserWarning, match="perceptual loss disabled"):
        module = TokenizerModule(tiny_tokenizer(), perceptual_weight=1.0)
    assert module.perceptual is None


def test_adaptive_disc_weight_balances_gradients_at_the_last_layer():
    torch.manual_seed(0)
    module = TokenizerModule(tiny_tokenizer(), perceptual_weight=0.0, disc_layers=2, rfid=False)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, _ = module.model(x)
    nll = (recon - x).square().mean()
    g_loss = -module.discriminator(recon).mean()
    w = module._adaptive_weight(nll, g_loss)
    last = module.model.decoder.conv_out.weight
    a = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
    b = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
    assert w.item() == pytest.approx((a / (b + 1e-4)).item(), rel=1e-5)
    # scaled by w, the adversarial gradient at that layer has the reconstruction gradient's size
    scaled = torch.autograd.grad(w * g_loss, last)[0].norm()
    assert scaled.item() == pytest.approx(a.item(), rel=1e-3)
    with pytest.raises(ValueError, match="disc_weight_mode"):
        TokenizerModule(tiny_tokenizer(), perceptual_weight=0.0, disc_weight_mode="auto")
