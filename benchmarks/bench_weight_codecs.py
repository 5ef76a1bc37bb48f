"""Weight codecs: Pyramid VQ against scalar quantizers, and LR²VQ on a small classifier.

Part ``pvq`` (``vqlib.quantizers.pvq``), all on synthetic data drawn here:

- MSE on N(0, 1) data (2048 × 128 test vectors; the gain levels are fitted on a
  separate 2048 × 128 draw) at about 2, 3 and 4 bits per weight over several
  group sizes D, pulse counts K and gain bits, against scalar baselines on the
  same data: round-to-nearest min–max in groups of 128 with an fp16 scale and
  zero (+0.25 bits per weight), a uniform quantizer with the MSE-optimal step
  and a Lloyd–Max scalar quantizer (both oracles fitted on the test data, no
  side information), and the Shannon bound 2^(−2R).
- The random Hadamard rotation on and off on Gaussian, Laplace, Student-t(3)
  and outlier-channel data (relative MSE, about 3 bits per weight).
- Hessian-aware quantization (``pvq_quantize_weight``) against plain PVQ on a
  synthetic layer with correlated, unevenly scaled calibration inputs.

Part ``lr2vq`` (``vqlib.quantizers.lr2vq``) on scikit-learn's ``load_digits``
(1797 8×8 images, pixels / 16; one fixed split of 1347 train and 450 test
images): an MLP 64-128-10 and a small CNN are trained dense (300 Adam steps, lr
1e-2, batch 128), compressed, and fine-tuned (``finetune(..., lr=1e-2)``, batch
128, ``train="codebooks"``) with fixed or soft assignments; each cell is the
mean ± std (ddof 0) of the test accuracy over ``--seeds`` k-means seeds. Also
the paper's recipe (low-rank pre-training, then clustering) against direct
compression at the same number of steps.

    python benchmarks/bench_weight_codecs.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from report import machine_line, write_block  # noqa: E402

from vqlib.quantizers.lr2vq import compress_model, compression_report, decompress_model, finetune  # noqa: E402
from vqlib.quantizers.pvq import PyramidVQ, pvq_quantize_weight  # noqa: E402


def md_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- Pyramid VQ ------------------------------------------------------------------------

# (D, K, gain bits) at about 2, 3 and 4 bits per weight
PVQ_CONFIGS = [
    (16, 8, 6), (32, 19, 6), (128, 80, 6), (128, 79, 8),
    (16, 20, 6), (32, 43, 6), (128, 180, 6), (128, 178, 8),
    (16, 44, 6), (32, 92, 6), (128, 373, 6), (128, 369, 8),
]  # fmt: skip
ROT_CONFIGS = [(32, 43), (128, 180)]
HESSIAN_CONFIGS = [(32, 19), (32, 43), (64, 39), (64, 89)]
DIM = 128


def rtn_minmax(x: torch.Tensor, bits: int, group: int = 128) -> torch.Tensor:
    """Asymmetric round-to-nearest per group of ``group`` weights, scale and zero (the minimum) stored in fp16."""
    g = x.reshape(-1, group)
    lo, hi = g.min(-1, keepdim=True).values, g.max(-1, keepdim=True).values
    lo = lo.half().float()
    scale = ((hi - lo) / (2**bits - 1)).half().float()
    q = ((g - lo) / scale).round().clamp(0, 2**bits - 1)
    return (q * scale + lo).reshape_as(x)


def uniform_optimal(x: torch.Tensor, bits: int) -> float:
    """MSE of the midrise uniform quantizer with ``2^bits`` levels and the MSE-optimal step for ``x`` (an oracle)."""
    v = x.flatten().double()
    n = 2**bits

    def mse(step: float) -> float:
        q = ((v / step).floor().clamp(-n // 2, n // 2 - 1) + 0.5) * step
        return float(((q - v) ** 2).mean())

    steps = np.linspace(0.01, 2.0, 200)
    i = int(np.argmin([mse(s) for s in steps]))
    lo, hi = steps[max(i - 1, 0)], steps[min(i + 1, len(steps) - 1)]
    for _ in range(40):  # ternary search inside the bracket of the grid's best step
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if mse(a) < mse(b):
            hi = b
        else:
            lo = a
    return mse((lo + hi) / 2)


def lloyd_max(x: torch.Tensor, bits: int, iters: int = 300) -> float:
    """MSE of the Lloyd–Max scalar quantizer with ``2^bits`` levels fitted on ``x`` itself (an oracle)."""
    v = x.flatten().double()
    n = 2**bits
    levels = torch.quantile(v[:: max(1, v.numel() // 100000)], (torch.arange(n, dtype=torch.float64) + 0.5) / n)
    for _ in range(iters):
        cell = torch.bucketize(v, (levels[1:] + levels[:-1]) / 2)
        sums = torch.zeros_like(levels).index_add_(0, cell, v)
        counts = torch.bincount(cell, minlength=n).double()
        new = torch.where(counts > 0, sums / counts.clamp_min(1), levels)
        if torch.allclose(new, levels, rtol=0, atol=1e-12):
            break
        levels = new
    q = levels[torch.bucketize(v, (levels[1:] + levels[:-1]) / 2)]
    return float(((q - v) ** 2).mean())


def pvq_gaussian() -> str:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, DIM, generator=gen)
    fit = torch.randn(2048, DIM, generator=gen)
    scalar = {}
    rows = []
    for bits in (2, 3, 4):
        r = ((rtn_minmax(x, bits) - x) ** 2).mean().item()
        u, lm, sh = uniform_optimal(x, bits), lloyd_max(x, bits), 2.0 ** (-2 * bits)
        scalar[bits] = {"RTN": r, "uniform": u, "Lloyd–Max": lm}
        rows.append([bits, f"{r:.4f}", f"{u:.4f}", f"{lm:.4f}", f"{sh:.4f}"])
        log(f"[pvq] scalar {bits} bits: RTN {r:.4f} uniform {u:.4f} Lloyd-Max {lm:.4f}")
    out = [
        "#### Pyramid VQ: MSE on N(0, 1) data",
        "",
        "2048 × 128 test vectors; PVQ's gain levels fitted on a separate 2048 × 128 draw. Scalar baselines on the same "
        "test data:",
        "",
        md_table(
            ["bits", "RTN min–max, groups of 128 (+0.25 bpw: fp16 scale and zero)",
             "uniform, MSE-optimal step (oracle, no side info)", "Lloyd–Max scalar (oracle)", "Shannon bound 2^-2R"],
            rows,
        ),  # fmt: skip
        "",
    ]
    rows, pvq = [], {}
    for D, K, ab in PVQ_CONFIGS:
        q = PyramidVQ(DIM, K, vector_size=D, amplitude_bits=ab, rotate=None).fit(fit)
        t0 = time.perf_counter()
        codes = q.encode(x)
        xh = q.decode(codes)
        el = time.perf_counter() - t0
        assert codes.code_size * 8 >= q.stored_bits_per_weight * DIM
        mse = ((xh - x) ** 2).mean().item()
        stored = q.stored_bits_per_weight
        pvq[(D, K, ab)] = (stored, mse)
        rows.append([D, K, ab, f"{q.information_bits_per_weight:.3f}", f"{stored:.3f}", f"{mse:.4f}", f"{el:.2f}"])
        log(f"[pvq] D={D} K={K} amp={ab}: {stored:.3f} bpw MSE {mse:.4f} ({el:.2f}s)")
    out += [
        'PVQ, `rotate=None` (the default; the rotation is measured below):',
        "",
        md_table(
            ["D", "K", "amp bits", "bits/weight (exact)", "stored bits/weight", "MSE",
             "encode+decode, s per 2048 vectors"],
            rows,
        ),  # fmt: skip
        "",
    ]
    rows = []
    for bits in (2, 3, 4):
        at = {c: v for c, v in pvq.items() if v[0] <= bits}
        (D, K, ab), (_, best) = min(at.items(), key=lambda kv: kv[1][1])
        lm, u = scalar[bits]["Lloyd–Max"], scalar[bits]["uniform"]
        rows.append([bits, f"{best:.4f} (D={D}, K={K}, {ab} gain bits)", f"{lm:.4f}", f"{u:.4f}", f"{lm / best:.2f}×"])
    out += [
        "Best PVQ at no more stored bits per weight than the scalar quantizers:",
        "",
        md_table(["bits", "best PVQ MSE", "Lloyd–Max", "best uniform", "Lloyd–Max / PVQ"], rows),
        "",
    ]
    return "\n".join(out)


def rotation_data(seed: int) -> dict[str, callable]:
    scale = torch.ones(DIM)
    scale[torch.randperm(DIM, generator=torch.Generator().manual_seed(seed))[:4]] = 8.0
    laplace, student = torch.distributions.Laplace(0.0, 1.0), torch.distributions.StudentT(3.0)
    return {
        "Gaussian": lambda: torch.randn(2048, DIM),
        "Laplace": lambda: laplace.sample((2048, DIM)),
        "Student-t(3)": lambda: student.sample((2048, DIM)),
        "Gaussian, 4 of 128 channels ×8": lambda: torch.randn(2048, DIM) * scale,
        "Student-t(3), 4 of 128 channels ×8": lambda: student.sample((2048, DIM)) * scale,
    }


def pvq_rotation() -> str:
    rows, ratios = [], []
    for i, (name, make) in enumerate(rotation_data(0).items()):
        torch.manual_seed(100 + i)
        x, fit = make(), make()
        for D, K in ROT_CONFIGS:
            rel = {}
            for rot in (None, "hadamard"):
                q = PyramidVQ(DIM, K, vector_size=D, amplitude_bits=6, rotate=rot).fit(fit)
                rel[rot] = (((q(x) - x) ** 2).mean() / (x**2).mean()).item()
            ratios.append(rel["hadamard"] / rel[None])
            bpw = q.information_bits_per_weight
            rows.append([name, D, K, f"{bpw:.3f}", f"{rel[None]:.4f}", f"{rel['hadamard']:.4f}"])
            log(f"[pvq] rotation {name} D={D}: none {rel[None]:.4f} hadamard {rel['hadamard']:.4f}")
    return "\n".join([
        "#### Pyramid VQ: Hadamard rotation on and off",
        "",
        "Relative MSE ‖x − x̂‖² / ‖x‖², 6 gain bits, 2048 × 128 test vectors, gains fitted on a separate draw of the "
        "same source:",
        "",
        md_table(["data", "D", "K", "bits/weight", "rotate=None", 'rotate="hadamard"'], rows),
        "",
        f"rotate=\"hadamard\" / rotate=None: {min(ratios):.2f}× to {max(ratios):.2f}×; the rotation lowered the MSE by "
        f"more than 1 % in {sum(r < 0.99 for r in ratios)} of {len(rows)} rows.",
        "",
    ])  # fmt: skip


def pvq_hessian() -> str:
    torch.manual_seed(1)
    n, d_in, d_out = 4096, 256, 128
    X = torch.randn(n, 16) @ torch.randn(16, d_in) + 0.3 * torch.randn(n, d_in)
    X = X * torch.linspace(0.3, 3.0, d_in)
    W = torch.randn(d_out, d_in) / math.sqrt(d_in)
    H = X.T @ X
    ref = X @ W.T

    def err(Wh: torch.Tensor) -> float:
        return ((ref - X @ Wh.T).norm() / ref.norm()).item()

    rows = []
    for D, K in HESSIAN_CONFIGS:
        for rot in (None, "hadamard"):
            plain = PyramidVQ(d_in, K, vector_size=D, amplitude_bits=6, rotate=rot).fit(W)
            t0 = time.perf_counter()
            res = pvq_quantize_weight(W, K, H, vector_size=D, amplitude_bits=6, rotate=rot)
            el = time.perf_counter() - t0
            e0, e1 = err(plain(W)), err(res.weight)
            rows.append([D, K, 6, f"{plain.information_bits_per_weight:.3f}", rot, f"{e0:.4f}", f"{e1:.4f}",
                         f"{1 - e1 / e0:.0%}", f"{el:.2f}"])  # fmt: skip
            log(f"[pvq] hessian D={D} K={K} {rot}: plain {e0:.4f} hessian {e1:.4f}")
    return "\n".join([
        "#### Pyramid VQ: Hessian-aware (`pvq_quantize_weight`) against plain PVQ",
        "",
        "A synthetic layer W (128 × 256, N(0, 1/256)); 4096 calibration inputs from 16 latent factors plus noise, "
        "channel scales 0.3 to 3. Relative output error ‖XWᵀ − XŴᵀ‖ / ‖XWᵀ‖, same quantizer settings in both columns:",
        "",
        md_table(["D", "K", "amp bits", "bits/weight", "rotate", "plain PVQ", "Hessian-aware", "error cut",
                  "time, s"], rows),
        "",
    ])  # fmt: skip


# ---- LR²VQ ------------------------------------------------------------------------------

MLP_CONFIGS = [
    (4, 4, 16), (4, 2, 16), (8, 8, 16), (8, 4, 16), (8, 2, 16), (8, 1, 16),
    (8, 8, 64), (8, 4, 64), (8, 2, 64), (16, 4, 16), (16, 2, 16), (8, 2, 8),
]  # fmt: skip
RECIPE_CONFIGS = [(8, 4, 16), (8, 2, 16), (8, 2, 8), (16, 4, 16)]
CNN_CONFIGS = [(8, 4, 64), (8, 2, 16), (16, 4, 16)]
STEPS, LR, BATCH = 300, 1e-2, 128


class Digits:
    """``load_digits`` split once (seed 0); ``loader()`` is a fresh, seeded, reshuffled-per-epoch batch iterable."""

    def __init__(self, image: bool):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data / 16.0, dtype=torch.float32)
        if image:
            x = x.reshape(-1, 1, 8, 8)
        y = torch.tensor(d.target, dtype=torch.long)
        self.gen = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(x), generator=self.gen)
        self.xtr, self.ytr, self.xte, self.yte = x[perm[:1347]], y[perm[:1347]], x[perm[1347:]], y[perm[1347:]]

    def accuracy(self, model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return (model(self.xte).argmax(1) == self.yte).float().mean().item()

    def train_dense(self, model: nn.Module) -> nn.Module:
        opt = torch.optim.Adam(model.parameters(), LR)
        for _ in range(STEPS):
            idx = torch.randint(len(self.xtr), (BATCH,), generator=self.gen)
            loss = F.cross_entropy(model(self.xtr[idx]), self.ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    def loader(self, seed: int = 1):
        data = self

        class Loader:
            def __init__(self):
                self.gen = torch.Generator().manual_seed(seed)

            def __iter__(self):
                p = torch.randperm(len(data.xtr), generator=self.gen)
                for i in range(0, len(p), BATCH):
                    yield data.xtr[p[i : i + BATCH]], data.ytr[p[i : i + BATCH]]

        return Loader()

    def tune(self, model: nn.Module, steps: int = STEPS, assignments: str = "fixed") -> nn.Module:
        finetune(model, self.loader(), F.cross_entropy, steps, lr=LR, assignments=assignments)
        return model


def mean_std(values) -> str:
    a = np.asarray(values)
    return f"{a.mean():.3f} ± {a.std():.3f}"


def compress_tune(data: Digits, base: nn.Module, m: int, r: int, k: int, seed: int, steps: int, layers=None):
    """Accuracy compressed, fine-tuned fixed, fine-tuned soft; and the compression report."""
    comp = compress_model(copy.deepcopy(base), vector_size=m, codebook_size=k, rank=r, layers=layers, seed=seed)
    rep = compression_report(comp)
    fixed = data.tune(copy.deepcopy(comp), steps)
    soft = data.tune(copy.deepcopy(comp), steps, "soft")
    return (data.accuracy(comp), data.accuracy(fixed), data.accuracy(soft)), rep


def mlp_base(data: Digits) -> nn.Module:
    torch.manual_seed(0)
    return data.train_dense(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))


def lr2vq_mlp(seeds: int) -> tuple[str, dict]:
    data = Digits(image=False)
    base = mlp_base(data)
    dense = data.accuracy(base)
    rows = []
    for m, r, k in MLP_CONFIGS:
        t0 = time.perf_counter()
        res = []
        for seed in range(seeds):
            accs, rep = compress_tune(data, base, m, r, k, seed, STEPS)
            res.append(accs)
        a = np.array(res)
        per_layer = ", ".join(f"{lay.ratio:.1f}" for lay in rep.layers)
        rows.append([m, r, k, f"{rep.ratio:.1f} ({per_layer})", f"{rep.model_ratio:.1f}", mean_std(a[:, 0]),
                     mean_std(a[:, 1]), mean_std(a[:, 2]), f"{(time.perf_counter() - t0) / seeds:.1f}"])  # fmt: skip
        log(f"[lr2vq] MLP m={m} d={r} k={k}: " + " | ".join(rows[-1][3:]))
    soft_wins = sum(float(row[7][:5]) > float(row[6][:5]) for row in rows)
    text = "\n".join([
        f"#### LR²VQ: MLP 64-128-10, both Linear layers compressed, {STEPS} fine-tuning steps",
        "",
        f"Dense accuracy **{dense:.3f}**. \"ratio (layers)\" is Σ 32·n / Σ bits over the compressed layers, each "
        "layer's own in parentheses; \"ratio (model)\" also counts the uncompressed biases on both sides. s/seed: "
        "compression plus both fine-tunings, one seed.",
        "",
        md_table(["m", "d̃", "k", "ratio (layers)", "ratio (model)", "compressed", "fine-tuned, fixed",
                  "fine-tuned, soft", "s/seed"], rows),
        "",
        f"Soft assignments ended above fixed ones (mean accuracy) in {soft_wins} of {len(rows)} rows.",
        "",
    ])  # fmt: skip
    return text, {"data": data, "base": base, "dense": dense}


def lr2vq_recipe(seeds: int, ctx: dict) -> str:
    data, base = ctx["data"], ctx["base"]
    rows = []
    for m, r, k in RECIPE_CONFIGS:
        # the low-rank stage has no k-means, so it does not depend on the seed: trained once
        low = data.tune(compress_model(copy.deepcopy(base), vector_size=m, codebook_size=None, rank=r), STEPS)
        low_acc = data.accuracy(low)
        dense_low = decompress_model(low)
        res = []
        for seed in range(seeds):
            direct, _ = compress_tune(data, base, m, r, k, seed, 2 * STEPS)
            recipe, _ = compress_tune(data, dense_low, m, r, k, seed, STEPS)
            res.append(direct + recipe)
        a = np.array(res)
        rows.append([m, r, k, *(mean_std(a[:, j]) for j in range(3)), f"{low_acc:.3f}",
                     *(mean_std(a[:, j]) for j in range(3, 6))])  # fmt: skip
        log(f"[lr2vq] recipe m={m} d={r} k={k}: " + " | ".join(rows[-1][3:]))
    s2 = 2 * STEPS
    return "\n".join([
        "#### LR²VQ: the paper's recipe (low-rank pre-training, then clustering), same MLP",
        "",
        f"Direct: `compress_model(k)` then {s2} fine-tuning steps. Recipe: `compress_model(k=None)` (R·P from the "
        f"SVD, no clustering), {STEPS} steps of low-rank training, `decompress_model`, `compress_model(k)`, {STEPS} "
        "fine-tuning steps: the same number of steps in all. The low-rank stage has no k-means, so it does not depend "
        "on the seed.",
        "",
        md_table(["m", "d̃", "k", "direct: compressed", f"direct: fixed {s2}", f"direct: soft {s2}",
                  f"low-rank model after {STEPS}", "its clustering", f"+ fixed {STEPS}", f"+ soft {STEPS}"], rows),
        "",
    ])  # fmt: skip


def lr2vq_cnn(seeds: int) -> str:
    data = Digits(image=True)
    torch.manual_seed(0)
    base = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 16, 10),
    )  # fmt: skip
    data.train_dense(base)
    dense = data.accuracy(base)
    rows = []
    for m, r, k in CNN_CONFIGS:
        res = []
        for seed in range(seeds):
            accs, rep = compress_tune(data, base, m, r, k, seed, STEPS, layers=["2", "5"])
            res.append(accs)
        a = np.array(res)
        per_layer = ", ".join(f"{lay.ratio:.1f}" for lay in rep.layers)
        rows.append([m, r, k, f"{per_layer} ({rep.ratio:.1f})", *(mean_std(a[:, j]) for j in range(3))])
        log(f"[lr2vq] CNN m={m} d={r} k={k}: " + " | ".join(rows[-1][3:]))
    return "\n".join([
        "#### LR²VQ: CNN conv3×3(1→16, pad 1) → conv3×3/2(16→32, pad 1) → Linear(512→10)",
        "",
        f"Dense accuracy **{dense:.3f}**. The first conv (144 weights) is left dense: `layers=[\"2\", \"5\"]`. "
        f"{STEPS} fine-tuning steps.",
        "",
        md_table(["m", "d̃", "k", "ratio conv2, linear (both)", "compressed", "fine-tuned, fixed",
                  "fine-tuned, soft"], rows),
        "",
    ])  # fmt: skip


# ---- main --------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["pvq", "lr2vq", "all"], default="all")
    p.add_argument("--seeds", type=int, default=3, help="k-means seeds per LR²VQ configuration")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--write", default=None, help="markdown file whose bench_weight_codecs block is replaced")
    args = p.parse_args()
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    parts = []
    if args.part in ("pvq", "all"):
        parts += [pvq_gaussian(), pvq_rotation(), pvq_hessian()]
    if args.part in ("lr2vq", "all"):
        text, ctx = lr2vq_mlp(args.seeds)
        parts += [text, lr2vq_recipe(args.seeds, ctx), lr2vq_cnn(args.seeds)]
    total = time.perf_counter() - t_start
    text = "\n".join(parts)
    print(text)
    log(f"total {total:.0f} s")
    if args.write:
        cmd = "python benchmarks/bench_weight_codecs.py " + " ".join(sys.argv[1:])
        versions = f"torch {torch.__version__}"
        if args.part != "pvq":
            import sklearn

            versions += f", scikit-learn {sklearn.__version__}"
        meta = (
            "## Weight codecs: Pyramid VQ and LR²VQ\n\n"
            f"Command: `{cmd.strip()}`\n\n"
            + machine_line(f"torch threads {torch.get_num_threads()}", versions)
            + f"; total wall time {total / 60:.1f} min\n\n"
        )
        write_block(args.write, "bench_weight_codecs", meta + text)


if __name__ == "__main__":
    main()
