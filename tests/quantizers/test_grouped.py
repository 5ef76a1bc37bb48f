import pytest
import torch

from vqlib.quantizers import GroupedQuantizer, Quantizer, ResidualQuantizer, SimVQ, VectorQuantizer

from .ddp_helpers import run_two_ranks


def test_each_group_quantizes_its_slice():
    torch.manual_seed(0)
    q = GroupedQuantizer(12, VectorQuantizer(4, 16), groups=3).eval()
    x = torch.randn(5, 7, 12)
    out = q(x)
    assert out.indices.shape == (5, 7, 3)
    for g, part in enumerate(q.parts):
        chunk = x[..., 4 * g : 4 * (g + 1)]
        assert torch.equal(out.indices[..., g], part.encode(chunk))
        assert torch.equal(out.quantized[..., 4 * g : 4 * (g + 1)], part(chunk).quantized)
    assert q.bits_per_index == pytest.approx(3 * 4)


def test_grouped_residual_indices_are_group_major():
    torch.manual_seed(0)
    q = GroupedQuantizer(8, ResidualQuantizer(4, 16, num_quantizers=3), groups=2).eval()
    x = torch.randn(6, 8)
    idx = q.encode(x)
    assert idx.shape == (6, 6)
    assert torch.equal(idx[:, :3], q.parts[0].encode(x[:, :4]))
    assert torch.equal(idx[:, 3:], q.parts[1].encode(x[:, 4:]))
    assert torch.equal(q.decode(idx), q(x).quantized)


def test_loss_sums_groups_and_gradients_reach_each_group():
    torch.manual_seed(0)
    q = GroupedQuantizer(8, SimVQ(4, 16), groups=2)
    x = torch.randn(30, 8, requires_grad=True)
    out = q(x)
    parts = [p(x[:, 4 * g : 4 * (g + 1)]).loss for g, p in enumerate(q.parts)]
    torch.testing.assert_close(out.loss, parts[0] + parts[1])
    out.loss.backward()
    for p in q.parts:
        assert p.codebook_proj.weight.grad.abs().sum() > 0
    assert q.parts[0].config["init_args"]["seed"] != q.parts[1].config["init_args"]["seed"] and not torch.equal(q.parts[0].basis, q.parts[1].basis)


def test_usage_counts_every_group():
    torch.manual_seed(0)
    q = GroupedQuantizer(8, VectorQuantizer(4, 16), groups=2).eval()
    idx = q(torch.randn(40, 8)).indices
    u = q.usage()
    assert u.total == 80
    assert u.used == pytest.approx((len(idx[:, 0].unique()) + len(idx[:, 1].unique())) / 32)
    q.reset_usage()
    assert q.usage().total == 0


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    q = GroupedQuantizer(8, ResidualQuantizer(4, 16, num_quantizers=2), groups=2)
    for _ in range(3):
        q(torch.randn(64, 8))
    q.save_pretrained(tmp_path)
    loaded = Quantizer.from_pretrained(tmp_path)
    q.eval()
    x = torch.randn(10, 8)
    assert torch.equal(loaded(x).quantized, q(x).quantized)


def _ddp_grouped(rank):
    torch.manual_seed(0)
    q = GroupedQuantizer(8, VectorQuantizer(4, 32, init="kmeans", kmeans_batches=2, dead_code_threshold=1.0), groups=2)
    torch.manual_seed(10 + rank)
    for _ in range(6):
        q(torch.randn(20 + 7 * rank, 8) + 3.0 * rank)
    return {k: v.clone() for k, v in q.state_dict().items()}


def test_ddp_ranks_hold_identical_codebooks():
    a, b = run_two_ranks(_ddp_grouped)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between ranks"


def test_bad_arguments():
    with pytest.raises(ValueError, match="not divisible"):
        GroupedQuantizer(10, VectorQuantizer(3, 8), groups=3)
    with pytest.raises(ValueError, match="dim // groups = 4"):
        GroupedQuantizer(8, VectorQuantizer(8, 8), groups=2)
    with pytest.raises(ValueError, match="groups"):
        GroupedQuantizer(8, VectorQuantizer(8, 8), groups=0)
    q = GroupedQuantizer(8, VectorQuantizer(4, 8), groups=2)
    with pytest.raises(ValueError, match="last dim 2"):
        q.decode(torch.zeros(3, 3, dtype=torch.long))
