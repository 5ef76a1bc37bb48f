import pytest

from vqlib.quantizers import FSQ, VectorQuantizer
from vqlib.tokenizers import VQTokenizer


def tiny_tokenizer(quantizer="fsq"):
    q = {
        "fsq": lambda: FSQ([5, 5, 5], dim=16, bound="ifsq"),
        "vq": lambda: VectorQuantizer(16, 64, codebook_dim=4, metric="cosine"),
    }[quantizer]()
    return VQTokenizer(q, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=16)


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()
