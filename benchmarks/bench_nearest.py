"""Exact nearest code at small d: ``vqlib.quantizers.nearest`` against FAISS ``IndexFlatL2`` (k = 1, one thread).

The issue-15 target row is (N, d, K) = (16384, 8, 65536), LlamaGen's 8-d codebook: FAISS answers it with a fused
distance-and-argmin kernel; vqlib with its compiled fused search (``vqlib.quantizers.nearest_small``, numba) and,
for reference, its torch path (blocked fp32 matmuls). Reported per shape: seconds (wall and process CPU, best of
``--repeats``), the speed ratio vqlib / FAISS (compiled path), and whether both return the same indices.

    python benchmarks/bench_nearest.py                   # the target row and two smaller ones
    python benchmarks/bench_nearest.py --shapes 4096,8,65536
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from vqlib.quantizers import nearest  # noqa: E402
from vqlib.quantizers.nearest import _search as torch_path  # noqa: E402  (the benchmark times the torch path too)


def timed(fn, repeats):
    best_w = best_c = float("inf")
    out = None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_w, best_c = min(best_w, time.perf_counter() - w), min(best_c, time.process_time() - c)
    return best_w, best_c, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1024,8,65536;4096,16,16384;16384,8,65536", help="N,d,K;...")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    print("| N | d | K | vqlib s (cpu) | vqlib torch path s (cpu) | FAISS IndexFlatL2 s (cpu) | vqlib / FAISS speed | same indices |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(";"):
        n, d, k = (int(v) for v in shape.split(","))
        g = torch.Generator().manual_seed(0)
        x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
        flat = faiss.IndexFlatL2(d)
        flat.add(c.numpy())
        vw, vc, (_, vi) = timed(lambda: nearest(x, c), args.repeats)
        tw, tc, _ = timed(lambda: torch_path(x, c, 1, "l2", 256 << 20), args.repeats)
        fw, fc, (_, fi) = timed(lambda: flat.search(x.numpy(), 1), args.repeats)
        same = float(np.mean(vi[:, 0].numpy() == fi[:, 0]))
        print(f"| {n} | {d} | {k} | {vw:.3f} ({vc:.3f}) | {tw:.3f} ({tc:.3f}) | {fw:.3f} ({fc:.3f}) | {fw / vw:.2f}x | {same:.4f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
