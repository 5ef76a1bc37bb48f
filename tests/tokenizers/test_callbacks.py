"""ExportTokenizer (validation and export whatever stopped fit) and PrintProgress (plain progress lines)."""

import io
import json
import math

import lightning.pytorch as pl
import pytest
import torch

from vqlib.tokenizers import VQTokenizer
from vqlib.tokenizers.callbacks import ExportTokenizer, PrintProgress, _duration
from vqlib.tokenizers.data import SkimageDataModule
from vqlib.tokenizers.module import TokenizerModule

from .conftest import tiny_tokenizer


def small_data():
    return SkimageDataModule(size=32, batch_size=4, crops_per_epoch=64, train_images=("camera", "coins"), val_images=("clock",))


def fit(tmp_path, callbacks, **kw):
    torch.manual_seed(0)
    module = TokenizerModule(tiny_tokenizer(), lr=1e-3, perceptual_weight=0.0, ema_decay=0.9, rfid=False)
    data = small_data()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=tmp_path, check_val_every_n_epoch=None,
        callbacks=callbacks, **kw,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return module, data


def test_export_validates_the_exported_weights_when_the_last_validation_is_stale(tmp_path):
    # validation runs at step 3; max_steps stops at 5: the export's metrics must be those of step 5
    progress = io.StringIO()
    module, data = fit(tmp_path, [ExportTokenizer(str(tmp_path / "run")), PrintProgress(every_n_steps=2, stream=progress)],
                       max_steps=5, val_check_interval=3)  # fmt: skip
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["step"] == 5 and metrics["stopped_by"] == "max_steps"
    exported = VQTokenizer.from_pretrained(tmp_path / "run/tokenizer")
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), module.ema.state_dict().values()))
    again = module.evaluate(data.val_dataloader())
    assert metrics["val/psnr"] == pytest.approx(again["psnr"], rel=1e-6)
    assert metrics["val/ssim"] == pytest.approx(again["ssim"], rel=1e-6)
    assert (tmp_path / "run/recon.png").is_file()
    lines = progress.getvalue().splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["2/5", "4/5"]
    assert all("loss " in line and "steps/s" in line and "ETA " in line for line in lines if line.startswith("step "))
    assert sum(line.startswith("validation at step 3: psnr ") for line in lines) == 1


def test_evaluate_matches_lightning_validation(tmp_path):
    module, data = fit(tmp_path, [], max_steps=2, limit_val_batches=0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, datamodule=data, verbose=False)[0]
    ours = module.evaluate(data.val_dataloader())
    for key in ("psnr", "ssim", "usage", "perplexity"):
        assert ours[key] == pytest.approx(logged[f"val/{key}"], rel=1e-5), key


def test_time_budget_stops_and_still_exports(tmp_path):
    # Lightning's Timer checks after each batch: a one-second budget stops after a few batches
    fit(tmp_path, [ExportTokenizer(str(tmp_path / "run"))], max_steps=1000, max_time={"seconds": 1}, val_check_interval=500)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["stopped_by"] == "max_time" and 1 <= metrics["step"] < 1000
    assert metrics["max_seconds"] == 1 and metrics["train_seconds"] >= 1
    assert math.isfinite(metrics["val/psnr"]) and (tmp_path / "run/tokenizer/model.safetensors").is_file()


def test_progress_arguments_and_durations():
    with pytest.raises(ValueError, match="every_n_steps must be a positive integer, got 0"):
        PrintProgress(every_n_steps=0)
    assert [_duration(s) for s in (5, 65, 3 * 3600 + 120, float("inf"))] == ["5s", "1m 05s", "3h 02m", "?"]
