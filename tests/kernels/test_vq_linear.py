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
    vq_linear_reference,
    vq_lut_linear_reference,
)


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
    rows = n // layer.num_codebooks
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
    assert (back.vector_size, back.codebook_size, back.num_codebooks) == (2, 300, 2)
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
    assert layer._pick(x[0, :1]) == "reference-lut" and layer._pick(x[0]) == "reference"
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
    sq = quantize_linear(lin, vector_size=4, codebook_size=16, num_codebooks=2, signs=True)
    assert sq.signs is not None and sq.num_codebooks == 2
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
        VQLinear(16, 8, num_codebooks=3)
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
