"""vqlib's compiled fast scan of SAQ codes against FAISS's fast-scan indexes, one thread, same nlist.

FAISS: ``IVF{n},PQ{d·B/4}x4fs`` (4-bit PQ fast scan) and ``IVF{n},RaBitQfs{B}`` (RaBitQ fast scan, B bits);
vqlib: ``IVF{n},SAQ{b}`` with the largest ``b`` whose code fits the PQ fast-scan code (bytes per vector include
factors and the 8-byte id), searched by the compiled scan (``backend="numba"``) and, at one nprobe, by the torch
scan for reference. Reported: recall@10 (ann-benchmarks' rule, as bench_anns.py) and QPS per nprobe, the QPS ratio
at the same nprobe, and at equal recall: for each FAISS row, vqlib's fastest setting with at least its recall.

    python benchmarks/bench_fastscan.py                       # SIFT (~39k) and MiniLM (all sentences)
    python benchmarks/bench_fastscan.py --quick               # 10k base, 300 queries, nlist 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import faiss  # noqa: E402
from bench_anns import K, faiss_code_size, ground_truth, recall_at_k, saq_bits_for, timed_search  # noqa: E402
from datasets import minilm_embeddings, sift_queries_split  # noqa: E402

from vqlib.anns import fastscan, index_factory, set_num_threads  # noqa: E402


def load(name, n_base, n_query, minilm_n):
    if name == "sift":
        base, queries = sift_queries_split(1000)
    else:
        x = minilm_embeddings(minilm_n)
        order = np.random.default_rng(0).permutation(len(x))
        base, queries = x[np.sort(order[1000:])], x[order[:1000]]
    if n_base and n_base < len(base):
        base = base[np.sort(np.random.default_rng(1).permutation(len(base))[:n_base])]
    return np.ascontiguousarray(base, np.float32), np.ascontiguousarray(queries[:n_query], np.float32)


def run(name, args):
    base, queries = load(name, args.base, args.queries, args.minilm_n)
    d = base.shape[1]
    true_d = ground_truth(base, queries)
    rows = []

    def record(method, nprobe, size, search):
        seconds, (_, found) = timed_search(search, args.repeats)
        row = {"dataset": name, "method": method, "nprobe": nprobe, "bytes_per_vector": size,
               "recall": round(recall_at_k(found, base, queries, true_d), 4), "qps": round(len(queries) / seconds, 1)}  # fmt: skip
        rows.append(row)
        print(f"  {method:<30} {size:>4} B nprobe {nprobe:>3}: recall {row['recall']:.4f} QPS {row['qps']:>9.1f}", flush=True)

    m4 = d * args.bits // 4
    pq = faiss.index_factory(d, f"IVF{args.nlist},PQ{m4}x4fs")
    rq = faiss.index_factory(d, f"IVF{args.nlist},RaBitQfs{args.bits}")
    for index in (pq, rq):
        index.train(base)
        index.add(base)
    budget = faiss_code_size(pq) - 8
    coarse = faiss.extract_index_ivf(pq).quantizer
    sample = base[np.random.default_rng(0).permutation(len(base))[:20000]]
    sample = sample - coarse.reconstruct_n(0, args.nlist)[coarse.assign(sample, 1)[:, 0]]
    bits = saq_bits_for(budget, sample)
    vq = index_factory(d, f"IVF{args.nlist},SAQ{bits:g}")
    vq.train(base)
    vq.add(base)
    vq.backend = "numba"
    vq.search(queries[:2], K)  # loads (or compiles once) the kernels and builds the layout
    print(f"\n{name}: {len(base)} base, {len(queries)} queries, d={d}, nlist={args.nlist}, SAQ plan {vq.saq.plan}, "
          f"fast scan {fastscan.default_simd()}", flush=True)  # fmt: skip
    for nprobe in args.nprobe:
        for label, index in ((f"faiss PQ{m4}x4fs", pq), (f"faiss RaBitQfs{args.bits}", rq)):
            faiss.extract_index_ivf(index).nprobe = nprobe
            record(label, nprobe, faiss_code_size(index), lambda: index.search(queries, K))
        record(f"vqlib SAQ{bits:g} numba", nprobe, vq.code_size, lambda: vq.search(queries, K, {"nprobe": nprobe}))
    vq.backend = "torch"
    p = args.nprobe[len(args.nprobe) // 2]
    record(f"vqlib SAQ{bits:g} torch", p, vq.code_size, lambda: vq.search(queries, K, {"nprobe": p}))
    return rows


def summary(rows):
    out = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == name]
        mine = [r for r in rs if r["method"].endswith("numba")]
        for method in dict.fromkeys(r["method"] for r in rs if r["method"].startswith("faiss")):
            theirs = [r for r in rs if r["method"] == method]
            same = [m["qps"] / t["qps"] for m in mine for t in theirs if m["nprobe"] == t["nprobe"]]
            eq = []
            for t in theirs:
                ok = [m["qps"] for m in mine if m["recall"] >= t["recall"] - 1e-9]
                if ok:
                    eq.append(f"R {t['recall']:.3f}: {max(ok) / t['qps']:.2f}x")
            out.append(f"{name}: vqlib/{method}: same nprobe {', '.join(f'{v:.2f}x' for v in same)}; equal recall {'; '.join(eq) or 'never reached'}")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sift,minilm")
    parser.add_argument("--nlist", type=int, default=256)
    parser.add_argument("--nprobe", default=None, help="comma-separated (default 1,2,4,8,16,32,64; --quick: 1,4,16)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--base", type=int, default=None)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--minilm-n", type=int, default=None, help="embed only the first n sentences")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", default="runs/bench_fastscan.json")
    args = parser.parse_args()
    if args.quick:
        args.base, args.queries, args.nlist, args.repeats = 10000, 300, 64, 2
    args.nprobe = [int(v) for v in (args.nprobe or ("1,4,16" if args.quick else "1,2,4,8,16,32,64")).split(",")]
    faiss.omp_set_num_threads(1)
    set_num_threads(1)
    rows = [r for name in args.datasets.split(",") for r in run(name, args)]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(rows, indent=1))
    print("\n" + summary(rows))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
