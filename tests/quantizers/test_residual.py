import pytest
import torch
import torch.nn.functional as F

from vqlib.quantizers import FSQ, Quantizer, ResidualFSQ, ResidualQuantizer, SimVQ, VectorQuantizer

from .ddp_helpers import run_two_ranks


def _data(n=2048, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(2.0, 0.2, d)


def _train(q, x, steps=30, batch=256):
    g = torch.Generator().manual_seed(1)
    q.train()
    for _ in range(steps):
        out = q(x[torch.randperm(len(x), generator=g)[:batch]])
        if out.loss.requires_grad:
            out.loss.backward()
    return q.eval()


def test_each_stage_codes_the_residual_and_error_falls_with_stages():
    torch.manual_seed(0)
    x = _data()
    q = _train(ResidualQuantizer(8, num_quantizers=4, quantizer=VectorQuantizer(8, 32, init="kmeans", kmeans_batches=2)), x)
    idx = q.encode(x)
    assert idx.shape == (2048, 4) and idx.dtype == torch.int64
    errors = [float((q.decode(idx[:, :n]) - x).pow(2).mean()) for n in range(1, 5)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    # stage i's index is the nearest code of stage i's codebook to the residual the earlier stages left
    residual = x.clone()
    for i, stage in enumerate(q.stages):
        assert torch.equal(stage.encode(residual), idx[:, i])
        residual = residual - stage.codebook[idx[:, i]]
    torch.testing.assert_close(q(x).quantized, x - residual, atol=1e-5, rtol=0)


def test_loss_is_the_sum_of_stage_commitments_on_partial_sums():
    """RQ-VAE: β Σ_i ‖z − sg(Σ_{j≤i} e_j)‖² (+ the codebook terms for a learned codebook)."""
    torch.manual_seed(0)
    q = ResidualQuantizer(6, num_quantizers=3, quantizer=VectorQuantizer(6, 16, codebook_update="gradient"))
    x = torch.randn(40, 6, requires_grad=True)
    out = q(x)
    partial = torch.zeros(40, 6)
    expected = 0.0
    for i, stage in enumerate(q.stages):
        partial = partial + stage.embed.detach()[out.indices[:, i]]
        expected = expected + 0.25 * F.mse_loss(x, partial) + F.mse_loss(partial, x.detach())
    torch.testing.assert_close(out.loss, expected)
    # the straight-through gradient reaches the input once, not once per stage
    x.grad = None
    q(x).quantized.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_shared_codebook_is_one_quantizer():
    q = ResidualQuantizer(6, 16, num_quantizers=4, shared_codebook=True)
    separate = ResidualQuantizer(6, 16, num_quantizers=4)
    assert len(q.stages) == 1 and len(separate.stages) == 4
    q.eval()
    idx = q.encode(torch.randn(10, 6))
    direct = sum(q.stages[0].codebook[idx[:, i]] for i in range(4))
    torch.testing.assert_close(q.decode(idx), direct, atol=1e-6, rtol=0)


def test_separate_stages_get_different_seeds():
    q = ResidualQuantizer(6, num_quantizers=3, quantizer=SimVQ(6, 16, seed=5))
    assert [s.config["init_args"]["seed"] for s in q.stages] == [5, 6, 7]
    assert not torch.equal(q.stages[0].basis, q.stages[1].basis)


def test_quantize_dropout_per_example():
    torch.manual_seed(0)
    frozen = VectorQuantizer(4, 8, codebook_update="frozen")  # the training output then decodes exactly
    q = ResidualQuantizer(4, num_quantizers=5, quantizer=frozen, quantize_dropout=1.0, min_quantizers=2)
    x = torch.randn(64, 7, 4)  # 64 examples of 7 vectors
    out = q(x)
    kept = (out.indices >= 0).sum(-1)  # (64, 7)
    assert (kept == kept[:, :1]).all(), "every vector of an example keeps the same stages"
    assert kept.min() >= 2 and kept.max() <= 5 and len(kept[:, 0].unique()) > 1
    for b in range(64):  # dropped stages are the last ones, and the output is the decoded prefix
        n = int(kept[b, 0])
        assert (out.indices[b, :, n:] == -1).all()
        torch.testing.assert_close(out.quantized[b], q.decode(out.indices[b, :, :n]), atol=1e-6, rtol=0)
    q.eval()
    assert (q(x).indices >= 0).all(), "no dropout in eval"


def test_per_stage_usage():
    torch.manual_seed(0)
    q = ResidualQuantizer(4, 8, num_quantizers=3).eval()
    idx = q(torch.randn(50, 4)).indices
    per_stage = q.stage_usage()
    assert len(per_stage) == 3
    for i, u in enumerate(per_stage):
        assert u.total == 50
        assert u.used == pytest.approx(len(idx[:, i].unique()) / 8)
    assert q.usage().total == 150


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    for q in (
        ResidualQuantizer(8, num_quantizers=3, quantizer=VectorQuantizer(4, 16, init="kmeans", kmeans_batches=1)),
        ResidualFSQ([5, 4, 3], num_quantizers=3, dim=8),
    ):
        _train(q, _data(), steps=3)
        q.save_pretrained(tmp_path / type(q).__name__)
        loaded = Quantizer.from_pretrained(tmp_path / type(q).__name__)
        assert type(loaded) is type(q)
        x = torch.randn(20, 8)
        assert torch.equal(loaded(x).quantized, q(x).quantized)
        assert torch.equal(loaded.encode(x), q.encode(x))


def test_residual_fsq_stages_form_one_uniform_grid():
    """L^{-i} scaling: n stages of L levels are one uniform grid of L^n points."""
    for levels, n in (([3], 2), ([4], 2), ([5], 3)):
        q = ResidualFSQ(levels, num_quantizers=n).eval()
        L = levels[0]
        idx = torch.cartesian_prod(*[torch.arange(L)] * n).reshape(-1, n)
        points = q.decode(idx).flatten().sort().values
        assert len(points.unique()) == L**n
        steps = points.diff()
        torch.testing.assert_close(steps, torch.full_like(steps, float(steps.mean())), atol=1e-6, rtol=0)
        # every input is coded to the nearest grid point (worst error half a step) inside the grid
        u = torch.linspace(-float(points.max()), float(points.max()), 1001)[:, None]
        z = torch.atanh(u / q._bound_c) * q._bound_c  # inputs whose bounded value is u
        err = (q(z).quantized - u).abs().max()
        assert err <= steps.mean() / 2 + 1e-5


def test_residual_fsq_with_levels_minus_one_would_collide():
    """The (L-1)^{-i} scaling wastes codes: sums coincide (the reason for L^{-i}, see the module docstring)."""
    L = 3
    grid = torch.tensor([2 * k / (L - 1) - 1 for k in range(L)])
    sums_lm1 = (grid[:, None] + grid[None, :] / (L - 1)).flatten()
    sums_l = (grid[:, None] + grid[None, :] / L).flatten()
    assert len(sums_lm1.unique()) == 7 and len(sums_l.unique()) == 9


def test_residual_fsq_gradient_and_multi_channel_indices():
    q = ResidualFSQ([8, 5, 5], num_quantizers=2)
    x = torch.randn(10, 3, requires_grad=True)
    out = q(x)
    assert out.indices.shape == (10, 2) and out.indices.max() < 200
    out.quantized.sum().backward()
    c = q._bound_c
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach() / c) ** 2)  # straight through the bound


def _ddp_residual(rank):
    torch.manual_seed(0)
    q = ResidualQuantizer(
        6, num_quantizers=3, quantizer=VectorQuantizer(6, 32, init="kmeans", kmeans_batches=2, dead_code_threshold=2.0),
        quantize_dropout=0.5,
    )
    torch.manual_seed(10 + rank)
    for _ in range(6):
        q(torch.randn(3 + rank, 5, 6) + 2.0 * rank)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    state["restarts"] = sum(int((s.restarted_at >= 0).sum()) for s in q.stages) * torch.ones(1)
    return state


def test_ddp_ranks_hold_identical_codebooks():
    a, b = run_two_ranks(_ddp_residual)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between ranks"
    assert a["restarts"] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="codebook_size"):
        ResidualQuantizer(8)
    with pytest.raises(ValueError, match="differs"):
        ResidualQuantizer(8, 32, quantizer=VectorQuantizer(8, 16))
    with pytest.raises(ValueError, match="projects 8 -> 4"):
        ResidualQuantizer(8, quantizer=VectorQuantizer(8, 16, codebook_dim=4))
    with pytest.raises(ValueError, match="one index per vector"):
        ResidualQuantizer(6, quantizer=FSQ([5, 3], num_codebooks=3))
    with pytest.raises(ValueError, match="template"):
        ResidualQuantizer(8, quantizer=torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match="channel-last"):
        ResidualQuantizer(8, quantizer=VectorQuantizer(8, 16, channel_first=True))
    with pytest.raises(ValueError, match="quantize_dropout"):
        ResidualQuantizer(8, 16, quantize_dropout=1.5)
    with pytest.raises(ValueError, match="min_quantizers"):
        ResidualQuantizer(8, 16, num_quantizers=2, min_quantizers=3)
    with pytest.raises(ValueError, match="num_quantizers"):
        ResidualQuantizer(8, 16, num_quantizers=0)
    with pytest.raises(ValueError, match="levels"):
        ResidualFSQ([1, 4])
    q = ResidualQuantizer(8, 16, num_quantizers=2)
    with pytest.raises(ValueError, match="last dim 1..2"):
        q.decode(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="dropped in training"):
        q.decode(torch.tensor([[1, -1]]))
