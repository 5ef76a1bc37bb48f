import pytest
import torch
import torch.nn.functional as F

from vqlib.quantizers import VectorQuantizer, nearest


def test_ema_update_matches_the_formula():
    torch.manual_seed(0)
    k, d, decay, eps = 8, 3, 0.9, 1e-5
    q = VectorQuantizer(d, k, decay=decay, eps=eps)
    x = torch.randn(64, d)
    q(x)  # step 0: statistics start at the uniform expectation
    embed0 = q.embed.clone()
    size0, sum0 = q.cluster_size.clone(), q.embed_sum.clone()
    x = torch.randn(64, d) * 2
    out = q(x)
    idx = nearest(x, embed0)[1][:, 0]
    assert torch.equal(out.indices, idx)
    counts = torch.bincount(idx, minlength=k).float()
    sums = torch.zeros(k, d).index_add_(0, idx, x)
    size = decay * size0 + (1 - decay) * counts
    esum = decay * sum0 + (1 - decay) * sums
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
    torch.testing.assert_close(q.cluster_size, size)
    torch.testing.assert_close(q.embed, esum / smoothed[:, None])
    # the output of this step used the codebook before the update
    torch.testing.assert_close(out.quantized, embed0[idx])


def test_eval_and_encode_do_not_update():
    q = VectorQuantizer(4, 16, init="kmeans", dead_code_threshold=1.0)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q.eval()
    q(torch.randn(32, 4))
    q.train()
    q.encode(torch.randn(32, 4))
    for name, value in q.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_kmeans_init_uses_several_batches():
    torch.manual_seed(0)
    # each batch holds one cluster: k-means over the first batch alone cannot find the others
    centers = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    q = VectorQuantizer(2, 4, init="kmeans", kmeans_batches=4, kmeans_iters=20)
    for i in range(4):
        assert not bool(q.initted)
        q(centers[i] + 0.01 * torch.randn(50, 2))
    assert bool(q.initted)
    found = nearest(centers, q.embed)[0][:, 0]
    assert found.max() < 0.01, "every cluster of every batch gets a code"


def test_dead_codes_restart_from_batch():
    torch.manual_seed(0)
    q = VectorQuantizer(2, 16, dead_code_threshold=0.5, decay=0.5)
    far = torch.randn(16, 2) + 100.0  # every code but the nearest is dead on this data
    for _ in range(4):
        q(far + 0.1 * torch.randn(16, 2))
    dist = torch.cdist(q.embed, far).min(1).values
    assert (dist < 2).float().mean() > 0.5, "dead codes moved onto the data"


def test_frozen_codebook_never_changes_but_counts_usage():
    q = VectorQuantizer(4, 8, codebook_update="frozen")
    before = q.embed.clone()
    for _ in range(3):
        q(torch.randn(20, 4))
    assert torch.equal(q.embed, before)
    assert q.usage().total == 60
    with pytest.raises(ValueError, match="dead-code restart"):
        VectorQuantizer(4, 8, codebook_update="frozen", dead_code_threshold=1)


def test_cosine_codes_are_unit_and_nearest_by_angle():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 32, metric="cosine", codebook_update="gradient").eval()
    x = torch.randn(40, 8) * 5
    out = q(x)
    torch.testing.assert_close(out.quantized.norm(dim=-1), torch.ones(40))
    sims = F.normalize(x, dim=-1) @ q.codebook.T
    assert torch.equal(out.indices, sims.argmax(1))


def test_gradient_codebook_loss_terms():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 8, codebook_update="gradient", commitment_weight=0.25)
    x = torch.randn(10, 4, requires_grad=True)
    out = q(x)
    zq = q.embed.detach()[out.indices]
    expected = 0.25 * F.mse_loss(x, zq) + F.mse_loss(zq, x)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    torch.testing.assert_close(x.grad, 0.25 * 2 * (x - zq).detach() / x.numel())


def test_bad_config():
    with pytest.raises(ValueError, match="metric"):
        VectorQuantizer(4, 8, metric="l1")
    with pytest.raises(ValueError, match="codebook_update"):
        VectorQuantizer(4, 8, codebook_update="sgd")
    with pytest.raises(ValueError, match="init"):
        VectorQuantizer(4, 8, init="zeros")
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(4, 8, decay=1.0)
    with pytest.raises(ValueError, match="gradient"):
        VectorQuantizer(4, 8, gradient="gumbel")


# ---- dead-code restart: safe at any threshold ----------------------------------


def _noisy_clusters(n=4096, d=32, clusters=16, seed=0):
    """Clusters whose spread dominates: a raw row is a worse code than the mean (rel. MSE of
    a codebook of raw rows ~ 2σ²d / (σ²d + ‖c‖²) > 1), a centroid a better one."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 0.5
    return centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, d, generator=g)


def _train(q, x, steps, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    q.train()
    for _ in range(steps):
        q(x[torch.randperm(len(x), generator=g)[:batch]])
    return q.eval()


@pytest.mark.parametrize("threshold", [0.01, 0.1, 1.0, 2.0, 1e3, 1e9])
def test_no_threshold_leaves_a_codebook_worse_than_the_mean(threshold):
    """K = 8 x batch, as K = 16384 at batch 2048: the old rule (hits per batch, restart every code
    under 2 from the batch's rows, with repeats) ended above 1 here (1.085 at thresholds 2 and 1000)."""
    torch.manual_seed(0)
    x = _noisy_clusters()
    q = _train(VectorQuantizer(32, 512, init="kmeans", dead_code_threshold=threshold, decay=0.9), x, 60, 64)
    out = q(x)
    rel = float((out.quantized - x).pow(2).mean() / (x - x.mean(0)).pow(2).mean())
    assert rel < 0.8, f"relative MSE {rel:.3f} at threshold {threshold}"


def test_threshold_is_a_fraction_of_the_uniform_share():
    q = VectorQuantizer(2, 4, dead_code_threshold=0.5)
    q.cluster_size.copy_(torch.tensor([10.0, 4.0, 2.0, 0.9]))  # uniform share 16.9 / 4 = 4.225 hits
    assert q.dead_codes().tolist() == [False, False, True, True]
    q.cluster_size.mul_(1000)  # a thousand times the batch: the same codes are dead
    assert q.dead_codes().tolist() == [False, False, True, True]


def test_restarted_codes_are_distinct_rows_capped_and_ema_consistent():
    torch.manual_seed(0)
    k, batch = 256, 16  # one batch cannot supply the dead codes
    q = VectorQuantizer(8, k, dead_code_threshold=1e6, max_restart_fraction=0.25, reservoir_size=64, decay=0.9)
    q(torch.randn(batch, 8))  # step 0: uniform statistics, no restart
    assert int((q.restarted_at >= 0).sum()) == 0
    x = torch.randn(batch, 8)
    q(x)
    restarted = q.restarted_at >= 0
    # one batch supplies at most its own rows, each once
    assert 0 < int(restarted.sum()) <= batch
    for _ in range(8):
        q(torch.randn(batch, 8))
    restarted = q.restarted_at >= 0
    assert int(restarted.sum()) > batch, "later batches (the reservoir) supplied more codes than one batch holds"
    assert int(restarted.sum()) <= 9 * int(0.25 * k)
    rows = q.embed[restarted]
    assert len(torch.unique(rows, dim=0)) == len(rows), "two codes restarted from the same row"
    # EMA statistics: each code sits at m_k / N_k (up to Laplace smoothing), restarted ones included
    n = q.cluster_size.sum()
    smoothed = (q.cluster_size + q.eps) / (n + k * q.eps) * n
    torch.testing.assert_close(q.embed, q.embed_sum / smoothed[:, None])


def test_restart_sets_statistics_at_the_new_position():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 32, dead_code_threshold=0.5, decay=0.9)
    q(torch.randn(64, 4))
    q.cluster_size[:8] = 0.0  # eight dead codes
    q.embed_sum[:8] = 0.0
    share = float(q.cluster_size.sum() / 32)
    q._restart_dead_codes(torch.randn(64, 4) + 5.0)
    torch.testing.assert_close(q.cluster_size[:8], torch.full((8,), share))
    torch.testing.assert_close(q.embed_sum[:8], q.embed[:8] * share)
    assert (q.embed[:8].mean(1) > 3).all(), "restarted from the new rows"
    assert (q.restarted_at[:8] == int(q.steps)).all() and (q.restarted_at[8:] < 0).all()


def test_restarted_code_is_not_restarted_again_within_the_ema_window():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 64, dead_code_threshold=1e6, max_restart_fraction=1.0, decay=0.8)  # window 5 steps
    history = []
    for _ in range(12):
        q(torch.randn(256, 4))
        history.append(q.restarted_at.clone())
    last = torch.stack(history)  # restart step of every code after each step
    for code in range(64):
        steps = sorted(set(last[:, code].tolist()) - {-(1 << 40)})
        assert all(b - a >= 5 for a, b in zip(steps, steps[1:])), (code, steps)


def test_kmeans_with_fewer_rows_than_codes_fills_the_rest_by_restart():
    torch.manual_seed(0)
    x = _noisy_clusters(n=2048, d=8)
    q = VectorQuantizer(8, 256, init="kmeans", kmeans_batches=2, dead_code_threshold=0.1, decay=0.9)
    g = torch.Generator().manual_seed(0)
    q(x[torch.randperm(2048, generator=g)[:64]])
    q(x[torch.randperm(2048, generator=g)[:64]])  # k-means on 128 rows for 256 codes
    assert bool(q.initted)
    assert int((q.cluster_size > 0).sum()) <= 128
    _train(q, x, 40, 64)
    assert len(torch.unique(q.embed, dim=0)) == 256, "no two codes are the same"
    q.reset_usage()
    q(x)
    assert q.usage().used > 0.9


def test_bad_restart_settings():
    with pytest.raises(ValueError, match="max_restart_fraction"):
        VectorQuantizer(4, 8, max_restart_fraction=0.0)
    with pytest.raises(ValueError, match="reservoir_size"):
        VectorQuantizer(4, 8, reservoir_size=0)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        VectorQuantizer(4, 8, dead_code_threshold=-1.0)


def _reservoir_worker(rank: int, world: int, port: int, results):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights, as DDP guarantees
        q = VectorQuantizer(4, 128, init="kmeans", kmeans_batches=1, dead_code_threshold=2.0, reservoir_size=40, decay=0.8)
        torch.manual_seed(100 + rank)  # different data and local randomness per rank
        for _ in range(6):
            q(torch.randn(12 + 5 * rank, 4) + 4.0 * rank)
        results[rank] = {
            "reservoir": q.reservoir.clone(),
            "reservoir_free": q.reservoir_free.clone(),
            "restarted_at": q.restarted_at.clone(),
            "embed": q.embed.clone(),
            "cluster_size": q.cluster_size.clone(),
        }
    finally:
        dist.destroy_process_group()


def test_reservoir_and_restarts_identical_on_two_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_reservoir_worker, args=(r, 2, port, results)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(240)
            assert p.exitcode == 0, f"worker exited with {p.exitcode}"
        a, b = dict(results[0]), dict(results[1])
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between ranks"
    assert int((a["restarted_at"] >= 0).sum()) > 0, "no restart happened: the test proves nothing"
    rows = a["reservoir"][a["reservoir"].abs().sum(1) > 0]
    assert (rows.mean(1) > 2).any() and (rows.mean(1) < 2).any(), "the reservoir holds rows of both ranks"
