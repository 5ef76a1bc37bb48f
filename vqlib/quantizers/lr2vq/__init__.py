"""LR²VQ: weight compression by clustering low-rank representations of subvectors.

Zhu, Zhou & Zhong 2022, "Learning Low-Rank Representations for Model
Compression" (LR²VQ, Low-Rank Representation Vector Quantization), arXiv 2211.11397.

A layer's n weights are cut into N = n/v subvectors of size v (``vector_size``), the
rows of X ∈ R^{N×v}. LR²VQ writes X ≈ R·P with a low-rank representation
R ∈ R^{N×d̃} and one shared P ∈ R^{d̃×v}, and clusters the rows of R (not of X)
into K (``codebook_size``) centroids C ∈ R^{K×d̃}:

    Ŵ = reshape(C[a]·P),   a_i = argmin_j ‖R_i − C_j‖²

It stores N·⌈log2 K⌉ bits of assignments plus K·d̃ + d̃·v floats, so

    ratio = 32·n / (N·⌈log2 K⌉ + 32·(K·d̃ + d̃·v))

(⌈log2 K⌉ = log2 K for the usual powers of two). v sets the ratio; d̃ ≤ v
trades the low-rank error ‖X − R·P‖ against the clustering error ‖R − C[a]‖,
which is smaller in d̃ dimensions than in v (the paper's point). C and P are
then fine-tuned on the task loss.

Here R and P start from the truncated SVD of X, the best rank-d̃ fit of a
trained layer. The paper first learns R and P by low-rank pre-training on the
task, then clusters; ``codebook_size=None`` gives that unclustered stage (recipe
in :func:`compress_model`), and it pays off at small d̃ (runs/lr2vq_notes.md).
Fine-tuning keeps the assignments fixed or makes them soft
(``assignments="soft"``, see :func:`finetune`).

Layout of the subvectors (row-major, consecutive blocks of v):

- ``nn.Linear`` ``(out, in)``: row o gives ``in/v`` subvectors
  ``W[o, j·v:(j+1)·v]``, so v must divide ``in_features``;
- ``nn.Conv2d`` ``(out, in/groups, kh, kw)``: output channel o's weights are
  flattened in PyTorch's memory order (input channel, kernel row, kernel
  column) and cut into blocks of v, so v must divide ``in/groups·kh·kw``.

Biases are kept as they are, in full precision, and are not counted in n.

The package follows the method's seams: :mod:`.codec` (the weight codec
:class:`LR2VQWeight`), :mod:`.layers` (``LR2VQLinear``, ``LR2VQConv2d``),
:mod:`.surgery` (whole models, on :func:`~vqlib.quantizers.swap_modules`) and
:mod:`.finetune` (the fine-tuning loop).
"""

from .codec import LR2VQWeight
from .finetune import finetune
from .layers import LR2VQConv2d, LR2VQLinear
from .surgery import LR2VQLayerReport, LR2VQReport, compress_model, compression_report, decompress_model

__all__ = [
    "LR2VQConv2d",
    "LR2VQLayerReport",
    "LR2VQLinear",
    "LR2VQReport",
    "LR2VQWeight",
    "compress_model",
    "compression_report",
    "decompress_model",
    "finetune",
]
