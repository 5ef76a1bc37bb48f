"""Quantizer configurations shared by the contract tests: every class, the options that change the maths."""

import pytest
import torch

from vqlib.quantizers import (
    BSQ,
    FSQ,
    FVQ,
    LFQ,
    GroupedQuantizer,
    ResidualFSQ,
    ResidualQuantizer,
    SimVQ,
    VectorQuantizer,
)

DIM = 12

CONFIGS = {
    "vq-ema": lambda: VectorQuantizer(DIM, 32),
    "vq-ema-cosine-proj": lambda: VectorQuantizer(DIM, 32, codebook_dim=4, metric="cosine"),
    "vq-grad-kmeans-dead": lambda: VectorQuantizer(
        DIM, 32, codebook_update="gradient", init="kmeans", kmeans_batches=2, dead_code_threshold=0.05
    ),
    "vq-rotation-proj": lambda: VectorQuantizer(DIM, 32, codebook_dim=6, gradient="rotation"),
    "vq-frozen": lambda: VectorQuantizer(DIM, 32, codebook_update="frozen"),
    "simvq": lambda: SimVQ(DIM, 32),
    "simvq-proj-rotation": lambda: SimVQ(DIM, 32, codebook_dim=5, gradient="rotation"),
    "fvq": lambda: FVQ(DIM, 64, hidden=16, heads=2, patch_size=4),
    "fvq-proj": lambda: FVQ(DIM, 16, codebook_dim=3, hidden=8, heads=2, patch_size=2),
    "fsq": lambda: FSQ([8, 5, 5, 5], dim=DIM),
    "fsq-exact-dim": lambda: FSQ([7, 5, 5, 5, 4, 3, 3, 3, 3, 3, 3, 3]),
    "fsq-groups": lambda: FSQ([8, 6, 5], dim=DIM, num_codebooks=2),
    "ifsq": lambda: FSQ([17, 17, 17, 17], dim=DIM, bound="ifsq"),
    "ifsq-groups-rotation": lambda: FSQ([9, 5], dim=DIM, num_codebooks=3, bound="ifsq", gradient="rotation"),
    "residual-vq": lambda: ResidualQuantizer(DIM, 16, num_quantizers=3),
    "residual-vq-shared-kmeans-dead-dropout": lambda: ResidualQuantizer(
        DIM,
        num_quantizers=3,
        quantizer=VectorQuantizer(DIM, 16, codebook_update="gradient", init="kmeans", kmeans_batches=2, dead_code_threshold=0.5),
        shared_codebook=True,
        quantize_dropout=0.5,
    ),
    "residual-simvq-proj-rotation": lambda: ResidualQuantizer(DIM, quantizer=SimVQ(4, 16), num_quantizers=2, gradient="rotation"),
    "residual-fsq": lambda: ResidualFSQ([5, 5, 3], num_quantizers=3, dim=DIM),
    "grouped-vq": lambda: GroupedQuantizer(DIM, VectorQuantizer(4, 16), groups=3),
    "grouped-residual": lambda: GroupedQuantizer(DIM, ResidualQuantizer(6, 16, num_quantizers=2), groups=2),
    "lfq-proj": lambda: LFQ(DIM, 2**5),
    "lfq-groups-exact": lambda: LFQ(codebook_size=2**4, num_codebooks=3, codebook_entropy="exact"),
    "bsq-proj": lambda: BSQ(DIM, 2**6),
    "bsq-groups-rotation": lambda: BSQ(DIM, 2**4, num_codebooks=3, gradient="rotation"),
}


@pytest.fixture(params=sorted(CONFIGS))
def make_quantizer(request):
    torch.manual_seed(0)
    return CONFIGS[request.param]


def warm_up(q, steps: int = 3, n: int = 64):
    """A few training steps so that k-means init, EMA and restarts have run."""
    q.train()
    for _ in range(steps):
        out = q(torch.randn(n, q.dim))
        if out.loss.requires_grad:
            out.loss.backward()
    return q
