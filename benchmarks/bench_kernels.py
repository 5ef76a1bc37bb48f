"""Codebook-lookup kernels (``vqlib.kernels``) against cuBLAS fp16 on the dense weight.

GPU part (needs CUDA and Triton): for M in {1, 16, 256, 4096} rows and the layer shapes
of a DiT-XL/2 (in→out 1152→1152, 1152→4608, 4608→1152) and of a 7B LLM (4096→4096,
4096→11008), at about 2, 3 and 4 bits per weight, it times

- ``fp16``: ``F.linear`` on the dense fp16 weight (cuBLAS), the baseline;
- ``gemm``: the fused dequantise-GEMM kernel; ``lut``: the look-up-table kernel (M ≤ 8,
  no sign bits); ``dequant+cuBLAS``: the dequantise kernel then ``F.linear``;
- ``auto``: what ``VQLinear.forward`` picks (``choose_kernel``),

with ``triton.testing.do_bench`` (median), and reports the speed-up of ``auto`` over fp16,
the fastest kernel (to set the dispatch rule from), and at M = 1 the fraction of memory
bandwidth reached: bytes the compressed layer must move (codes, codebook, scales, signs,
x, y) over time, against the bandwidth of a device-to-device copy measured in the same run.

Formats (bits per weight are computed from the stored tensors by ``VQLinear``):
``2 bpw`` v = 4, K = 256 (uint8 codes); ``3 bpw`` v = 4, K = 256 plus one sign bit per
weight; ``4 bpw`` v = 2, K = 256; all with fp16 codebooks and fp32 scales. Codes and
codebooks are random: kernel time does not depend on the values.

Without a GPU, the CPU part runs the torch reference (dequantise + ``F.linear``, and the
look-up-table reference at M = 1) against dense fp32 ``F.linear`` on small M and shapes,
checks their results agree, and the GPU rows are written as "not measured yet".

    python benchmarks/bench_kernels.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from report import machine_line, write_block  # noqa: E402

from vqlib.kernels import VQLinear, choose_kernel, vq_triton  # noqa: E402

ROWS = [1, 16, 256, 4096]
SHAPES = [(1152, 1152), (1152, 4608), (4608, 1152), (4096, 4096), (4096, 11008)]  # (in, out)
FORMATS = {  # name: (vector size, codebook size, signs)
    "2 bpw": (4, 256, False),
    "3 bpw": (4, 256, True),
    "4 bpw": (2, 256, False),
}
CPU_ROWS = [1, 8, 16]
CPU_SHAPES = [(1152, 1152), (1152, 4608)]


def md_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def random_layer(d_in: int, d_out: int, fmt: str, device, kernel: str = "auto") -> VQLinear:
    v, k, signs = FORMATS[fmt]
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(d_in, d_out, bias=True, device=device)
    codebook = torch.randn(1, k, v, generator=g).abs().half()
    codes = torch.randint(0, k, (d_out, d_in // v), generator=g)
    scales = torch.rand(d_out, generator=g) * 0.02 + 0.01
    neg = torch.rand(d_out, d_in, generator=g) < 0.5 if signs else None
    return VQLinear.from_linear(lin, codebook, codes, scales, neg, kernel=kernel).to(device)


def stored_bytes(layer: VQLinear) -> int:
    ts = (layer.codes, layer.codebook, layer.scales, layer.signs, layer.bias)
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def best_of(fn, repeat: int = 5, number: int = 3) -> float:
    """Seconds per call, the best of ``repeat`` batches of ``number`` calls (CPU timing)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t) / number)
    return best


# ---- CPU: the torch reference, to prove the harness ------------------------------------


def cpu_part() -> str:
    rows = []
    for d_in, d_out in CPU_SHAPES:
        for fmt in FORMATS:
            layer = random_layer(d_in, d_out, fmt, "cpu", kernel="reference")
            w = layer.dequantize(torch.float32)
            for m in CPU_ROWS:
                x = torch.randn(m, d_in)
                dense = best_of(lambda: F.linear(x, w, layer.bias))
                ref = best_of(lambda: layer(x))
                want = F.linear(x, w, layer.bias)
                err = (layer(x) - want).abs().max().item()
                lut_ms, lut_err = "–", "–"
                if m <= 8 and layer.signs is None:
                    layer.kernel = "reference-lut"
                    lut_ms = f"{best_of(lambda: layer(x)) * 1e3:.2f}"
                    lut_err = f"{(layer(x) - want).abs().max().item():.1e}"
                    layer.kernel = "reference"
                rows.append([
                    f"{d_in}→{d_out}", fmt, f"{layer.bits_per_weight:.3f}", m, f"{dense * 1e3:.2f}",
                    f"{ref * 1e3:.2f}", lut_ms, f"{err:.1e}", lut_err,
                ])  # fmt: skip
                log(f"cpu {d_in}->{d_out} {fmt} M={m}: dense {dense * 1e3:.2f} ms, reference {ref * 1e3:.2f} ms")
    head = ["in→out", "format", "bits/weight", "M", "dense fp32 ms", "reference ms", "reference-lut ms",
            "max |err| reference", "max |err| lut"]  # fmt: skip
    return (
        "### CPU: torch reference (harness check, not a kernel measurement)\n\n"
        "Dense fp32 `F.linear` on the dequantised weight against `VQLinear` with `kernel=\"reference\"` "
        "(dequantise every call, then `F.linear`) and `\"reference-lut\"` (look-up tables, M ≤ 8, no signs); "
        "best of 5 × 3 calls; errors against the dense result.\n\n" + md_table(head, rows) + "\n"
    )


# ---- GPU: the Triton kernels against cuBLAS --------------------------------------------


def gpu_rows_not_measured() -> list[list]:
    out = []
    for d_in, d_out in SHAPES:
        for fmt in FORMATS:
            for m in ROWS:
                out.append([f"{d_in}→{d_out}", fmt, m] + ["not measured yet"] * 6)
    return out


GPU_HEAD = ["in→out", "format", "M", "fp16 cuBLAS µs", "gemm µs", "lut µs", "dequant+cuBLAS µs",
            "auto (kernel) µs", "speed-up of auto; BW fraction at M=1"]  # fmt: skip


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write), the practical ceiling."""
    from triton.testing import do_bench

    a = torch.empty(1 << 29, dtype=torch.float16, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a))
    return 2 * a.numel() * a.element_size() / (ms * 1e-3)


def gpu_part() -> str:
    from triton.testing import do_bench

    bandwidth = copy_bandwidth()
    rows, fastest = [], []
    for d_in, d_out in SHAPES:
        for fmt in FORMATS:
            layer = random_layer(d_in, d_out, fmt, "cuda")
            w16 = layer.dequantize(torch.float16)
            b16 = layer.bias.half()
            tensors = (layer.codebook, layer.codes, layer.scales, layer.signs)
            for m in ROWS:
                x = torch.randn(m, d_in, device="cuda", dtype=torch.float16)
                want = F.linear(x.float(), w16.float(), b16.float())
                times = {"fp16": do_bench(lambda: F.linear(x, w16, b16)) * 1e3}
                runs = {
                    "gemm": lambda: vq_triton.gemm(x, *tensors, layer.bias),
                    "dequant": lambda: F.linear(x, vq_triton.dequantize(*tensors, dtype=torch.float16), b16),
                }
                if m <= vq_triton.LUT_MAX_ROWS and layer.signs is None:
                    runs["lut"] = lambda: vq_triton.lut_linear(x, *tensors, layer.bias)
                for name, fn in runs.items():
                    err = (fn().float() - want).abs().max().item()
                    if err > 1e-2 * want.abs().max().item() + 1e-3:
                        case = f"{d_in}->{d_out} {fmt} M={m}"
                        raise RuntimeError(f"{name} disagrees with the dense result at {case}: max error {err}")
                    times[name] = do_bench(fn) * 1e3
                auto = {"triton-gemm": "gemm", "triton-lut": "lut", "triton-dequant": "dequant"}[
                    choose_kernel(m, layer, x.dtype)
                ]
                speed = times["fp16"] / times[auto]
                note = f"{speed:.2f}×"
                if m == 1:
                    moved = stored_bytes(layer) + x.numel() * 2 + d_out * 2
                    note += f"; {moved / (times[auto] * 1e-6) / bandwidth:.0%}"
                best = min((t, k) for k, t in times.items() if k != "fp16")[1]
                fastest.append([f"{d_in}→{d_out}", fmt, m, best, auto])
                cell = lambda k: f"{times[k]:.1f}" if k in times else "–"  # noqa: E731
                rows.append([f"{d_in}→{d_out}", fmt, m, cell("fp16"), cell("gemm"), cell("lut"), cell("dequant"),
                             f"{times[auto]:.1f} ({auto})", note])  # fmt: skip
                log(" ".join(str(c) for c in rows[-1]))
    return (
        f"### GPU: {torch.cuda.get_device_name()}\n\n"
        f"Device-to-device copy bandwidth measured in this run: {bandwidth / 1e9:.0f} GB/s (the BW fraction's "
        "denominator). Median times from `triton.testing.do_bench`; fp16 activations.\n\n"
        + md_table(GPU_HEAD, rows) + "\n\nFastest kernel per case (set `choose_kernel` from this):\n\n"
        + md_table(["in→out", "format", "M", "fastest", "auto picks"], fastest) + "\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads for the CPU part (default 1)")
    p.add_argument("--write", default=None, help="markdown file whose bench_kernels block is replaced")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    on_gpu = torch.cuda.is_available() and vq_triton.HAS_TRITON and not vq_triton.INTERPRET
    parts = [gpu_part()] if on_gpu else []
    parts.append(cpu_part())
    if not on_gpu:
        parts.append(
            "### GPU: not measured yet\n\nNo GPU was available for this run. Targets (issue 6): at M = 1 at "
            "least 2.5× faster than fp16 at 2 bits per weight; at M ≥ 256 at most 1.15× the fp16 time.\n\n"
            + md_table(GPU_HEAD, gpu_rows_not_measured()) + "\n"
        )
    total = time.perf_counter() - t_start
    text = "\n".join(parts)
    print(text)
    log(f"total {total:.0f} s")
    if args.write:
        cmd = "python benchmarks/bench_kernels.py " + " ".join(sys.argv[1:])
        versions = f"torch {torch.__version__}"
        if vq_triton.HAS_TRITON:
            versions += f", triton {vq_triton.triton.__version__}"
        meta = (
            "## Codebook-lookup kernels (issue 6)\n\n"
            f"Command: `{cmd.strip()}`\n\n"
            + machine_line(f"torch threads {torch.get_num_threads()}", versions)
            + f"; total wall time {total / 60:.1f} min\n\n"
        )
        write_block(args.write, "bench_kernels", meta + text)


if __name__ == "__main__":
    main()
