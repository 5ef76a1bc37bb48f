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
