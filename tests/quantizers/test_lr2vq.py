import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vqlib.quantizers.codec import CodesMismatchError, NotFittedError
from vqlib.quantizers.lr2vq import (
    LR2VQConv2d,
    LR2VQLinear,
    LR2VQWeight,
    compress_model,
    compression_report,
    decompress_model,
    finetune,
)
from vqlib.quantizers.packing import packed_size


def _linear(in_features, out_features, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def test_compression_ratio_formula():
    # n = 2048 weights, N = 256 subvectors of m = 8, rank 4, k = 16:
    # bits = 256·4 + 32·(16·4 + 4·8) = 1024 + 3072 = 4096, ratio = 32·2048 / 4096 = 16
    q = LR2VQLinear.from_module(_linear(64, 32), vector_size=8, rank=4, codebook_size=16)
    assert q.vq.code_bits == 4 and q.vq.bits == 4096 and q.compression_ratio == 16.0
    assert q.vq.codes.dtype == torch.uint8 and q.vq.codes.numel() == 128 == packed_size(256, 4)

    model = nn.Sequential(_linear(64, 32), nn.ReLU(), _linear(32, 16))
    compress_model(model, vector_size=8, rank=4, codebook_size=16)
    report = compression_report(model)
    # second layer: N = 64, bits = 64·4 + 3072 = 3328
    assert [(r.name, r.n, r.bits) for r in report.layers] == [("0", 2048, 4096), ("2", 512, 3328)]
    assert report.ratio == 32 * (2048 + 512) / (4096 + 3328)
    assert report.other_bits == 32 * (32 + 16)  # the biases
    assert report.model_ratio == (32 * 2560 + 32 * 48) / (7424 + 32 * 48)

    # ⌈log2 k⌉ bits for other k; none at all for k = 1
    assert LR2VQLinear(64, 32, vector_size=8, rank=4, codebook_size=10).vq.code_bits == 4
    one = LR2VQLinear(64, 32, vector_size=8, rank=4, codebook_size=1)
    assert one.vq.code_bits == 0 and one.vq.codes.numel() == 0 and one.vq.bits == 32 * (4 + 32)


@pytest.mark.parametrize("k", [5, 9, 32])
def test_full_rank_with_enough_centroids_is_exact(k):
    g = torch.Generator().manual_seed(0)
    distinct = torch.randn(5, 4, generator=g)
    # 8x16 weight: 32 subvectors of 4 drawn from 5 distinct ones (k=32: each its own)
    rows = distinct[torch.randint(5, (32,), generator=g)] if k < 32 else torch.randn(32, 4, generator=g)
    layer = nn.Linear(16, 8)
    with torch.no_grad():
        layer.weight.copy_(rows.reshape(8, 16))
    q = LR2VQLinear.from_module(layer, vector_size=4, rank=4, codebook_size=k)
    torch.testing.assert_close(q.weight, layer.weight, rtol=0, atol=1e-5)
    x = torch.randn(3, 16, generator=g)
    torch.testing.assert_close(q(x), layer(x), rtol=0, atol=1e-5)


def test_projection_is_the_truncated_svd():
    # k = N: every subvector keeps its own R_i, so only the rank-d̃ error is left,
    # which Eckart–Young puts at the discarded singular values
    layer = _linear(32, 16)
    x = layer.weight.detach().reshape(-1, 8)
    s = torch.linalg.svdvals(x)
    for rank in (2, 5, 8):
        q = LR2VQLinear.from_module(layer, vector_size=8, rank=rank, codebook_size=x.shape[0])
        err = (q.weight - layer.weight).square().sum()
        torch.testing.assert_close(err, s[rank:].square().sum(), rtol=1e-4, atol=1e-6)


def test_error_decreases_as_k_grows():
    layer = _linear(64, 64)
    for rank in (2, 4):
        errors = []
        for k in (2, 8, 32, 128, 512):
            q = LR2VQLinear.from_module(
                layer, vector_size=4, rank=rank, codebook_size=k, generator=torch.Generator().manual_seed(0)
            )
            errors.append(float((q.weight - layer.weight).detach().square().mean()))
        assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_gradients_reach_centroids_and_projection_not_assignments():
    q = LR2VQLinear.from_module(_linear(32, 16), vector_size=4, rank=2, codebook_size=8)
    assert {n for n, _ in q.named_parameters()} == {"vq.centroids", "vq.proj", "bias"}
    assert not q.vq.assign.is_floating_point() and not q.vq.codes.is_floating_point()
    codes, weight = q.vq.codes.clone(), q.weight.detach().clone()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    q(torch.randn(8, 32)).square().sum().backward()
    assert q.vq.centroids.grad.abs().sum() > 0 and q.vq.proj.grad.abs().sum() > 0
    assert q.vq.codes.grad is None and q.vq.assign.grad is None
    opt.step()
    assert torch.equal(q.vq.codes, codes) and not torch.equal(q.weight, weight)


def test_soft_assignments_train_the_representation_and_harden():
    q = LR2VQLinear.from_module(_linear(32, 16), vector_size=4, rank=2, codebook_size=8)
    hard = q.weight.detach().clone()
    q.vq.soften(temperature=1e-3)
    assert q.vq.latent is not None and q.vq.latent.shape == (128, 2)
    probs = q.vq.soft_assignments()
    torch.testing.assert_close(probs.sum(1), torch.ones(128))
    # R starts at C[a]: at a low temperature the soft weight is the hard one
    torch.testing.assert_close(q.weight, hard, rtol=0, atol=1e-5)
    q.vq.temperature = 1.0
    q(torch.randn(8, 32)).square().sum().backward()
    assert q.vq.latent.grad.abs().sum() > 0 and q.vq.centroids.grad.abs().sum() > 0
    with torch.no_grad():
        q.vq.latent.copy_(q.vq.centroids[torch.arange(128) % 8])
    q.vq.harden()
    assert q.vq.latent is None and "vq.latent" not in q.state_dict()
    assert torch.equal(q.vq.assign, torch.arange(128) % 8)


def _blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 32, generator=g)
    y = torch.randint(10, (1200,), generator=g)
    x = centers[y] + 0.9 * torch.randn(1200, 32, generator=g)
    return x[:900], y[:900], x[900:], y[900:]


def test_finetune_recovers_accuracy_lost_by_compression():
    xtr, ytr, xte, yte = _blobs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(xtr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def accuracy(m):
        with torch.no_grad():
            return (m(xte).argmax(1) == yte).float().mean().item()

    original = accuracy(model)
    compressed = compress_model(copy.deepcopy(model), vector_size=8, rank=2, codebook_size=4)
    lost = accuracy(compressed)
    assert original > 0.95 and lost < original - 0.3
    loader = [(xtr[i : i + 150], ytr[i : i + 150]) for i in range(0, 900, 150)]
    for assignments in ("fixed", "soft"):
        tuned = copy.deepcopy(compressed)
        before = copy.deepcopy(tuned.state_dict())
        losses = finetune(tuned, loader, F.cross_entropy, steps=60, lr=1e-2, assignments=assignments)
        assert len(losses) == 60 and losses[-1] < losses[0]
        assert accuracy(tuned) > lost + 0.2, assignments
        after = tuned.state_dict()
        assert after.keys() == before.keys()
        # train="codebooks": the biases stay; fixed assignments stay
        assert torch.equal(after["0.bias"], before["0.bias"])
        if assignments == "fixed":
            assert torch.equal(after["0.vq.codes"], before["0.vq.codes"])


def test_conv2d_shapes_and_exact_full_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, dilation=1, groups=2, bias=False)
    cols = 2 * 3 * 2  # in/groups·kh·kw
    q = LR2VQConv2d.from_module(conv, vector_size=3, rank=3, codebook_size=6 * cols // 3)
    assert q.weight.shape == conv.weight.shape == (6, 2, 3, 2) and q.bias is None
    x = torch.randn(2, 4, 9, 7)
    torch.testing.assert_close(q(x), conv(x), rtol=0, atol=1e-5)

    # the layout: output channel o's flattened weights, cut in blocks of m
    q = LR2VQConv2d.from_module(conv, vector_size=4, rank=2, codebook_size=5)
    sub = q.vq.centroids[q.vq.assign] @ q.vq.proj
    assert torch.equal(q.weight.reshape(6, cols), sub.reshape(6, cols))
    out = q(x)
    assert out.shape == conv(x).shape == (2, 6, 5, 4)
    torch.testing.assert_close(out, F.conv2d(x, q.weight.detach(), None, 2, 1, 1, 2))


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 6))


@pytest.mark.parametrize("k", [6, 16])  # 3 bits (bit stream packing) and 4 bits (nibbles)
def test_state_dict_round_trip_through_safetensors(tmp_path, k):
    model = compress_model(_cnn(), vector_size=3, rank=2, codebook_size=k)
    x = torch.randn(2, 3, 4, 4)
    finetune(model, [(x, torch.tensor([1, 2]))], F.cross_entropy, steps=3, lr=1e-2, assignments="soft")
    state = model.state_dict()
    assert set(state) == {f"{i}.{p}" for i in (0, 3) for p in ("bias", "vq.centroids", "vq.proj", "vq.codes")}
    assert state["3.vq.codes"].dtype == torch.uint8
    assert state["3.vq.codes"].numel() == packed_size(6 * 4 * 4 * 6 // 3, (k - 1).bit_length())
    save_file(state, tmp_path / "lr2vq.safetensors")

    loaded = compress_model(_cnn(), vector_size=3, rank=2, codebook_size=k, init="empty")
    assert not torch.equal(loaded(x), model(x))
    loaded.load_state_dict(load_file(tmp_path / "lr2vq.safetensors"))
    assert torch.equal(loaded[3].vq.assign, model[3].vq.assign)
    assert torch.equal(loaded(x), model(x))


def test_finetune_all_parameters_and_pickling(tmp_path):
    model = compress_model(_cnn(), vector_size=3, rank=2, codebook_size=8)
    bias = model[3].bias.detach().clone()
    batch = [(torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, 3]))]
    finetune(model, batch, F.cross_entropy, steps=2, lr=1e-2, train="all")
    assert not torch.equal(model[3].bias, bias)
    torch.save(model, tmp_path / "model.pt")
    again = torch.load(tmp_path / "model.pt", weights_only=False)
    x = batch[0][0]
    assert torch.equal(again(x), model(x))


def test_low_rank_stage_then_clustering():
    # codebook_size=None: R·P with no clustering (the paper's low-rank pre-training stage), no codes stored
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(4, 32)
    compress_model(model, vector_size=8, rank=3, codebook_size=None)
    vq = model[0].vq
    assert vq.codebook_size == 64 and vq.code_bits == 0 and vq.codes.numel() == 0 and vq.bits == 32 * (64 * 3 + 3 * 8)
    assert torch.equal(vq.assign, torch.arange(64))
    with pytest.raises(ValueError, match=r"soft assignments need a clustered layer"):
        vq.soften()
    batch = [(x, torch.tensor([0, 1, 2, 3]))]
    for assignments in ("fixed", "soft"):  # no clusters: C (= R) and P train either way
        finetune(model, batch, F.cross_entropy, steps=2, lr=1e-2, assignments=assignments)
    low_rank = model(x)
    # the dense weight now has rank 3 per subvector matrix: re-fitting it at rank 3 is exact
    decompress_model(model)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    torch.testing.assert_close(model(x), low_rank)
    assert torch.linalg.matrix_rank(model[0].weight.detach().reshape(-1, 8)) == 3
    compress_model(model, vector_size=8, rank=3, codebook_size=64, layers=["0"])
    torch.testing.assert_close(model(x), low_rank, rtol=0, atol=1e-5)


def test_compress_model_chooses_layers():
    model = compress_model(_cnn(), vector_size=3, rank=2, codebook_size=8, layers=["3"])
    assert type(model[0]) is nn.Conv2d and isinstance(model[3], LR2VQLinear)
    # already compressed layers are not nn.Linear any more: a second call compresses the rest
    compress_model(model, vector_size=9, rank=4, codebook_size=4)
    assert isinstance(model[0], LR2VQConv2d) and model[0].vq.vector_size == 9 and model[3].vq.vector_size == 3


def test_bad_input():
    layer = _linear(10, 4)
    with pytest.raises(ValueError, match=r"vector_size=3 must divide in_features=10"):
        LR2VQLinear.from_module(layer, vector_size=3, rank=2, codebook_size=4)
    with pytest.raises(ValueError, match=r"rank \(d̃\) must be in \[1, vector_size=5\].*got 6"):
        LR2VQLinear.from_module(layer, vector_size=5, rank=6, codebook_size=4)
    with pytest.raises(
        ValueError, match=r"codebook_size must be in \[1, 8\] \(the number of subvectors of size 5\), got 0"
    ):
        LR2VQLinear.from_module(layer, vector_size=5, rank=2, codebook_size=0)
    with pytest.raises(ValueError, match=r"codebook_size must be in \[1, 8\].*got 9"):
        LR2VQLinear.from_module(layer, vector_size=5, rank=2, codebook_size=9)
    with torch.no_grad():
        layer.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"weight contains NaN or inf"):
        LR2VQLinear.from_module(layer, vector_size=5, rank=2, codebook_size=4)
    with pytest.raises(ValueError, match=r"vector_size=2 must divide in_channels/groups·kh·kw=27"):
        LR2VQConv2d.from_module(nn.Conv2d(3, 4, 3), vector_size=2, rank=1, codebook_size=2)
    with pytest.raises(ValueError, match=r"padding_mode='zeros'"):
        LR2VQConv2d.from_module(nn.Conv2d(3, 4, 3, padding_mode="reflect"), vector_size=3, rank=1, codebook_size=2)
    with pytest.raises(ValueError, match=r"layer '3': vector_size=7 must divide in_features=96"):
        compress_model(_cnn(), vector_size=7, rank=2, codebook_size=4, layers=["3"])
    with pytest.raises(ValueError, match=r"layer 'head' is not an nn.Linear or nn.Conv2d \(no such module\)"):
        compress_model(_cnn(), vector_size=3, rank=2, codebook_size=4, layers=["head"])
    with pytest.raises(ValueError, match=r"init must be one of"):
        compress_model(_cnn(), vector_size=3, rank=2, codebook_size=4, init="random")
    model = compress_model(_cnn(), vector_size=3, rank=2, codebook_size=4)
    batch = [(torch.randn(1, 3, 4, 4), torch.tensor([0]))]
    with pytest.raises(ValueError, match=r"assignments must be one of \('fixed', 'soft'\)"):
        finetune(model, batch, F.cross_entropy, steps=1, assignments="hard")
    with pytest.raises(ValueError, match=r"no LR²VQ layer"):
        finetune(_cnn(), batch, F.cross_entropy, steps=1)
    with pytest.raises(ValueError, match=r"loader yielded no batch"):
        finetune(model, [], F.cross_entropy, steps=1)
    with pytest.raises(ValueError, match=r"stored codes reach 7, outside the 5 centroids"):
        q = LR2VQWeight(4, 10, vector_size=5, rank=2, codebook_size=5)
        state = q.state_dict()
        state["codes"] = torch.full_like(state["codes"], 255)
        q.load_state_dict(state)


# ---- the codec contract and save_pretrained --------------------------------------------


def test_weight_codec_contract():
    layer = _linear(32, 16)
    codec = LR2VQWeight(16, 32, vector_size=4, codebook_size=8, rank=2)
    assert not codec.is_fitted
    with pytest.raises(NotFittedError, match=r"LR2VQWeight is not fitted: call fit\(x\) first"):
        codec.encode(layer.weight)
    with pytest.raises(NotFittedError, match="call fit"):
        codec.decode(codec.codes)
    assert codec.fit(layer.weight, generator=torch.Generator().manual_seed(0)) is codec and codec.is_fitted
    codes = codec.encode(layer.weight)
    # fit's own assignments are the nearest centroids of R = X·Pᵀ (Lloyd ends on an assignment step)
    assert codes.dtype == torch.uint8 and torch.equal(codes, codec.codes)
    torch.testing.assert_close(codec.decode(codes), codec())
    # another weight: its nearest centroids, one by one
    other = torch.randn(16, 32)
    r = other.reshape(-1, 4) @ codec.proj.detach().T
    brute = torch.cdist(r, codec.centroids.detach()).argmin(1)
    want = (codec.centroids[brute] @ codec.proj).reshape(16, 32)
    torch.testing.assert_close(codec.decode(codec.encode(other)), want)
    # code_size: packed codes (128 subvectors · 3 bits = 48 bytes) + fp32 C (8×2) and P (2×4), per row
    assert codec.code_dim == 32 and codec.code_size == (48 + 4 * (16 + 8)) / 16
    assert codec.bits_per_weight == 8 * codec.code_size / 32 == (48 + 96) * 8 / (16 * 32)


def test_weight_codec_refuses_foreign_codes():
    codec = LR2VQWeight(4, 10, vector_size=5, codebook_size=5, rank=2).fit(torch.randn(4, 10))
    with pytest.raises(CodesMismatchError, match=r"not produced by this LR2VQWeight \(expected 3 uint8 bytes"):
        codec.decode(torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(CodesMismatchError, match=r"expected 3 uint8 bytes .* got torch.int64"):
        codec.decode(torch.zeros(3, dtype=torch.long))
    with pytest.raises(CodesMismatchError, match=r"a code reaches 7, outside the 5 centroids"):
        codec.decode(torch.full((3,), 255, dtype=torch.uint8))
    low_rank = LR2VQWeight(4, 10, vector_size=5, codebook_size=None, rank=2).fit(torch.randn(4, 10))
    with pytest.raises(ValueError, match=r"codebook_size=None stores R itself"):
        low_rank.encode(torch.randn(4, 10))


@pytest.mark.parametrize("k", [None, 1, 6])
def test_codec_and_layers_round_trip_through_save_pretrained(tmp_path, k):
    codec = LR2VQWeight(6, 12, vector_size=3, codebook_size=k, rank=2).fit(torch.randn(6, 12))
    codec.save_pretrained(tmp_path / "codec")
    back = LR2VQWeight.from_pretrained(tmp_path / "codec")
    assert back.is_fitted and back.config == codec.config and back.codebook_size == codec.codebook_size
    assert torch.equal(back(), codec())
    if k is not None:
        assert torch.equal(back.decode(codec.codes), codec.decode(codec.codes))

    model = _cnn()
    x = torch.randn(2, 3, 4, 4)
    for i, cls in ((0, LR2VQConv2d), (3, LR2VQLinear)):
        layer = cls.from_module(model[i], vector_size=3, codebook_size=k, rank=2)
        layer.save_pretrained(tmp_path / str(i))
        again = cls.from_pretrained(tmp_path / str(i))
        assert type(again) is cls and again.config == layer.config
        inp = x if i == 0 else torch.randn(2, 96)
        assert torch.equal(again(inp), layer(inp))
        assert again.vq.is_fitted and again.bits_per_weight == layer.bits_per_weight


def test_layers_keep_pytorch_argument_order():
    conv = LR2VQConv2d(4, 6, 3, 2, 1, 1, 2, False, vector_size=3, codebook_size=4, rank=2)
    assert (conv.stride, conv.padding, conv.groups, conv.bias) == ((2, 2), (1, 1), 2, None)
    assert LR2VQLinear(8, 4, False, vector_size=4, codebook_size=2, rank=1).bias is None
    with pytest.raises(TypeError):
        LR2VQLinear(8, 4, True, 4, 2, 1)  # the LR²VQ settings are keywords, never a silent reorder
