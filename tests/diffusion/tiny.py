"""Tiny randomly initialised diffusion models and a small hand-made pixel pipeline, for the tests only.

NOT the testbed: these weights are random (seeded), so they test mechanics (swaps, calibration,
save/load), not quality. ``TinyPixelPipeline`` follows ``DiffusionPipeline``'s conventions
(``register_modules``, ``save_pretrained``/``from_pretrained``, ``__call__(class_labels,
num_inference_steps, guidance_scale, generator)``) on a pixel-space class-conditional DiT.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, DiTTransformer2DModel, PixArtTransformer2DModel


def tiny_dit(seed: int = 0, num_layers: int = 2, width_heads: int = 2, head_dim: int = 16) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=width_heads, attention_head_dim=head_dim, in_channels=1, out_channels=1,
        num_layers=num_layers, sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero",
    )  # fmt: skip
    # adaLN-Zero starts its modulation (and so every block) at zero; give the random model non-trivial blocks
    with torch.no_grad():
        for block in model.transformer_blocks:
            block.norm1.linear.weight.normal_(0, 0.05)
            block.norm1.linear.bias.normal_(0, 0.5)
        model.proj_out_2.weight.normal_(0, 0.05)
    return model.eval()


def tiny_pixart(seed: int = 0) -> PixArtTransformer2DModel:
    torch.manual_seed(seed)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1, num_layers=2, sample_size=8,
        patch_size=2, cross_attention_dim=32, caption_channels=24, norm_type="ada_norm_single",
        use_additional_conditions=False,
    ).eval()  # fmt: skip


class TinyPixelPipeline(DiffusionPipeline):
    """Class-conditional sampling with a pixel-space DiT and DDIM (a test stand-in for the testbed's pipeline)."""

    def __init__(self, transformer, scheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, class_labels, num_inference_steps: int = 4, guidance_scale: float = 1.0, generator=None):
        cfg = self.transformer.config
        labels = torch.as_tensor(class_labels, dtype=torch.long)
        x = torch.randn(len(labels), cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            timestep = torch.full((len(labels),), int(t), dtype=torch.long)
            eps = self.transformer(x, timestep=timestep, class_labels=labels).sample
            x = self.scheduler.step(eps, t, x).prev_sample
        return x


def tiny_pipeline(seed: int = 0) -> TinyPixelPipeline:
    return TinyPixelPipeline(tiny_dit(seed), DDIMScheduler(num_train_timesteps=100))
