"""Two CPU processes (gloo): ranks see different data and must end with identical codebooks."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqlib.quantizers import FSQ, SimVQ, VectorQuantizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights, as DDP guarantees
        quantizers = {
            "ema-kmeans-dead": VectorQuantizer(8, 64, init="kmeans", kmeans_batches=3, dead_code_threshold=0.3, decay=0.5),
            "grad-cosine-dead": VectorQuantizer(
                8, 64, metric="cosine", codebook_update="gradient", dead_code_threshold=0.3, decay=0.5
            ),
            "simvq": SimVQ(8, 64),
            "fsq": FSQ([5, 5, 3], dim=8),
        }
        torch.manual_seed(100 + rank)  # different data and different local randomness per rank
        for name, q in quantizers.items():
            restarted = 0
            for step in range(8):
                if isinstance(q, VectorQuantizer) and bool(q.initted):
                    restarted += int((q.cluster_size < q.dead_code_threshold).sum())
                # rank 1 sees shifted data, so per-rank statistics differ
                x = torch.randn(40 + 10 * rank, 8) + 3.0 * rank
                q(x)
            state = {k: v.clone() for k, v in q.state_dict().items()}
            state["usage"] = torch.tensor(q.usage())  # collective: sums both ranks' counts
            state["local_total"] = torch.tensor(q.usage(sync=False).total)
            state["restarted"] = torch.tensor(restarted)
            results[(name, rank)] = state
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_identical_codebooks_and_counts():
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        port = _free_port()
        procs = [ctx.Process(target=_worker, args=(r, 2, port, results)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(240)
            assert p.exitcode == 0, f"worker exited with {p.exitcode}"
        results = dict(results)
    names = {name for name, _ in results}
    assert len(names) == 4
    for name in names:
        a, b = results[(name, 0)], results[(name, 1)]
        assert a.keys() == b.keys()
        for key in a:
            if key != "local_total":
                assert torch.equal(a[key], b[key]), f"{name}: {key} differs between ranks"
        # both ranks' batches were counted: 8 steps x (40 + 50) rows
        assert a["usage"][3] == 8 * 90, name
        assert (a["local_total"], b["local_total"]) == (8 * 40, 8 * 50), name
        if name != "simvq" and name != "fsq":
            assert a["restarted"] > 0, f"{name}: no dead code was restarted, the test proves nothing"
