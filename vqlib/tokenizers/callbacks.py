"""Lightning callbacks: export the (EMA) tokenizer and write a reconstruction grid."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch

from ..io import atomic_write


class ExportTokenizer(pl.Callback):
    """At the end of ``fit``: ``save_pretrained`` of the EMA tokenizer, ``metrics.json`` and ``recon.png``."""

    def __init__(self, dirpath: str = "runs/export", num_images: int = 8):
        super().__init__()
        self.dirpath, self.num_images = dirpath, num_images

    def on_fit_end(self, trainer: pl.Trainer, module) -> None:
        out = Path(self.dirpath)
        model = module.eval_model.eval()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        metrics["step"] = int(module.step)
        if trainer.is_global_zero:
            model.save_pretrained(out / "tokenizer")
            atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2)))
            loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
            if loader is not None:
                batch = next(iter(loader))[: self.num_images].to(module.device)
                with torch.no_grad():
                    recon = model(batch)[0].clamp(-1, 1)
                save_grid(torch.cat([batch, recon]), out / "recon.png", rows=2)
            print(summary_table(metrics, model, out))


def summary_table(metrics: dict, model, out: Path) -> str:
    q = model.quantizer
    rows = [
        ("quantizer", f"{type(q).__name__} (K={q.codebook_size}, {q.bits_per_index:.2f} bits/token)"),
        ("steps", str(metrics.get("step"))),
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


def save_grid(images: torch.Tensor, path: Path, rows: int) -> None:
    """Images in ``[-1, 1]`` as a PNG grid with ``rows`` rows (written atomically)."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = (n + rows - 1) // rows
    grid = torch.ones(c, rows * h + (rows - 1) * 2, cols * w + (cols - 1) * 2)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[:, r * (h + 2) : r * (h + 2) + h, col * (w + 2) : col * (w + 2) + w] = (img.float().cpu() + 1) / 2
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
