import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqlib.quantizers.packing import pack_bits, packed_size, unpack_bits


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 16), n=st.integers(0, 37), rows=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_round_trip_and_size(bits, n, rows, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (rows, n), generator=g)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, packed_size(n, bits)) == (rows, (n * bits + 7) // 8)
    torch.testing.assert_close(unpack_bits(packed, bits, n), codes, rtol=0, atol=0)


@pytest.mark.parametrize("bits", [1, 3, 4, 8, 16])
def test_layout_matches_numpy_little_endian_bit_stream(bits):
    codes = torch.randint(0, 1 << bits, (5, 11), generator=torch.Generator().manual_seed(bits))
    stream = ((codes.numpy()[..., None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(5, -1)
    ref = np.packbits(stream, axis=-1, bitorder="little")
    np.testing.assert_array_equal(pack_bits(codes, bits).numpy(), ref)


def test_extreme_codes_and_leading_dims():
    codes = torch.tensor([[[0, 65535, 1, 32768]]])
    torch.testing.assert_close(unpack_bits(pack_bits(codes, 16), 16, 4), codes, rtol=0, atol=0)
    ones = torch.ones(2, 3, 8, dtype=torch.uint8)
    assert pack_bits(ones, 1).tolist() == [[[255]] * 3] * 2


def test_bad_input():
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 16\]"):
        pack_bits(torch.zeros(4, dtype=torch.long), 17)
    with pytest.raises(ValueError, match=r"bits must be"):
        pack_bits(torch.zeros(4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 8\)"):
        pack_bits(torch.tensor([0, 8]), 3)
    with pytest.raises(ValueError, match="must lie in"):
        pack_bits(torch.tensor([-1, 2]), 3)
    with pytest.raises(ValueError, match="integer tensor"):
        pack_bits(torch.tensor([0.5]), 3)
    with pytest.raises(ValueError, match="take 2 bytes per row"):
        unpack_bits(torch.zeros(1, 3, dtype=torch.uint8), 3, 5)
    with pytest.raises(ValueError, match="uint8"):
        unpack_bits(torch.zeros(2, dtype=torch.int32), 8, 2)
