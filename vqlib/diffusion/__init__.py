"""Weight vector quantization of diffusion transformers (and any ``nn.Module``), and the diffusers plugin.

``quantize_(model, config, calibrate=None, filter_fn=None)`` quantizes in place (torchao's
shape); ``quantize_pipeline(pipe, config, class_labels=... | prompts=...)`` calibrates a
pipeline's denoiser along its own sampling path (VQ4DiT's zero-data calibration). Methods, one
config dataclass each: :class:`VQ4DiTConfig` (arXiv 2408.17131), :class:`SSVQConfig` (arXiv
2503.08668), and the baselines :class:`KMeansVQConfig` and :class:`RTNConfig`. Quantized layers
are :class:`vqlib.kernels.VQLinear` (or :class:`RTNLinear`), so the stored bytes really shrink.

Importing this package with diffusers installed registers the ``vqlib`` backend in diffusers'
quantizer mappings (:mod:`.plugin`; tested with diffusers >=0.42,<0.43).
"""

from .config import (
    FORMAT_VERSION,
    KMeansVQConfig,
    QuantConfig,
    RTNConfig,
    SSVQConfig,
    VQ4DiTConfig,
    VQLibMethod,
)
from .kmeans_vq import kmeans_init, to_vq_linear
from .pipeline import quantize_pipeline, record_denoiser_calls
from .quantize import LayerReport, QuantReport, find_blocks, model_bytes, quantize_, select_layers
from .rtn import RTNLinear
from .ssvq import SignSplitLinear, sign_ste
from .vq4dit import SoftVQLinear

__all__ = [
    "FORMAT_VERSION",
    "KMeansVQConfig",
    "LayerReport",
    "QuantConfig",
    "QuantReport",
    "RTNConfig",
    "RTNLinear",
    "SSVQConfig",
    "SignSplitLinear",
    "SoftVQLinear",
    "VQ4DiTConfig",
    "VQLibMethod",
    "find_blocks",
    "kmeans_init",
    "model_bytes",
    "quantize_",
    "quantize_pipeline",
    "record_denoiser_calls",
    "select_layers",
    "sign_ste",
    "to_vq_linear",
]

try:
    import diffusers  # noqa: F401
except ImportError:  # quantize_ and the configs work without diffusers; only the plugin needs it
    pass
else:
    from .plugin import register as _register

    _register()
