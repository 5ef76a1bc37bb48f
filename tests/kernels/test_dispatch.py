"""The one dispatch table: which path runs, by device, rows, signs, codebook size and Triton."""

import pytest
import torch

from vqlib.kernels import dispatch, select_kernel


def test_auto_off_the_gpu_uses_the_references():
    one, many = torch.randn(1, 8), torch.randn(2, 8)
    assert select_kernel("auto", one, signs=False, codebook_size=256) == "reference-lut"
    assert select_kernel("auto", many, signs=False, codebook_size=256) == "reference"
    assert select_kernel("auto", one, signs=True, codebook_size=256) == "reference"
    assert select_kernel("auto", one, signs=False, codebook_size=257) == "reference"


def test_gpu_rule_by_rows_dtype_and_signs(monkeypatch):
    class FakeCuda:  # select_kernel reads only these from the input
        is_cuda = True

        def __init__(self, rows, dtype):
            self.shape, self.dtype = (rows, 8), dtype

    monkeypatch.setattr(dispatch.vq_triton, "HAS_TRITON", True)
    half = torch.float16
    assert select_kernel("auto", FakeCuda(1, half), signs=False, codebook_size=16) == "triton-lut"
    assert select_kernel("auto", FakeCuda(1, half), signs=True, codebook_size=16) == "triton-gemm"
    assert select_kernel("auto", FakeCuda(256, torch.bfloat16), signs=False, codebook_size=16) == "triton-gemm"
    assert select_kernel("auto", FakeCuda(4096, half), signs=False, codebook_size=16) == "triton-dequant"
    assert select_kernel("auto", FakeCuda(1, torch.float32), signs=False, codebook_size=16) == "triton-dequant"


def test_forced_kernels_are_checked():
    x = torch.randn(2, 8)
    assert select_kernel("reference", x, signs=True, codebook_size=16) == "reference"
    with pytest.raises(ValueError, match="does not support sign bits"):
        select_kernel("reference-lut", x, signs=True, codebook_size=16)
    with pytest.raises(ValueError, match="kernel must be one of"):
        select_kernel("cuda", x, signs=False, codebook_size=16)
    assert set(dispatch.LINEAR) == set(dispatch.KERNELS) - {"auto"}  # every forced path has a function
