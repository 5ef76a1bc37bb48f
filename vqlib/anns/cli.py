"""``vqlib anns build|search|bench``: indexes from the command line.

    vqlib anns build base.fvecs --factory "IVF256,SAQ4" -o sift.vqann
    vqlib anns search sift.vqann queries.npy -k 10 --nprobe 16 -o results.npz
    vqlib anns bench base.npy queries.npy --factory "IVF256,SAQ4" --nprobe 1,4,16,64

Vectors are read from ``.npy`` (2-D float arrays) or ``.fvecs`` (per vector: int32
dimension, then that many float32 values).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np


def load_vectors(path: str | Path) -> np.ndarray:
    """``(n, d)`` float32 vectors from a ``.npy`` or ``.fvecs`` file."""
    path = Path(path)
    if path.suffix == ".fvecs":
        raw = np.fromfile(path, dtype="<i4")
        if raw.size == 0:
            raise ValueError(f"{path}: empty .fvecs file")
        d = int(raw[0])
        if d < 1 or raw.size % (d + 1):
            raise ValueError(f"{path}: not a valid .fvecs file (dimension {d}, {raw.size * 4} bytes)")
        rows = raw.reshape(-1, d + 1)
        if (rows[:, 0] != d).any():
            raise ValueError(f"{path}: vectors of different dimensions in one .fvecs file")
        return np.ascontiguousarray(rows[:, 1:]).view("<f4").astype(np.float32)
    if path.suffix == ".npy":
        x = np.load(path, allow_pickle=False)
        if x.ndim != 2 or x.dtype.kind != "f":
            raise ValueError(f"{path}: expected a 2-D float array, got shape {x.shape} and dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=np.float32)
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected .npy or .fvecs")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="vqlib anns", description="FAISS-style ANN indexes on SAQ codes")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train an index on base vectors, add them, write the index file")
    b.add_argument("base", help=".npy or .fvecs")
    b.add_argument("--factory", required=True, help='e.g. "Flat", "SAQ4", "IVF256,SAQ4,Refine"')
    b.add_argument("--metric", default="l2", choices=("l2", "ip"))
    b.add_argument("--train", default=None, help="training vectors (default: the base vectors)")
    b.add_argument("-o", "--output", required=True)
    s = sub.add_parser("search", help="k nearest neighbours of query vectors")
    s.add_argument("index")
    s.add_argument("queries", help=".npy or .fvecs")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--nprobe", type=int, default=None)
    s.add_argument("--bound-m", type=float, default=None, help="multi-stage pruning bound (0: full scan)")
    s.add_argument("-o", "--output", default=None, help=".npz with D and I (default: print the first rows)")
    e = sub.add_parser("bench", help="recall@k and QPS of one factory string against exact search")
    e.add_argument("base")
    e.add_argument("queries")
    e.add_argument("--factory", required=True)
    e.add_argument("--metric", default="l2", choices=("l2", "ip"))
    e.add_argument("-k", type=int, default=10)
    e.add_argument("--nprobe", default="1", help="comma-separated values to sweep")
    e.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    from . import FlatIndex, index_factory, set_num_threads, write_index

    if getattr(args, "threads", None):
        set_num_threads(args.threads)
    if args.command == "build":
        base = load_vectors(args.base)
        index = index_factory(base.shape[1], args.factory, metric=args.metric)
        t0 = time.perf_counter()
        index.train(load_vectors(args.train) if args.train else base)
        index.add(base)
        write_index(index, args.output)
        print(f"built {args.factory} on {index.ntotal} vectors of dim {index.d} in {time.perf_counter() - t0:.2f} s; "
              f"wrote {args.output} ({Path(args.output).stat().st_size} bytes)")  # fmt: skip
    elif args.command == "search":
        index = _read_index_arg(args.index)
        q = load_vectors(args.queries)
        params = {k: v for k, v in (("nprobe", args.nprobe), ("bound_m", args.bound_m)) if v is not None}
        t0 = time.perf_counter()
        D, I = index.search(q, args.k, params)
        dt = time.perf_counter() - t0
        if args.output:
            from ..io import atomic_write

            buf = io.BytesIO()
            np.savez(buf, D=D, I=I)
            atomic_write(args.output, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
            print(f"searched {len(q)} queries in {dt:.3f} s; wrote D and I to {args.output}")
        else:
            for row in range(min(len(q), 5)):
                print(f"query {row}: ids {I[row].tolist()} distances {np.round(D[row], 4).tolist()}")
    else:
        base, q = load_vectors(args.base), load_vectors(args.queries)
        exact = FlatIndex(base.shape[1], args.metric)
        exact.add(base)
        _, gt = exact.search(q, args.k)
        index = index_factory(base.shape[1], args.factory, metric=args.metric)
        t0 = time.perf_counter()
        index.train(base)
        index.add(base)
        print(f"{args.factory}: build {time.perf_counter() - t0:.2f} s, {len(base)} vectors, {len(q)} queries")
        print(f"{'nprobe':>7} {'recall@' + str(args.k):>10} {'QPS':>10}")
        for nprobe in [int(v) for v in args.nprobe.split(",")]:
            t0 = time.perf_counter()
            _, I = index.search(q, args.k, {"nprobe": nprobe} if "nprobe" in index.search_params else None)
            dt = time.perf_counter() - t0
            print(f"{nprobe:>7} {recall_at_k(I, gt):>10.4f} {len(q) / dt:>10.1f}")


def _read_index_arg(path: str):
    """``read_index`` for a command-line argument: errors name the file and say how to get an index."""
    from .serialize import IndexFileError, read_index

    path = Path(path)
    hint = f"expected an index file written by `vqlib anns build BASE --factory ... -o {path.stem}.vqann`"
    if path.suffix in (".npy", ".fvecs"):
        hint += f" (vectors such as {path.name} go after the index, as the queries)"
    if not path.is_file():
        raise IndexFileError(f"{path} does not exist or is not a file; {hint}")
    try:
        return read_index(path)
    except IndexFileError as err:
        raise IndexFileError(f"{path}: {err}; {hint}") from err


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """ann-benchmarks' recall: the share of the true k neighbours found among the k returned."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))
