"""ANN search, ann-benchmarks style: vqlib ``IVF{n},SAQ{b}`` against FAISS's quantized IVF indexes at equal bytes.

Data (offline): 128-d SIFT descriptors of scikit-image's bundled images
(``sift_queries_split(1000)``: 1,000 held-out queries) and 384-d all-MiniLM-L6-v2
embeddings of standard-library docstrings (1,000 held out at random). Ground
truth: vqlib ``FlatIndex``, checked against ``faiss.IndexFlatL2``.

For each budget of ``B`` bits per dimension the FAISS indexes are
``IVF{n},PQ{d·B/8}`` (8-bit codes), ``IVF{n},PQ{d·B/4}x4fs`` (fast scan),
``IVF{n},RaBitQfs{B}`` (RaBitQ fast scan) and ``IndexIVFRaBitQ`` with ``nb_bits = B``
(query bits 8), each with and without ``RFlat`` re-ranking (k_factor 4; ``--no-refine``
drops those). vqlib's SAQ (``IVF{n},SAQ{b}`` ± ``Refine``) is searched by the compiled
fast scan (``--backend numba``, the default), by the torch scan (``torch``), or by both
(``both``: the check that the compiled scan's recall is no lower than the torch scan's,
within 0.002, at every nprobe). vqlib's SAQ gets the largest average bit width
whose code size fits the *smallest* code of that group, so it never has more
bytes than a competitor; the table lists everyone's bytes per vector (codes,
factors and the 8-byte id as FAISS stores them in inverted lists). Every index
uses the same ``nlist``; ``nprobe`` is swept. Recall@10 follows ann-benchmarks:
a returned neighbour counts if its true distance is within the true 10th
distance (so ties are not penalised). QPS: all queries in one call, best of
``--repeats``, with 1 thread and with all threads (``faiss.omp_set_num_threads``
and ``torch.set_num_threads`` together).

For vqlib the script also records where search time goes: the share of
(query, code) pairs that each stage still had to read (compiled scan: the
first-stage bound of every code, then the exact estimate per segment), and the
share of the search spent in the scan (from one extra search with the index's
``profile`` on; the timed searches run without it); the rest is the coarse
search, query rotations and result assembly.

Summary ratios (printed and written): at the same nprobe, vqlib's QPS over each
FAISS index's; at equal recall, for every recall level above 0.8 that a FAISS
row reaches, vqlib's fastest setting with at least that recall over FAISS's
fastest index with at least that recall. Plots: QPS against recall@10, log
scale, one panel per data set, budget and thread count (ann-benchmarks style),
in ``benchmarks/results/``.

    python benchmarks/bench_anns.py --write BENCHMARKS.md               # full run (tens of minutes)
    python benchmarks/bench_anns.py --quick    # reduced: 10k base, SIFT only, 4 bits, 1 thread, no 8-bit PQ
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from report import write_block  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))

import faiss  # noqa: E402
from datasets import minilm_embeddings, sift_queries_split  # noqa: E402

from vqlib.anns import FlatIndex, index_factory, serialize_index, set_num_threads  # noqa: E402
from vqlib.quantizers import SAQ  # noqa: E402
from vqlib.quantizers.saq import default_granularity, plan_code_size, plan_segments  # noqa: E402

K = 10


def load(name: str, n_base: int | None, n_query: int):
    if name == "sift":
        base, queries = sift_queries_split(1000)
    elif name == "minilm":
        x = minilm_embeddings()
        order = np.random.default_rng(0).permutation(len(x))
        base, queries = x[np.sort(order[1000:])], x[order[:1000]]
    else:
        raise ValueError(f"unknown data set {name!r}; expected sift or minilm")
    if n_base is not None and n_base < len(base):
        base = base[np.sort(np.random.default_rng(1).permutation(len(base))[:n_base])]
    return np.ascontiguousarray(base, dtype=np.float32), np.ascontiguousarray(queries[:n_query], dtype=np.float32)


def ground_truth(base, queries):
    flat = FlatIndex(base.shape[1])
    flat.add(base)
    dist, ids = flat.search(queries, K)
    ref = faiss.IndexFlatL2(base.shape[1])
    ref.add(base)
    ref_d, ref_i = ref.search(queries, K)
    agree = recall_at_k(ref_i, base, queries, dist)
    if agree < 0.999 or not np.allclose(dist, ref_d, rtol=1e-3, atol=1e-3 * float(ref_d.max())):
        raise RuntimeError(f"FlatIndex ground truth disagrees with faiss.IndexFlatL2 (recall {agree:.4f})")
    return dist


def recall_at_k(found: np.ndarray, base: np.ndarray, queries: np.ndarray, true_d: np.ndarray) -> float:
    """ann-benchmarks' recall: returned ids whose true distance is within the true k-th distance (+ slack)."""
    ok = found >= 0
    vec = base[np.where(ok, found, 0)]
    d = ((vec - queries[:, None, :]).astype(np.float64) ** 2).sum(-1)
    kth = true_d[:, -1:].astype(np.float64)
    within = (d <= kth * (1 + 1e-5) + 1e-6) & ok
    return float(within.sum() / true_d.size)


def saq_bits_for(budget: int, residual_sample: np.ndarray) -> float:
    """Largest SAQ average bit width (steps of 1/16) whose all-inclusive code size fits ``budget`` bytes."""
    d = residual_sample.shape[1]
    saq = SAQ(d, 1.0).fit(torch.from_numpy(residual_sample))  # only the variances are needed
    var = saq.variances.tolist()
    bits = min(16.0, np.floor((8 * budget - 64) / d * 16) / 16)
    while bits > 0:
        if plan_code_size(plan_segments(var, bits, default_granularity(d))) <= budget:
            return float(bits)
        bits -= 1 / 16
    raise ValueError(f"no SAQ width fits {budget} bytes at d={d}")


def faiss_indexes(d: int, nlist: int, bits: int, pq8: bool = True, refine: bool = True) -> dict[str, callable]:
    m8, m4 = d * bits // 8, d * bits // 4

    def rabitq():
        index = faiss.IndexIVFRaBitQ(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2, True, bits)
        index.qb = 8  # 8-bit query quantisation: the accurate setting
        return index

    def rabitq_fs():
        index = faiss.index_factory(d, f"IVF{nlist},RaBitQfs{bits}")
        if hasattr(index, "qb"):
            index.qb = 8
        return index

    def refined(make):
        def build():
            index = faiss.IndexRefineFlat(make())
            index.k_factor = 4
            return index

        return build

    plain = {
        f"faiss IVF{nlist},PQ{m4}x4fs": lambda: faiss.index_factory(d, f"IVF{nlist},PQ{m4}x4fs"),
        f"faiss IVF{nlist},RaBitQfs{bits}": rabitq_fs,
        f"faiss IVF{nlist},RaBitQ{bits}": rabitq,
    }
    if pq8:
        plain[f"faiss IVF{nlist},PQ{m8}"] = lambda: faiss.index_factory(d, f"IVF{nlist},PQ{m8}")
    out = dict(plain)
    if refine:
        out |= {f"{label},RFlat": refined(make) for label, make in plain.items()}
    return out


def faiss_code_size(index) -> int:
    ivf = faiss.extract_index_ivf(index)
    return int(ivf.code_size) + 8 + (4 * index.d if isinstance(index, faiss.IndexRefine) else 0)


def faiss_nprobe(index, nprobe: int) -> None:
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe


def timed_search(search, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = search()
        best = min(best, time.perf_counter() - t0)
    return best, out


def set_threads(n: int) -> None:
    faiss.omp_set_num_threads(n)
    set_num_threads(n)


def run_dataset(name: str, args) -> list[dict]:
    base, queries = load(name, args.base, args.queries)
    d = base.shape[1]
    set_threads(max(args.threads))
    true_d = ground_truth(base, queries)
    print(f"\n{name}: {len(base)} base, {len(queries)} queries, d={d}, nlist={args.nlist}", flush=True)
    rows = []
    for bits in args.bits:
        builders = faiss_indexes(d, args.nlist, bits, pq8=not args.quick, refine=args.refine)
        built = {}
        for label, make in builders.items():
            set_threads(max(args.threads))
            index = make()
            t0 = time.perf_counter()
            index.train(base)
            index.add(base)
            built[label] = (index, time.perf_counter() - t0, faiss_code_size(index), len(faiss.serialize_index(index)))
        budget = min(size for label, (_, _, size, _) in built.items() if "RFlat" not in label) - 8
        # residual variances decide SAQ's plan; FAISS's coarse quantiser is as good as ours for that
        coarse = faiss.extract_index_ivf(next(iter(built.values()))[0]).quantizer
        sample = base[np.random.default_rng(0).permutation(len(base))[:20000]]
        sample = sample - coarse.reconstruct_n(0, args.nlist)[coarse.assign(sample, 1)[:, 0]]
        saq_bits = saq_bits_for(budget, sample)
        backends = ["numba", "torch"] if args.backend == "both" else [args.backend]
        for refine in (False, True) if args.refine else (False,):
            spec = f"IVF{args.nlist},SAQ{saq_bits:g}" + (",Refine" if refine else "")
            index = index_factory(d, spec)
            t0 = time.perf_counter()
            index.train(base)
            index.add(base)
            size = index.code_size  # a RefineIndex counts its float32 vectors too
            build_s, nbytes = time.perf_counter() - t0, len(serialize_index(index))
            for backend in backends:
                built[f"vqlib {spec} {backend}"] = (index, build_s, size, nbytes)
        for label, (index, build_s, size, nbytes) in built.items():
            if label.startswith("vqlib"):
                getattr(index, "base", index).backend = label.rsplit(" ", 1)[1]
                index.search(queries[:2], K)  # loads the compiled kernels, builds the scan layout
            for threads in args.threads:
                set_threads(threads)
                for nprobe in args.nprobe:
                    if nprobe > args.nlist:
                        continue
                    row = {"dataset": name, "budget_bits": bits, "method": label, "threads": threads, "nprobe": nprobe,
                           "bytes_per_vector": size, "index_bytes": nbytes, "build_s": round(build_s, 2)}  # fmt: skip
                    if label.startswith("vqlib"):
                        seconds, (_, found) = timed_search(lambda: index.search(queries, K, {"nprobe": nprobe}), args.repeats)
                        # one more search with per-stage timing on (the scan keeps only counters otherwise)
                        scan = getattr(index, "base", index)  # the IVFSAQIndex inside a RefineIndex
                        scan.profile = True
                        profiled, _ = timed_search(lambda: index.search(queries, K, {"nprobe": nprobe}), 1)
                        scan.profile = False
                        st = scan.last_search_stats
                        first = max(st["needed"][0], 1)
                        row["stage_needed"] = [round(n / first, 4) for n in st["needed"]]
                        row["scan_share"] = round(sum(st["seconds"]) / profiled, 3)
                        row["plan"] = [list(p) for p in scan.saq.plan]
                    else:
                        faiss_nprobe(index, nprobe)
                        seconds, (_, found) = timed_search(lambda: index.search(queries, K), args.repeats)
                    row["recall"] = round(recall_at_k(found, base, queries, true_d), 4)
                    row["qps"] = round(len(queries) / seconds, 1)
                    rows.append(row)
                    extra = f" stages {row['stage_needed']} scan {row['scan_share']:.0%}" if "stage_needed" in row else ""
                    print(f"  {label:<34} {size:>5} B/vec thr {threads} nprobe {nprobe:>4}: "
                          f"recall {row['recall']:.4f} QPS {row['qps']:>9.1f}{extra}", flush=True)  # fmt: skip
    return rows


def markdown(rows: list[dict], command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"Command: `{command}` ({now}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores)", ""]
    for (name, bits), group in _groups(rows, ("dataset", "budget_bits")).items():
        out += [f"**{name}, budget {bits} bits/dim** (recall@10 / QPS; bytes per vector include factors and the 8-byte id)", ""]
        threads = sorted({r["threads"] for r in group})
        nprobes = sorted({r["nprobe"] for r in group})
        head = "| method | B/vec | build s | index MiB | " + " | ".join(f"nprobe {p} ({t} thr)" for t in threads for p in nprobes) + " |"
        out += [head, "|" + "---|" * (4 + len(threads) * len(nprobes))]
        for method, rs in _groups(group, ("method",)).items():
            r0 = rs[0]
            cells = []
            for t in threads:
                for p in nprobes:
                    hit = [r for r in rs if r["threads"] == t and r["nprobe"] == p]
                    cells.append(f"{hit[0]['recall']:.3f} / {hit[0]['qps']:.0f}" if hit else "–")
            out.append(f"| {method[0]} | {r0['bytes_per_vector']} | {r0['build_s']} | {r0['index_bytes'] / 2**20:.1f} | " + " | ".join(cells) + " |")
        stages = [r for r in group if "stage_needed" in r and r["threads"] == threads[0]]
        if stages:
            out += ["", "Where vqlib's search time goes (1st thread setting): share of (query, code) pairs still read at each SAQ segment, and the share of search time spent scoring segments (the rest: coarse search, top-k merging, Python):", ""]
            for r in stages:
                out.append(f"- {r['method']} nprobe {r['nprobe']}: plan {r['plan']}, pairs read per stage {r['stage_needed']}, scoring {r['scan_share']:.0%} of the time")
        out.append("")
    return "\n".join(out)


def summary(rows: list[dict], min_recall: float = 0.8) -> list[str]:
    """Ratios: vqlib (compiled scan) over FAISS at the same nprobe and at equal recall; torch-scan recall check."""
    out = []
    for (name, bits, threads), group in _groups(rows, ("dataset", "budget_bits", "threads")).items():
        mine = [r for r in group if r["method"].startswith("vqlib") and not r["method"].endswith("torch")]
        theirs = [r for r in group if r["method"].startswith("faiss")]
        head = f"{name}, {bits} bits, {threads} thr"
        for (method,), rs in _groups(theirs, ("method",)).items():
            if "RFlat" in method:
                continue
            plain = [m for m in mine if "Refine" not in m["method"]]
            same = [f"{m['qps'] / t['qps']:.2f}" for t in rs for m in plain if m["nprobe"] == t["nprobe"]]
            out.append(f"{head}: same nprobe, vqlib SAQ / {method}: " + ", ".join(f"{v}x" for v in same))
        eq, seen = [], set()
        for level in sorted({t["recall"] for t in theirs if t["recall"] > min_recall}):
            best_f = max((t for t in theirs if t["recall"] >= level), key=lambda r: r["qps"])
            ok = [m for m in mine if m["recall"] >= level]
            pair = (id(best_f), id(max(ok, key=lambda r: r["qps"])) if ok else None)
            if pair in seen:  # same two settings as at the level below
                continue
            seen.add(pair)
            if ok:
                best_m = max(ok, key=lambda r: r["qps"])
                eq.append(f"R>={level:.3f}: {best_m['qps'] / best_f['qps']:.2f}x ({best_m['method'].split(' ')[1]} "
                          f"np{best_m['nprobe']} vs {best_f['method'].split(' ')[1]} np{best_f['nprobe']})")  # fmt: skip
            else:
                eq.append(f"R>={level:.3f}: vqlib never reaches it")
        out.append(f"{head}: equal recall, vqlib's fastest / FAISS's fastest: " + ("; ".join(eq) or f"no FAISS row above {min_recall}"))
        torch_rows = [r for r in group if r["method"].endswith("torch")]
        for t in torch_rows:
            twin = [m for m in mine if m["method"][: -len("numba")] == t["method"][: -len("torch")] and m["nprobe"] == t["nprobe"]]
            for m in twin:
                gap = t["recall"] - m["recall"]
                flag = "ok" if gap <= 0.002 else "LOWER"
                out.append(f"{head}: {m['method']} nprobe {m['nprobe']} recall {m['recall']:.4f} vs torch {t['recall']:.4f}: {flag}")
    return out


def _groups(rows, keys):
    out = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys) if len(keys) > 1 else (r[keys[0]],), []).append(r)
    return {(k if len(keys) > 1 else k): v for k, v in out.items()}


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (add it to the bench extra)")
        return False
    groups = _groups(rows, ("dataset", "budget_bits", "threads"))
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, ((name, bits, threads), group) in zip(axes[0], groups.items()):
        for (method,), rs in _groups(group, ("method",)).items():
            rs = sorted(rs, key=lambda r: r["nprobe"])
            ax.plot([r["recall"] for r in rs], [r["qps"] for r in rs], "o-" if method.startswith("vqlib") else "s--", label=method)
        ax.set(xlabel="recall@10", ylabel="QPS", yscale="log", title=f"{name}, {bits} bits/dim, {threads} thread(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sift,minilm")
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--nprobe", default="1,2,4,8,16,32,64")
    parser.add_argument("--bits", default="2,4", help="budgets in bits per dimension")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--base", type=int, default=None, help="subsample the base set")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backend", default="numba", choices=["numba", "torch", "both"],
                        help="vqlib's scan: compiled (default), torch, or both (recall check)")
    parser.add_argument("--no-refine", dest="refine", action="store_false", help="skip the re-ranked variants")
    parser.add_argument("--quick", action="store_true",
                        help="SIFT, 10k base, 200 queries, nlist 64, nprobe 1,4,16, 4 bits, 1 thread, no 8-bit PQ")
    parser.add_argument("--results", default=None, help="JSON rows (default benchmarks/results/bench_anns[_quick].json)")
    parser.add_argument("--plot", default=None, help="QPS-recall plot (default benchmarks/results/bench_anns[_quick].png)")
    parser.add_argument("--write", default=None, help="replace the bench_anns block of this markdown file")
    parser.add_argument("--block", default="bench_anns", help="name of the marked block --write replaces")
    args = parser.parse_args()
    if args.quick:
        args.base, args.queries, args.nlist, args.nprobe, args.bits, args.threads, args.repeats = 10000, 200, 64, "1,4,16", "4", "1", 2
        if "--datasets" not in sys.argv:
            args.datasets = "sift"
    stem = ROOT / "benchmarks" / "results" / ("bench_anns_quick" if args.quick else "bench_anns")
    args.results = args.results or str(stem.with_suffix(".json"))
    args.plot = args.plot or str(stem.with_suffix(".png"))
    args.nprobe = [int(v) for v in args.nprobe.split(",")]
    args.bits = [int(v) for v in args.bits.split(",")]
    args.threads = [int(v) for v in str(args.threads).split(",")]
    rows = []
    for name in args.datasets.split(","):
        rows += run_dataset(name, args)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(rows, indent=1))
    plotted = plot(rows, Path(args.plot))
    text = markdown(rows, "python benchmarks/bench_anns.py " + " ".join(sys.argv[1:]))
    text += "\n" + "\n".join(f"- {line}" for line in summary(rows)) + "\n"
    if plotted:
        text += f"\n![recall vs QPS]({Path(args.plot).relative_to(ROOT) if Path(args.plot).is_relative_to(ROOT) else args.plot})\n"
    print("\n" + text)
    if args.write:
        write_block(args.write, args.block, text, heading="## ANN search (issue 5)")


if __name__ == "__main__":
    main()
