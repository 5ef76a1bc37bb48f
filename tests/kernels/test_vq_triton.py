"""Triton kernels against the torch reference (CPU tensors under TRITON_INTERPRET=1, see conftest)."""

import random

import pytest
import torch
import torch.nn as nn

from tests.kernels.conftest import kernels_runnable
from vqlib.kernels import VQLinear, vq_dequantize_reference, vq_linear_reference
from vqlib.quantizers.packing import pack_bits

ok, why = kernels_runnable()
pytestmark = pytest.mark.skipif(not ok, reason=why)
if ok:
    from vqlib.kernels import vq_triton


def make_case(seed: int, device: str, signs=None, k=None):
    """A random layer: sizes off the block grid, several v, codebook sizes and groupings, optional parts."""
    rnd = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    v = rnd.choice([1, 2, 3, 4, 8])
    k = k or rnd.choice([2, 16, 37, 256, 300])
    groups = rnd.choice([1, 1, 2, 3])
    n = groups * rnd.randint(3, 50)
    d = v * rnd.randint(3, 90 // v)
    cb_dtype = rnd.choice([torch.float16, torch.bfloat16, torch.float32])
    signs = rnd.random() < 0.5 if signs is None else signs
    layer = dict(
        codebook=torch.randn(groups, k, v, generator=g).to(cb_dtype),
        codes=torch.randint(0, k, (n, d // v), generator=g).to(torch.uint8 if k <= 256 else torch.int16),
        scales=(torch.rand(n, generator=g) + 0.5).to(rnd.choice([torch.float32, torch.float16]))
        if rnd.random() < 0.7 else None,
        signs=pack_bits((torch.rand(n, d, generator=g) < 0.5).to(torch.uint8), 1) if signs else None,
    )  # fmt: skip
    bias = torch.randn(n, generator=g) if rnd.random() < 0.6 else None
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return {name: move(t) for name, t in layer.items()}, move(bias), (n, d)


def assert_matmul_close(y, x, layer, bias):
    """|y − ref| within a few roundings of x's dtype, relative to |x|·|W|ᵀ + |b| (the size of the terms summed)."""
    w = vq_dequantize_reference(**layer, dtype=torch.float32)
    ref = vq_linear_reference(x.float(), **layer, bias=bias)
    size = x.float().abs() @ w.abs().T + (0 if bias is None else bias.float().abs())
    eps = torch.finfo(x.dtype).eps
    err = (y.float() - ref).abs()
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert (err <= 3 * eps * size + 1e-6).all(), f"max error {err.max().item()} at max size {size.max().item()}"


@pytest.mark.parametrize("seed", range(12))
def test_dequantize_matches_reference_exactly(seed, device):
    layer, _, _ = make_case(seed, device)
    for dtype in (torch.float32, layer["codebook"].dtype):
        want = vq_dequantize_reference(**layer, dtype=dtype)
        assert torch.equal(vq_triton.dequantize(**layer, dtype=dtype), want)


@pytest.mark.parametrize("seed", range(16))
def test_gemm_matches_reference(seed, device):
    layer, bias, (n, d) = make_case(100 + seed, device)
    m = [1, 5, 16, 33, 70][seed % 5]
    dtype = [torch.float16, torch.bfloat16, torch.float32][seed % 3]
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)
    assert_matmul_close(vq_triton.gemm(x, **layer, bias=bias), x, layer, bias)


@pytest.mark.parametrize("seed", range(12))
def test_lut_matches_reference(seed, device):
    layer, bias, (n, d) = make_case(200 + seed, device, signs=False)
    m = 1 + seed % 8
    dtype = [torch.float16, torch.bfloat16, torch.float32][seed % 3]
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)
    assert_matmul_close(vq_triton.lut_linear(x, **layer, bias=bias), x, layer, bias)


def test_codes_above_32767_in_every_kernel(device):
    g = torch.Generator().manual_seed(0)
    k, n, d = 40000, 6, 8
    codes = torch.randint(32768, k, (n, d), generator=g).to(torch.int32)
    codes = torch.where(codes >= 32768, codes - 65536, codes).to(torch.int16)  # stored as unsigned 16-bit
    layer = dict(codebook=torch.randn(1, k, 1, generator=g).to(device), codes=codes.to(device), scales=None, signs=None)
    want = vq_dequantize_reference(**layer)
    assert torch.equal(vq_triton.dequantize(**layer), want)
    x = torch.randn(2, d, generator=g).to(device)
    assert_matmul_close(vq_triton.gemm(x, **layer), x, layer, None)
    assert_matmul_close(vq_triton.lut_linear(x, **layer), x, layer, None)


@pytest.mark.parametrize("kernel", ["triton-gemm", "triton-lut", "triton-dequant"])
def test_module_forward_through_each_kernel(kernel, device):
    g = torch.Generator().manual_seed(7)
    lin = nn.Linear(40, 18).to(device)
    neg = None if kernel == "triton-lut" else torch.rand(18, 40, generator=g) < 0.5
    layer = VQLinear.from_linear(
        lin, torch.randn(2, 20, 4, generator=g).half(), torch.randint(0, 20, (18, 10), generator=g),
        torch.rand(18, generator=g) + 0.5, neg, kernel=kernel,
    ).to(device)  # fmt: skip
    x = torch.randn(40, 3, 2, generator=g).permute(2, 1, 0).half().to(device)  # (2, 3, 40), not contiguous
    stored = (layer.codebook, layer.codes, layer.scales, layer.signs, layer.bias)
    want = vq_linear_reference(x.float().reshape(-1, 40), *stored)
    y = layer(x)
    assert y.shape == (2, 3, 18) and y.dtype == torch.float16
    torch.testing.assert_close(y.float().reshape(-1, 18), want, rtol=2e-3, atol=2e-3)
    layer.codes[0, 0] = 20  # out of range after construction: an error, not a clamped number
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 20\)"):
        layer(x)


def test_empty_and_one_row(device):
    layer, bias, (n, d) = make_case(3, device, signs=False)
    assert vq_triton.gemm(torch.zeros(0, d, device=device), **layer, bias=bias).shape == (0, n)
    assert vq_triton.lut_linear(torch.zeros(0, d, device=device), **layer, bias=bias).shape == (0, n)


def test_out_of_range_codes_never_read_outside_the_codebook(device):
    # called directly, bypassing VQLinear's validation: clamped, so no illegal access
    cb = torch.randn(1, 4, 2, device=device)
    codes = torch.full((3, 2), 255, dtype=torch.uint8, device=device)
    torch.testing.assert_close(vq_triton.dequantize(cb, codes), cb[0, 3].repeat(3, 2))


def test_kernel_bad_input(device):
    layer, bias, (n, d) = make_case(5, device, signs=True)
    x = torch.randn(2, d, device=device)
    with pytest.raises(ValueError, match=rf"expected x of shape \(M, {d}\)"):
        vq_triton.gemm(x[:, :-1], **layer, bias=bias)
    with pytest.raises(ValueError, match="does not support sign bits"):
        vq_triton.lut_linear(x, **layer, bias=bias)
    with pytest.raises(ValueError, match="at most 8 rows"):
        vq_triton.lut_linear(torch.randn(9, d, device=device), **{**layer, "signs": None})
    with pytest.raises(ValueError, match="codes must be contiguous"):
        vq_triton.dequantize(layer["codebook"], layer["codes"].T.contiguous().T)
    with pytest.raises(ValueError, match="expected fp16, bf16 or fp32 x"):
        vq_triton.gemm(x.double(), **layer)
    with pytest.raises(ValueError, match="scales must have shape"):
        vq_triton.gemm(x, **{**layer, "scales": torch.ones(n + 1, device=device)})
