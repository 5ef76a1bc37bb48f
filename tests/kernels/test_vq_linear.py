"""VQLinear, its storage format and the torch reference (no Triton needed)."""

import math

import pytest
import torch
import torch.nn as nn

from vqlib.kernels import (
    VQLinear,
    choose_kernel,
    code_dtype,
    quantize_linear,
    quantize_model,
    vq_linear_reference,
    vq_lut_linear_reference,
)
from vqlib.quantizers import CodesMismatchError, NotFittedError


def random_layer(n, d, v, k, groups=1, signs=True, scales=True, bias=True, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, n, bias=bias)
    codebook = torch.randn(groups, k, v, generator=g).to(dtype)
    codes = torch.randint(0, k, (n, d // v), generator=g)
    s = torch.rand(n, generator=g) + 0.5 if scales else None
    neg = torch.rand(n, d, generator=g) < 0.5 if signs else None
    return VQLinear.from_linear(lin, codebook, codes, s, neg, kernel="reference")


def naive_weight(layer: VQLinear, neg: torch.Tensor | None) -> torch.Tensor:
    """The format's definition, one weight at a time."""
    n, d, v = layer.out_features, layer.in_features, layer.vector_size
    rows = n // layer.num_groups
    codes = layer.codes.long() & 0xFFFF
    w = torch.empty(n, d)
    for i in range(n):
        for k in range(d):
            val = layer.codebook[i // rows, codes[i, k // v], k % v].float()
            if neg is not None and neg[i, k]:
                val = -val
            w[i, k] = val * (layer.scales[i].float() if layer.scales is not None else 1.0)
    return w


@pytest.mark.parametrize("groups,signs", [(1, False), (3, True)])
def test_reference_dequantize_follows_the_format(groups, signs):
    g = torch.Generator().manual_seed(1)
    n, d, v, k = 6, 12, 3, 5
    lin = nn.Linear(d, n)
    neg = torch.rand(n, d, generator=g) < 0.5 if signs else None
    layer = VQLinear.from_linear(
        lin, torch.randn(groups, k, v, generator=g), torch.randint(0, k, (n, d // v), generator=g),
        torch.rand(n, generator=g) + 0.5, neg,
    )  # fmt: skip
    torch.testing.assert_close(layer.dequantize(torch.float32), naive_weight(layer, neg), rtol=1e-6, atol=1e-6)
    # the packed sign of weight k of row n is bit k % 8 of byte k // 8
    if signs:
        bits = (layer.signs[:, torch.arange(d) // 8].long() >> (torch.arange(d) % 8)) & 1
        assert torch.equal(bits.bool(), neg)


@pytest.mark.parametrize("k,groups", [(7, 1), (256, 2), (300, 1)])
def test_lut_reference_equals_dense_reference(k, groups):
    layer = random_layer(10, 24, 4, k, groups=groups, signs=False)
    x = torch.randn(3, 24)
    args = (layer.codebook, layer.codes, layer.scales)
    y_lut = vq_lut_linear_reference(x, *args, layer.bias)
    torch.testing.assert_close(y_lut, vq_linear_reference(x, *args, None, layer.bias), rtol=1e-5, atol=1e-5)


def test_code_dtype_and_int16_codes_above_32767():
    assert code_dtype(2) == code_dtype(256) == torch.uint8
    assert code_dtype(257) == code_dtype(65536) == torch.int16
    layer = random_layer(4, 8, 1, 65536, signs=False, scales=False, dtype=torch.float32)
    codes = torch.tensor([0, 255, 32767, 32768, 40000, 65535, 1, 2]).repeat(4, 1)
    layer = VQLinear.from_linear(nn.Linear(8, 4), layer.codebook, codes)
    assert layer.codes.dtype == torch.int16
    torch.testing.assert_close(layer.dequantize(torch.float32)[0], layer.codebook[0, codes[0], 0])
    with pytest.raises(ValueError, match="codebook size"):
        code_dtype(65537)


def test_bits_per_weight_counts_what_is_stored():
    n, d, v, k = 64, 128, 4, 256
    layer = random_layer(n, d, v, k, signs=True, dtype=torch.float16)
    stored = n * (d // v) * 8 + k * v * 16 + n * 32 + n * d  # codes, codebook, fp32 scales, sign bits
    assert layer.bits_per_weight == pytest.approx(stored / (n * d))
    plain = random_layer(n, d, v, k, signs=False, scales=False)
    assert plain.bits_per_weight == pytest.approx(2 + k * v * 16 / (n * d))
    wide = random_layer(n, d, 8, 4096, signs=False, scales=False, dtype=torch.float32)
    assert wide.bits_per_weight == pytest.approx(16 / 8 + 4096 * 8 * 32 / (n * d))


def test_state_dict_holds_only_compressed_tensors():
    layer = random_layer(8, 16, 4, 16, signs=True)
    state = layer.state_dict()
    assert set(state) == {"codebook", "codes", "scales", "signs", "bias"}
    assert state["codes"].dtype == torch.uint8 and state["signs"].dtype == torch.uint8
    assert state["signs"].shape == (8, 2)
    assert set(random_layer(8, 16, 4, 16, signs=False, scales=False, bias=False).state_dict()) == {"codebook", "codes"}


@pytest.mark.parametrize("signs,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_safetensors_round_trip(tmp_path, signs, dtype):
    st = pytest.importorskip("safetensors.torch")
    layer = random_layer(12, 20, 2, 300, groups=2, signs=signs, dtype=dtype)
    layer.scales = layer.scales.half()  # fp16 scales stay fp16 through the file
    st.save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    back = VQLinear.from_state_dict(st.load_file(tmp_path / "layer.safetensors"), kernel="reference")
    for name, t in layer.state_dict().items():
        assert back.state_dict()[name].dtype == t.dtype and torch.equal(back.state_dict()[name], t), name
    assert (back.vector_size, back.codebook_size, back.num_groups) == (2, 300, 2)
    x = torch.randn(5, 20)
    torch.testing.assert_close(back(x), layer(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="signs|size mismatch"):
        random_layer(12, 20, 2, 300, groups=2, signs=not signs, dtype=dtype).load_state_dict(layer.state_dict())


def test_forward_reference_paths_and_shapes():
    layer = random_layer(10, 24, 4, 32, signs=False)
    x = torch.randn(2, 3, 24)
    want = x @ layer.dequantize(torch.float32).T + layer.bias
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    layer.kernel = "reference-lut"
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    layer.kernel = "auto"  # one row on CPU goes through the tables
    torch.testing.assert_close(layer(x[0, 0]), want[0, 0], rtol=1e-5, atol=1e-5)
    assert layer.kernel_for(x[0, :1]) == "reference-lut" and layer.kernel_for(x[0]) == "reference"
    # non-contiguous input: same numbers
    xt = torch.randn(24, 6).T
    torch.testing.assert_close(layer(xt), layer(xt.contiguous()), rtol=1e-5, atol=1e-5)
    assert layer(torch.randn(0, 24)).shape == (0, 10)


def test_quantize_linear_by_kmeans():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    w = lin.weight.detach()
    errs = []
    for k in (4, 64):
        q = quantize_linear(lin, vector_size=4, codebook_size=k, generator=torch.Generator().manual_seed(0))
        errs.append(((q.dequantize(torch.float32) - w).norm() / w.norm()).item())
        torch.testing.assert_close(q.bias, lin.bias.detach())
    assert errs[1] < errs[0] < 1.0
    sq = quantize_linear(lin, vector_size=4, codebook_size=16, num_groups=2, signs=True)
    assert sq.signs is not None and sq.num_groups == 2
    wq = sq.dequantize(torch.float32)
    assert torch.equal(wq[wq != 0] < 0, w[wq != 0] < 0)  # stored signs are the weights' signs
    assert (sq.codebook >= 0).all()  # magnitudes
    a = quantize_linear(lin, codebook_size=8, generator=torch.Generator().manual_seed(3))
    b = quantize_linear(lin, codebook_size=8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.codes, b.codes)


def test_choose_kernel_rule():
    layer = random_layer(8, 16, 4, 16, signs=False)
    signed = random_layer(8, 16, 4, 16, signs=True)
    assert choose_kernel(1, layer, torch.float16) == "triton-lut"
    assert choose_kernel(1, signed, torch.float16) == "triton-gemm"
    assert choose_kernel(256, layer, torch.bfloat16) == "triton-gemm"
    assert choose_kernel(4096, layer, torch.float16) == "triton-dequant"
    assert choose_kernel(1, layer, torch.float32) == "triton-dequant"


# ---- bad input: a clear error, never a wrong number -----------------------------------


def test_bad_construction():
    lin = nn.Linear(16, 8)
    cb = torch.randn(16, 4)
    ok = torch.randint(0, 16, (8, 4))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        VQLinear.from_linear(lin, cb, ok.clone().index_fill_(0, torch.tensor([3]), 16))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        VQLinear.from_linear(lin, cb, ok - 1)
    with pytest.raises(ValueError, match="must have shape"):
        VQLinear.from_linear(lin, cb, ok[:, :3])
    with pytest.raises(ValueError, match="integer"):
        VQLinear.from_linear(lin, cb, ok.float())
    with pytest.raises(ValueError, match="fp16, bf16 or fp32"):
        VQLinear.from_linear(lin, cb.to(torch.float64), ok)
    with pytest.raises(ValueError, match="signs must be a bool"):
        VQLinear.from_linear(lin, cb, ok, signs=torch.ones(8, 16))
    with pytest.raises(ValueError, match="scales must have shape"):
        VQLinear.from_linear(lin, cb, ok, scales=torch.ones(7))
    with pytest.raises(ValueError, match="must divide in_features"):
        VQLinear(10, 8, vector_size=4)
    with pytest.raises(ValueError, match="must divide out_features"):
        VQLinear(16, 8, num_groups=3)
    with pytest.raises(ValueError, match="kernel must be one of"):
        VQLinear(16, 8, kernel="cuda")


def test_bad_forward_input_and_corrupted_state():
    layer = random_layer(8, 16, 4, 16, signs=True)
    with pytest.raises(ValueError, match="expected last dim 16, got 12"):
        layer(torch.randn(2, 12))
    with pytest.raises(ValueError, match="fp16, bf16 or fp32 input"):
        layer(torch.ones(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="does not support sign bits"):
        VQLinear.from_state_dict(layer.state_dict(), kernel="reference-lut")(torch.randn(2, 16))
    # an in-place edit after construction is caught before it can index past the codebook
    layer.codes[0, 0] = 200
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        layer(torch.randn(2, 16))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        layer.dequantize()
    state = random_layer(8, 16, 4, 16, signs=True).state_dict()
    state["codes"][1, 1] = 99
    loaded = random_layer(8, 16, 4, 16, signs=True)
    loaded.load_state_dict(state)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        loaded(torch.randn(2, 16))
    reassigned = random_layer(8, 16, 4, 16, signs=True)
    reassigned.codes = reassigned.codes.to(torch.int16)
    with pytest.raises(ValueError, match="stores torch.uint8 codes"):
        reassigned(torch.randn(2, 16))


def test_quantize_bits_on_a_realistic_shape():
    lin = nn.Linear(256, 64, bias=False)
    q = quantize_linear(lin, vector_size=4, codebook_size=256, iters=2, scales=False)
    assert math.isclose(q.bits_per_weight, 2 + 256 * 4 * 16 / (64 * 256))


# ---- the codec contract, save_pretrained, quantize_model ------------------------------


def test_vq_linear_is_the_weight_codec():
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    layer = VQLinear(32, 8, vector_size=4, codebook_size=16, num_groups=2, signs=True)
    assert not layer.is_fitted
    with pytest.raises(NotFittedError, match=r"VQLinear is not fitted: call fit\(x\) first"):
        layer.encode(lin.weight)
    with pytest.raises(NotFittedError, match="call fit"):
        layer(torch.randn(2, 32))
    assert layer.fit(lin.weight, generator=torch.Generator().manual_seed(0)) is layer and layer.is_fitted
    codes = layer.encode(lin.weight)
    # fit stored exactly what encode gives; decode is the layer's own weight
    assert torch.equal(codes.codes, layer.codes) and torch.equal(codes.signs, layer.signs)
    assert torch.equal(codes.scales, layer.scales)
    assert torch.equal(layer.decode(codes, torch.float32), layer.dequantize(torch.float32))
    # another weight: each sub-vector of the normalised magnitudes gets its nearest codeword of its group
    other = torch.randn(8, 32)
    enc = layer.encode(other)
    s = other.pow(2).mean(1).sqrt()
    mags = (other / s[:, None]).abs().reshape(2, -1, 4)
    for g in range(2):
        dist = torch.cdist(mags[g], layer.codebook[g].float())
        picked = dist.gather(1, enc.codes[g * 4 : (g + 1) * 4].long().reshape(-1, 1))
        torch.testing.assert_close(picked[:, 0], dist.min(1).values)
    wq = layer.decode(enc, torch.float32)
    assert torch.equal(wq[wq != 0] < 0, other[wq != 0] < 0)
    # code_size: every stored byte per output row
    stored = 8 * 8 * 1 + 2 * 16 * 4 * 2 + 8 * 4 + 8 * 4  # codes, fp16 codebook, fp32 scales, packed signs
    assert layer.code_dim == 32 and layer.code_size == stored / 8
    assert layer.bits_per_weight == pytest.approx(8 * stored / (8 * 32))


def test_vq_linear_refuses_foreign_codes():
    lin = nn.Linear(16, 8)
    layer = quantize_linear(lin, vector_size=4, codebook_size=16)
    codes = layer.encode(lin.weight)
    with pytest.raises(CodesMismatchError, match=r"not produced by this VQLinear \(this layer keeps scales\)"):
        layer.decode(codes._replace(scales=None))
    with pytest.raises(CodesMismatchError, match="this layer has no signs"):
        layer.decode(codes._replace(signs=torch.zeros(8, 2, dtype=torch.uint8)))
    with pytest.raises(CodesMismatchError, match=r"expected VQCodes"):
        layer.decode(codes.codes)
    with pytest.raises(CodesMismatchError, match=r"codes hold 2 sub-vectors"):
        layer.decode(codes._replace(codes=codes.codes[:, :2]))
    big = quantize_linear(lin, vector_size=4, codebook_size=300, iters=1)
    with pytest.raises(CodesMismatchError, match=r"stores torch.int16 codes, got torch.uint8"):
        big.decode(codes)
    with pytest.raises(ValueError, match=r"expected an \(out_features, in_features\) = \(8, 16\) weight"):
        layer.encode(torch.randn(16, 8))


@pytest.mark.parametrize("signs,dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_save_pretrained_round_trip(tmp_path, signs, dtype):
    layer = random_layer(12, 20, 2, 300, groups=2, signs=signs, dtype=dtype)
    layer.save_pretrained(tmp_path)
    back = VQLinear.from_pretrained(tmp_path)
    assert back.config == layer.config and back.is_fitted
    assert back.config["init_args"]["num_groups"] == 2 and "device" not in back.config["init_args"]
    for name, t in layer.state_dict().items():
        assert back.state_dict()[name].dtype == t.dtype and torch.equal(back.state_dict()[name], t), name
    x = torch.randn(5, 20)
    torch.testing.assert_close(back(x), layer(x), rtol=0, atol=0)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))


def test_quantize_model_swaps_the_linear_layers():
    model, dense = _mlp(), _mlp()
    report = quantize_model(model, vector_size=4, codebook_size=16, exclude=["4"], seed=1)
    assert report.names == ["0", "2"] and {s.new_type for s in report} == {VQLinear}
    assert type(model[4]) is nn.Linear
    # each layer is what quantize_linear gives with the same generator, layer after layer
    gen = torch.Generator().manual_seed(1)
    for i in (0, 2):
        want = quantize_linear(dense[i], vector_size=4, codebook_size=16, generator=gen)
        assert torch.equal(model[i].codes, want.codes) and torch.equal(model[i].codebook, want.codebook)
    x = torch.randn(3, 16)
    assert model(x).shape == (3, 8)
    with pytest.raises(ValueError, match=r"layer '0': vector_size 3 must divide in_features 16"):
        quantize_model(_mlp(), vector_size=3)


def test_quantize_model_is_all_or_nothing_and_keeps_ties():
    model = _mlp()
    kinds = [type(m) for m in model]
    with pytest.raises(ValueError, match=r"layer '4': num_groups 16 must divide out_features 8"):
        quantize_model(model, codebook_size=4, num_groups=16, iters=1)  # '0' and '2' (32 rows) are built first
    assert [type(m) for m in model] == kinds

    torch.manual_seed(0)
    shared, twin = nn.Linear(8, 8), nn.Linear(8, 8)
    twin.weight = shared.weight
    tied = nn.Sequential(shared, nn.ReLU(), shared, twin)
    quantize_model(tied, codebook_size=4)
    assert tied[0] is tied[2] and isinstance(tied[3], VQLinear)
    assert tied[3].codes is tied[0].codes and tied[3].codebook is tied[0].codebook
    assert not torch.equal(tied[3].bias, tied[0].bias)  # each keeps its own bias
    with pytest.raises(ValueError, match="no nn.Linear layer to quantize"):
        quantize_model(tied)
    with pytest.raises(ValueError, match="use quantize_linear"):
        quantize_model(nn.Linear(4, 4))
