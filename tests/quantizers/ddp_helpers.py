"""Run a function on two gloo CPU ranks and collect what each returns (tests of identical state)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, world, port, fn, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = fn(rank)
    finally:
        dist.destroy_process_group()


def run_two_ranks(fn) -> tuple[dict, dict]:
    """``fn(rank) -> dict of tensors`` on two ranks; returns both dicts. ``fn`` must be importable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_worker, args=(r, 2, port, fn, results)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(240)
            assert p.exitcode == 0, f"worker exited with {p.exitcode}"
        return dict(results[0]), dict(results[1])
