"""Tokenizer benchmark: the same small autoencoder and steps with each quantizer in the bottleneck.

Data: crops of scikit-image's bundled photographs (`SkimageDataModule`, whole
images held out for validation). Architecture and optimiser: those of
`configs/tokenizer/demo.yaml` (ch 16, ch_mult [1, 2, 4, 8], z_channels 64, 64x64
crops, batch 16, AdamW lr 1e-3; PatchGAN hinge loss from batch `--disc-start`
with VQGAN's adaptive weight;
no LPIPS: its weights cannot be downloaded here). After `--steps` batches the
EMA model is validated: PSNR, SSIM (data range 1), codebook usage and
perplexity over the whole validation set, bits per pixel, and rFID (FID
Inception features of the validation crops and their reconstructions).

    python benchmarks/bench_tokenizers.py --steps 600 --disc-start 400 --threads 1 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import lightning.pytorch as pl  # noqa: E402
from report import machine_line, write_block  # noqa: E402

from vqlib.quantizers import FSQ, FVQ, Quantizer, QuantizerOutput, SimVQ, VectorQuantizer  # noqa: E402
from vqlib.tokenizers import VQTokenizer  # noqa: E402
from vqlib.tokenizers.data import SkimageDataModule  # noqa: E402
from vqlib.tokenizers.module import TokenizerModule  # noqa: E402

Z = 64


class AnchorVQ(Quantizer):
    """The anchor's `VectorQuantize` (default settings) behind vqlib's contract, for the same bottleneck."""

    def __init__(self, dim: int, codebook_size: int):
        super().__init__(dim, dim, codebook_size)
        from vector_quantize_pytorch import VectorQuantize

        self.vq = VectorQuantize(dim=dim, codebook_size=codebook_size)

    def forward(self, x):
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # the anchor takes (B, N, D)
        quantized, indices, loss = self.vq(flat)
        self._count(indices.reshape(-1, 1))
        return QuantizerOutput(quantized.reshape(x.shape), indices.reshape(x.shape[:-1]), loss.sum())


RUNS = {
    "vq (LlamaGen: cosine 8-d, learned)": lambda: VectorQuantizer(Z, 16384, codebook_dim=8, metric="cosine", codebook_update="gradient"),
    "vq + k-means + dead-code restart (EMA)": lambda: VectorQuantizer(Z, 16384, codebook_dim=8, metric="cosine", init="kmeans", dead_code_threshold=0.1),
    "simvq": lambda: SimVQ(Z, 16384, codebook_dim=8),
    "fvq": lambda: FVQ(Z, 16384, codebook_dim=8),
    "fsq [8,8,8,6,5]": lambda: FSQ([8, 8, 8, 6, 5], dim=Z),
    "ifsq [9,9,9,5,5]": lambda: FSQ([9, 9, 9, 5, 5], dim=Z, bound="ifsq"),
    "anchor VectorQuantize (defaults)": lambda: AnchorVQ(Z, 16384),
    "simvq K=65536": lambda: SimVQ(Z, 65536, codebook_dim=8),
    "fvq K=65536": lambda: FVQ(Z, 65536, codebook_dim=8),
    "ifsq [17,17,17,17]": lambda: FSQ([17, 17, 17, 17], dim=Z, bound="ifsq"),
}


def run_one(name: str, steps: int, disc_start: int) -> dict:
    pl.seed_everything(0, verbose=False)
    quantizer = RUNS[name]()
    model = VQTokenizer(quantizer, ch=16, ch_mult=(1, 2, 4, 8), num_res_blocks=1, z_channels=Z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = TokenizerModule(model, lr=1e-3, warmup_steps=50, perceptual_weight=0.0, disc_start=disc_start, ema_decay=0.99)
    data = SkimageDataModule(size=64, batch_size=16, crops_per_epoch=4096)
    # Lightning's max_steps counts optimiser steps: two per batch once the discriminator is on
    max_steps = steps + max(0, steps - disc_start)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_s = time.perf_counter() - t0
    pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
        module, datamodule=data, verbose=False
    )
    m = module.validation_metrics()
    assert int(module.step) == steps, (int(module.step), steps)
    return {"name": name, "codes": quantizer.codebook_size, "train_s": train_s, **m}


def table(rows: list[dict], steps: int, disc_start: int) -> str:
    n = int(rows[0].get("rfid_n", 0)) if rows else 0
    lines = [
        f"### Tokenizers on the embedded images ({steps} batches each, PatchGAN from batch {disc_start})",
        "",
        f"rFID: FID Inception features over the {n} validation crops (64×64, upsampled to 299) against their",
        "reconstructions; with this few samples FID is biased upwards, so compare rows with each other, not with",
        "published ImageNet rFIDs.",
        "",
        "| quantizer | codes | PSNR dB | SSIM | rFID | usage | perplexity | bits/pixel | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rfid = f"{r['rfid']:.1f}" if "rfid" in r else "–"
        lines.append(
            f"| {r['name']} | {r['codes']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {rfid} | {r['usage']:.4f} | {r['perplexity']:.1f} | {r['bpp']:.4f} | {r['train_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="training batches per run")
    p.add_argument("--disc-start", type=int, default=400, help="batch from which the PatchGAN loss is on")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--runs", nargs="+", default=list(RUNS))
    p.add_argument("--results", default="runs/bench_tokenizers.json")
    p.add_argument("--write", default=None)
    args = p.parse_args()
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    key = {"steps": args.steps, "disc_start": args.disc_start, "disc_weight_mode": "adaptive"}
    done = {r["name"] for r in rows if all(r.get(k) == v for k, v in key.items())}
    for name in args.runs:
        if name in done:
            continue
        r = run_one(name, args.steps, args.disc_start)
        r.update(key)
        rows = [x for x in rows if not (x["name"] == name and all(x.get(k) == v for k, v in key.items()))] + [r]
        results_path.write_text(json.dumps(rows, indent=2))
        print(f"{name}: PSNR {r['psnr']:.2f} SSIM {r['ssim']:.4f} rFID {r.get('rfid', float('nan')):.1f} usage {r['usage']:.4f} ppl {r['perplexity']:.0f} ({r['train_s']:.0f} s)", flush=True)
    rows = [r for r in rows if all(r.get(k) == v for k, v in key.items())]
    order = list(RUNS)
    rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else 99)
    text = table(rows, args.steps, args.disc_start)
    print(text)
    if args.write:
        cmd = "python benchmarks/bench_tokenizers.py " + " ".join(sys.argv[1:])
        meta = (
            f"Command: `{cmd}`\n\n"
            + machine_line(f"{torch.get_num_threads()} threads", f"torch {torch.__version__}, lightning {pl.__version__}")
            + "\n\n"
        )
        write_block(args.write, "bench_tokenizers", meta + text)


if __name__ == "__main__":
    main()
