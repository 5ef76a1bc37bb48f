import pytest
import torch

from vqlib.quantizers import FVQ, VectorQuantizer, VQBridge, learning_annealing, learning_annealing_lambda


def test_bridge_shapes_tokens_and_zero_start():
    bridge = VQBridge(1024, 6, patch_size=4, hidden=32, heads=4)
    seen = {}
    bridge.blocks[0].register_forward_hook(lambda m, i, o: seen.update(tokens=o.shape))
    out = bridge(torch.randn(1024, 6))
    assert out.shape == (1024, 6)
    assert seen["tokens"] == (1, (32 // 4) ** 2, 32), "attention runs over (sqrt(K)/p)^2 tokens, not K"
    assert torch.equal(out, torch.zeros_like(out)), "zero-initialised output layer (official code)"


def test_bridge_layout_is_the_square_map():
    """Code k sits at (k // sqrt K, k % sqrt K): with p = 1, code k only sees its own patch token."""
    torch.manual_seed(0)
    bridge = VQBridge(16, 2, patch_size=1, hidden=8, heads=2, depth=0)
    torch.nn.init.normal_(bridge.out.weight)
    raw = torch.randn(16, 2)
    base = bridge(raw)
    raw2 = raw.clone()
    raw2[5] += 1.0
    changed = (bridge(raw2) - base).abs().sum(-1) > 0
    assert changed.tolist() == [i == 5 for i in range(16)]


def test_presets_and_bad_sizes():
    assert FVQ(8, 16384).bridge.patch_size == 4
    assert FVQ(8, 65536, hidden=16).bridge.patch_size == 8
    with pytest.raises(ValueError, match="perfect-square"):
        FVQ(8, 1000)
    with pytest.raises(ValueError, match="must divide"):
        FVQ(8, 36, patch_size=4)


def test_every_raw_code_gets_gradient():
    torch.manual_seed(0)
    q = FVQ(4, 64, hidden=16, heads=2)
    torch.nn.init.normal_(q.bridge.out.weight, std=0.1)
    out = q(torch.randn(8, 4))
    out.loss.backward()
    assert (q.raw_codebook.grad.abs().sum(-1) > 0).all(), "the bridge spreads gradient to unselected codes"


def test_training_reaches_high_usage():
    torch.manual_seed(0)
    q = FVQ(4, 64, hidden=32, heads=2, patch_size=2)
    opt = torch.optim.Adam(q.parameters(), lr=3e-3)
    data = torch.randn(1024, 4)
    for _ in range(200):
        opt.zero_grad()
        q(data[torch.randint(1024, (256,))]).loss.backward()
        opt.step()
    q.eval()
    q.reset_usage()
    q(data)
    assert q.usage().used > 0.8


def test_bake_gives_identical_quantizer():
    torch.manual_seed(0)
    q = FVQ(10, 64, codebook_dim=3, hidden=16, heads=2, channel_first=True)
    torch.nn.init.normal_(q.bridge.out.weight, std=0.3)
    q.eval()
    baked = q.bake().eval()
    assert isinstance(baked, VectorQuantizer) and baked.codebook_update == "frozen"
    x = torch.randn(2, 10, 4, 4)
    assert torch.equal(baked.encode(x), q.encode(x))
    assert torch.equal(baked(x).quantized, q(x).quantized)
    assert "embed" in dict(baked.named_buffers())  # the codebook is frozen: a buffer, not a parameter
    assert all(n.startswith(("project_in", "project_out")) for n, _ in baked.named_parameters())


def test_learning_annealing_schedule():
    f = learning_annealing_lambda(total_steps=1001, warmup_steps=100)
    assert f(0) == pytest.approx(0.005)
    assert f(50) == pytest.approx(0.005 + 0.995 * 0.5)
    assert f(100) == 1.0
    assert f(100 + 269) == 1.0  # constant for 30% of the remaining 900 steps
    assert f(1000) == pytest.approx(0.01)
    assert f(100 + 900 * 0.65) == pytest.approx(0.01 + 0.99 * 0.35 / 0.7)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = learning_annealing(opt, 1001, 100)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    for _ in range(100):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="exceed"):
        learning_annealing_lambda(10, 10)
