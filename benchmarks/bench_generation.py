"""LlamaGen on MNIST 32×32 tokens: REPA vs none, two sizes, CFG sweep, top-k/temperature, iFSQ vs VQ tokenizer.

    python benchmarks/bench_generation.py --tokenizer runs/mnist_tokenizer/tokenizer [--vq-tokenizer DIR] [--quick]

Metrics use the diffusion testbed's digits classifier (``benchmarks/testbed/models/digits_classifier``, trained
on real 16×16 MNIST): generated 32×32 digits are 2×2 average-pooled to 16×16 — the testbed's own preprocessing
of the same padded digits — then scored. *digits-FD* is the Fréchet distance in the classifier's 128-d
penultimate features against the 10,000 held-out test digits (not FID); *agreement* is the share of samples
classified as the requested class. Training is a plain loop (AdamW, warm-up + cosine, same seed, same batches
with and without REPA); REPA's targets are the TF-FID Inception's spatial features of each training digit,
computed once before training (so the REPA time overhead below excludes the encoder; it is the projector and
loss only — a config run through ``vqlib fit`` computes them per batch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import write_block  # noqa: E402

from vqlib.generation import InceptionEncoder, LlamaGen, repa_loss, resample_to_grid  # noqa: E402
from vqlib.generation.module import lr_factor  # noqa: E402
from vqlib.tokenizers import VQTokenizer  # noqa: E402
from vqlib.tokenizers.mnist import load_mnist32, to_images  # noqa: E402


def load_scorer(testbed: Path):
    sys.path.insert(0, str(testbed.parent))
    from testbed.classifier import DigitClassifier, frechet_distance, load_frechet_stats

    folder = testbed / "models" / "digits_classifier"
    clf = DigitClassifier.from_pretrained(str(folder)).eval()
    mean, cov = load_frechet_stats(folder)

    @torch.no_grad()
    def score(images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        x01 = ((images.float().mean(1, keepdim=True) + 1) / 2).clamp(0, 1)
        x16 = F.avg_pool2d(x01, 2)
        feats = clf.features(x16)
        agree = float((clf.head(feats).argmax(-1) == labels).float().mean())
        f = feats.double().numpy()
        import numpy as np

        return frechet_distance(f.mean(0), np.cov(f, rowvar=False), mean, cov), agree

    return score


@torch.no_grad()
def encode(tok: VQTokenizer, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([tok.encode(to_images(x[i : i + 256])) for i in range(0, len(x), 256)])


@torch.no_grad()
def evaluate(model, tok, score, n_per_class, cfg=4.0, seed=0, **kw):
    labels = torch.arange(10).repeat(n_per_class)
    _, images = model.generate(labels, cfg, tokenizer=tok, seed=seed, **kw)
    return score(images, labels)


def train(model, tokens, labels, feats, steps, batch, eval_every, evaluate_fn, seed=0, repa_weight=2.0, lr=1e-3):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps // 10, steps, 0.1))
    g = torch.Generator().manual_seed(seed)
    digits_all = model.to_digits(tokens)
    curve, train_time = [], 0.0
    for step in range(1, steps + 1):
        idx = torch.randint(len(tokens), (batch,), generator=g)
        t0 = time.perf_counter()
        model.train()
        d, y = digits_all[idx], labels[idx]
        if feats is not None:
            logits, proj = model(d, y, repa=True)
            loss = model.loss(logits, d) + repa_weight * repa_loss(proj, feats[idx].float())[0]
        else:
            loss = model.loss(model(d, y), d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        train_time += time.perf_counter() - t0
        if step % eval_every == 0 or step == steps:
            curve.append((step, *evaluate_fn(model.eval())))
    return curve, train_time / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True, help="iFSQ digits tokenizer (configs/tokenizer/mnist.yaml)")
    p.add_argument("--vq-tokenizer", default=None, help="a VQ tokenizer of the same bits per image (optional)")
    p.add_argument("--testbed", default=str(ROOT / "benchmarks" / "testbed"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    n_train, steps, batch, eval_every, n_eval = (1024, 80, 32, 40, 10) if quick else (20000, 3000, 64, 500, 100)
    sizes = ["tiny", "cpu-S"] if quick else ["cpu-S", "cpu-M"]
    score = load_scorer(Path(args.testbed))
    tok = VQTokenizer.from_pretrained(args.tokenizer).eval()
    x, y = load_mnist32("train")
    x, y = torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train])
    tokens = encode(tok, x)
    enc = InceptionEncoder("mixed_2", 87) if quick else InceptionEncoder("mixed_6", 155)
    t0 = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat([resample_to_grid(enc(to_images(x[i : i + 64])), (8, 8), enc).half() for i in range(0, n_train, 64)])
    enc_time = (time.perf_counter() - t0) / n_train
    rows, final = [], {}
    for size in sizes:
        for use_repa in (False, True):
            torch.manual_seed(0)
            model = LlamaGen.for_tokenizer(tok, size, grid_size=8, num_classes=10, repa_dim=enc.feature_dim if use_repa else None)
            curve, sec = train(model, tokens, y, feats if use_repa else None, steps, batch, eval_every,
                               lambda m: evaluate(m, tok, score, n_eval))
            final[(size, use_repa)] = model
            rows.append((size, use_repa, curve, sec))
            print(size, "REPA" if use_repa else "none", curve, f"{sec * 1e3:.0f} ms/step", flush=True)
    lines = [
        f"`python benchmarks/bench_generation.py --tokenizer DIR{' --quick' if quick else ''}`: {n_train} training digits, "
        f"{steps} steps of batch {batch}, same seed and batches with and without REPA (λ = 2, target: TF-FID Inception "
        f"{enc.layer} at {enc.input_size} px, 8×8×{enc.feature_dim}, {enc_time * 1e3:.1f} ms/image to precompute). "
        f"Scores on {10 * n_eval} samples (CFG 4), digits pooled to 16×16 for the testbed classifier. "
        f"Tokenizer: {type(tok.quantizer).__name__} {getattr(tok.quantizer, 'levels', '')}, {tok.quantizer.bits_per_index:.2f} bits/token.",
        "",
        "| model | REPA | digits-FD / agreement at step " + ", ".join(str(s) for s, *_ in rows[0][2]) + " | train ms/step |",
        "|---|---|---|---|",
    ]
    for size, use_repa, curve, sec in rows:
        pts = ", ".join(f"{fd:.1f} / {ag:.0%}" for _, fd, ag in curve)
        lines.append(f"| {size} | {'yes' if use_repa else 'no'} | {pts} | {sec * 1e3:.0f} |")
    best = final[(sizes[-1], True)]
    lines += ["", f"Sampling sweep ({sizes[-1]}, REPA): digits-FD / agreement", "", "| setting | digits-FD | agreement |", "|---|---|---|"]
    for cfg in (1.0, 2.0, 4.0, 8.0):
        fd, ag = evaluate(best, tok, score, n_eval, cfg=cfg)
        lines.append(f"| CFG {cfg:g} | {fd:.1f} | {ag:.0%} |")
    for kw in (dict(top_k=5), dict(temperature=0.7), dict(temperature=1.3)):
        fd, ag = evaluate(best, tok, score, n_eval, cfg=4.0, **kw)
        lines.append(f"| CFG 4, {', '.join(f'{k} {v}' for k, v in kw.items())} | {fd:.1f} | {ag:.0%} |")
    if args.vq_tokenizer:
        vq = VQTokenizer.from_pretrained(args.vq_tokenizer).eval()
        vt = encode(vq, x)
        lines += ["", "| tokenizer | bits/image | digits-FD | agreement |", "|---|---|---|---|"]
        for name, t, tk in (("iFSQ", tokens, tok), ("VQ", vt, vq)):
            torch.manual_seed(0)
            m = LlamaGen.for_tokenizer(tk, sizes[-1], grid_size=8, num_classes=10)
            curve, _ = train(m, t, y, None, steps, batch, steps, lambda mm, tk=tk: evaluate(mm, tk, score, n_eval))
            lines.append(f"| {name} | {64 * tk.quantizer.bits_per_index:.0f} | {curve[-1][1]:.1f} | {curve[-1][2]:.0%} |")
    else:
        lines += ["", "iFSQ vs VQ tokenizer: not run (pass --vq-tokenizer)."]
    text = "\n".join(lines)
    print(text)
    write_block(args.out, "bench_generation", text, heading="## Generation (LlamaGen + REPA on MNIST tokens)")


if __name__ == "__main__":
    main()
