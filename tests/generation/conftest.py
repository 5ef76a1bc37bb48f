import pytest
import torch

from vqlib.generation import LlamaGen
from vqlib.quantizers import FSQ, VectorQuantizer
from vqlib.tokenizers import VQTokenizer


def tiny_tokenizer(quantizer: str = "fsq") -> VQTokenizer:
    """32x32 images, 4x downsampling: an 8x8 token grid."""
    q = {
        "fsq": lambda: FSQ([5, 5, 5], dim=8, bound="ifsq"),
        "vq": lambda: VectorQuantizer(8, 64, codebook_dim=4, metric="cosine"),
    }[quantizer]()
    return VQTokenizer(q, ch=4, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8)


def tiny_generator(**kwargs) -> LlamaGen:
    args = dict(factors=[5, 5, 5], grid_size=8, num_classes=10, repa_dim=12)
    args.update(kwargs)
    return LlamaGen.preset("tiny", 125, **args)


@pytest.fixture
def generator():
    torch.manual_seed(0)
    g = tiny_generator()
    # LlamaGen zero-initialises the heads; random heads make sampling tests see non-uniform logits
    for head in g.output:
        torch.nn.init.normal_(head.weight, std=0.5)
    return g.eval()
