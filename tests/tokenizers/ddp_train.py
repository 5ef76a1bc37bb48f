"""Trains a tiny tokenizer for a few steps under Lightning's DDP strategy (2 CPU processes, gloo).

Run by tests/tokenizers/test_ddp.py; each rank saves its final state dict to OUT/rank{r}.safetensors.
"""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vqlib.quantizers import VectorQuantizer  # noqa: E402
from vqlib.tokenizers import VQTokenizer  # noqa: E402
from vqlib.tokenizers.data import SkimageDataModule  # noqa: E402
from vqlib.tokenizers.module import TokenizerModule  # noqa: E402


class RecordBatches(pl.Callback):
    """Remembers a fingerprint of every training batch with its epoch."""

    def __init__(self):
        self.rows = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.rows.append([trainer.current_epoch, batch_idx, float(batch.double().sum())])


def main(out: str) -> None:
    pl.seed_everything(0)
    torch.set_num_threads(1)
    quantizer = VectorQuantizer(16, 64, codebook_dim=4, init="kmeans", kmeans_batches=2, dead_code_threshold=0.5, decay=0.8)
    model = VQTokenizer(quantizer, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=16)
    module = TokenizerModule(model, lr=1e-3, disc_start=2, perceptual_weight=0.0, disc_layers=2, ema_decay=0.9)
    data = SkimageDataModule(size=32, batch_size=4, crops_per_epoch=32, train_images=("camera", "coins", "grass"), val_images=("clock",))
    record = RecordBatches()
    trainer = pl.Trainer(
        callbacks=[record], accelerator="cpu", devices=2, strategy="ddp", max_steps=10, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    state["_usage"] = torch.tensor(list(module.model.quantizer.usage()), dtype=torch.float64)
    state["_batches"] = torch.tensor(record.rows, dtype=torch.float64)
    save_file(state, f"{out}/rank{trainer.global_rank}.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
