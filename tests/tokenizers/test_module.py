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
    assert set(metrics) == {"psnr", "ssim", "usage", "perplexity", "bpp"}


def test_resume_after_kill_reaches_the_same_final_step(tmp_path):
    torch.manual_seed(0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    module = TokenizerModule(tiny_tokenizer(), perceptual_weight=0.0, disc_start=1, disc_layers=2)
    make_trainer(tmp_path, 3, callbacks=[ckpt], limit_val_batches=0).fit(module, datamodule=small_data())
    # a fresh process: new module, resumed from the last checkpoint, same max_steps target
    resumed = TokenizerModule(tiny_tokenizer(), perceptual_weight=0.0, disc_start=1, disc_layers=2)
    trainer = make_trainer(tmp_path, 6, limit_val_batches=0)
    trainer.fit(resumed, datamodule=small_data(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    straight = TokenizerModule(tiny_tokenizer(), perceptual_weight=0.0, disc_start=1, disc_layers=2)
    reference = make_trainer(tmp_path / "ref", 6, limit_val_batches=0)
    reference.fit(straight, datamodule=small_data())
    assert int(resumed.step) == int(straight.step) > 0
    assert trainer.global_step == reference.global_step >= 6


def test_bad_arguments():
    with pytest.raises(ValueError, match="recon_loss"):
        TokenizerModule(tiny_tokenizer(), recon_loss="huber", perceptual_weight=0.0)
    with pytest.raises(ValueError, match="ema_decay"):
        TokenizerModule(tiny_tokenizer(), ema_decay=1.0, perceptual_weight=0.0)


def test_missing_perceptual_weights_warn():
    with pytest.warns(UserWarning, match="perceptual loss disabled"):
        module = TokenizerModule(tiny_tokenizer(), perceptual_weight=1.0)
    assert module.perceptual is None
