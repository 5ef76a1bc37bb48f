"""``LlamaGen``: class-conditional autoregressive image generation over tokenizer indices.

LlamaGen (Sun et al. 2024, arXiv 2406.06525): a decoder-only Llama transformer (RMSNorm, SwiGLU FFN,
rotary position embedding, no biases) over the raster-ordered token grid of a VQ tokenizer. The class
embedding is the first (prefix) token; the state at sequence position ``i`` predicts token ``i``:

    input  = [c, x_0, x_1, …, x_{N−2}]        output_i → p(x_i | c, x_{<i})

Rotary embedding is 2-D: the first half of each head's channels rotates with the row, the second half with
the column of the *input* token's grid cell (as in the official code). The prefix token gets the identity
rotation (the official code multiplies it by zeros, which zeroes its queries and keys; identity keeps the
class token attendable — a deliberate difference). During training a share ``class_dropout`` (0.1) of the
labels is replaced by the extra "null" class, so the same network also models ``p(x)``; classifier-free
guidance then samples from ``uncond + s·(cond − uncond)`` (both branches in one batch).

Factorised vocabularies: a token is a tuple of digits ``(d_1, …, d_F)`` in mixed radix (``factors``, first
digit least significant, the order FSQ numbers its grid in). Each factor has its own embedding table (summed
at the input) and its own output head (cross-entropies summed); sampling draws each digit from its head. An
iFSQ tokenizer with ``17⁴`` codes then needs four 17-way softmaxes instead of one 83,521-way one.

REPA (Yu et al., arXiv 2410.06940; LlamaGen-REPA as in iFSQ, arXiv 2601.17124): the hidden state after block
``repa_layer`` (default ``⌊depth/3⌋``) goes through a 3-layer SiLU MLP to the target encoder's width; see
:mod:`vqlib.generation.repa` for the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..quantizers import ConfigMixin

__all__ = ["PRESETS", "LlamaGen", "KVCache", "tokenizer_factors"]

# LlamaGen's GPT-B/L/XL/XXL (111M/343M/775M/1.4B with a 16384 vocabulary and 1000 classes) and CPU sizes.
PRESETS: dict[str, dict[str, int]] = {
    "B": dict(dim=768, depth=12, heads=12),
    "L": dict(dim=1024, depth=24, heads=16),
    "XL": dict(dim=1280, depth=36, heads=20),
    "XXL": dict(dim=1536, depth=48, heads=24),
    "cpu-S": dict(dim=128, depth=6, heads=4, multiple_of=32, repa_hidden=256),
    "cpu-M": dict(dim=192, depth=9, heads=6, multiple_of=32, repa_hidden=384),
    "tiny": dict(dim=32, depth=3, heads=2, multiple_of=8, repa_hidden=32),
}


def tokenizer_factors(quantizer, factorize: bool = True) -> list[int]:
    """Factors of a quantizer's token: FSQ levels per channel (``factorize``) or ``codebook_size``, per codebook."""
    levels = getattr(quantizer, "levels", None)
    per = list(levels) if factorize and levels is not None else [int(quantizer.codebook_size)]
    return per * int(quantizer.num_codebooks)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rope_2d(grid: tuple[int, int], head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """``(1 + h·w, head_dim/2, 2)`` cos/sin: identity for the class token, then rows × columns in raster order."""
    if head_dim % 4:
        raise ValueError(f"2-D rotary embedding needs a head dimension divisible by 4, got {head_dim}")
    half = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, half, 2).float() / half)  # half/2 frequencies per axis
    h, w = grid
    fr = torch.outer(torch.arange(h).float(), freqs)[:, None, :].expand(h, w, -1)
    fc = torch.outer(torch.arange(w).float(), freqs)[None, :, :].expand(h, w, -1)
    angles = torch.cat([fr, fc], -1).reshape(h * w, half)
    table = torch.stack([angles.cos(), angles.sin()], -1)
    identity = torch.stack([torch.ones(1, half), torch.zeros(1, half)], -1)
    return torch.cat([identity, table])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """``x (B, T, H, D)`` rotated pairwise by ``rope (T, D/2, 2)``."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = rope[None, :, None, :, 0], rope[None, :, None, :, 1]
    out = torch.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], -1)
    return out.flatten(-2).type_as(x)


@dataclass
class KVCache:
    """Keys and values of every block for ``(B, heads, max_len, head_dim)``; ``length`` positions are filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout, self.drop = dropout, nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None, start: int):
        b, t, _ = x.shape
        q, k, v = self.wqkv(x).view(b, t, 3, self.heads, self.head_dim).unbind(2)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            ck, cv = cache
            ck[:, :, start : start + t] = k
            cv[:, :, start : start + t] = v
            k, v = ck[:, :, : start + t], cv[:, :, : start + t]
        # a chunk that starts at 0 is causal within itself; one new token attends to everything cached
        if t > 1 and start > 0:
            raise ValueError("only a prefix (start 0) or one token at a time can be fed through the KV cache")
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=t > 1, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.drop(self.wo(out.transpose(1, 2).reshape(b, t, -1)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, dropout: float, eps: float):
        super().__init__()
        self.attention_norm, self.ffn_norm = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.attention = Attention(dim, heads, dropout)
        self.feed_forward = SwiGLU(dim, hidden, dropout)

    def forward(self, x, rope, cache, start):
        x = x + self.attention(self.attention_norm(x), rope, cache, start)
        return x + self.feed_forward(self.ffn_norm(x))


class LlamaGen(ConfigMixin, nn.Module):
    """Class-conditional autoregressive transformer over an ``h × w`` token grid.

    Args:
        codebook_size: codes per tokenizer index (the tokenizer quantizer's ``codebook_size``).
        num_codebooks: indices per grid cell (the quantizer's ``num_codebooks``).
        factors: digits of one grid cell's token, mixed radix; their product per codebook must equal
            ``codebook_size``. Default ``[codebook_size] * num_codebooks`` (one softmax per index); see
            :func:`tokenizer_factors` and :meth:`for_tokenizer` for FSQ levels.
        grid_size: token grid ``h`` (square) or ``[h, w]``.
        num_classes: class labels ``0 … num_classes−1``; one more embedding row is the null class.
        dim, depth, heads: width, blocks, attention heads (presets in :data:`PRESETS`).
        multiple_of: SwiGLU hidden width ``⌊8·dim/3⌋`` rounded up to a multiple of this (Llama: 256).
        class_dropout: share of training labels replaced by the null class (CFG needs it > 0).
        dropout: residual, attention and FFN dropout; token_dropout: dropout on the input embeddings.
        repa_layer: the block after which REPA reads the hidden state (1-based; default ``⌊depth/3⌋``).
        repa_dim: the target encoder's feature width; ``None`` builds no REPA projector.
        repa_hidden: the projector MLP's hidden width (REPA: 2048).
    """

    _config_default_module = "vqlib.generation"

    def __init__(
        self,
        codebook_size: int,
        num_codebooks: int = 1,
        factors: list[int] | None = None,
        grid_size: int | list[int] = 16,
        num_classes: int = 1000,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        multiple_of: int = 256,
        class_dropout: float = 0.1,
        dropout: float = 0.0,
        token_dropout: float = 0.0,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        repa_layer: int | None = None,
        repa_dim: int | None = None,
        repa_hidden: int = 2048,
    ):
        super().__init__()
        factors = [int(codebook_size)] * num_codebooks if factors is None else [int(f) for f in factors]
        if codebook_size < 2 or num_codebooks < 1:
            raise ValueError(f"need codebook_size >= 2 and num_codebooks >= 1, got {codebook_size} and {num_codebooks}")
        if len(factors) % num_codebooks or min(factors) < 2:
            raise ValueError(f"factors {factors} must be integers >= 2, the same number for each of {num_codebooks} codebooks")
        per = len(factors) // num_codebooks
        for g in range(num_codebooks):
            if math.prod(factors[g * per : (g + 1) * per]) != codebook_size:
                raise ValueError(f"factors {factors[g * per:(g + 1) * per]} multiply to {math.prod(factors[g * per:(g + 1) * per])}, "
                                 f"not codebook_size {codebook_size}")
        grid = (int(grid_size), int(grid_size)) if isinstance(grid_size, int) else tuple(int(g) for g in grid_size)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid_size must be an int or [h, w], got {grid_size}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if not 0 <= class_dropout < 1:
            raise ValueError(f"class_dropout must be in [0, 1), got {class_dropout}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        repa_layer = depth // 3 if repa_layer is None else int(repa_layer)
        if repa_dim is not None and not 1 <= repa_layer <= depth:
            raise ValueError(f"repa_layer must be in [1, depth={depth}], got {repa_layer}")
        self.codebook_size, self.num_codebooks, self.factors = int(codebook_size), num_codebooks, factors
        self.grid, self.num_classes, self.class_dropout = grid, num_classes, class_dropout
        self.depth, self.repa_layer, self.repa_dim = depth, repa_layer, repa_dim
        hidden = multiple_of * math.ceil(int(2 * 4 * dim / 3) / multiple_of)

        self.class_embedding = nn.Embedding(num_classes + 1, dim)  # row num_classes: the null class
        self.tok_embeddings = nn.ModuleList(nn.Embedding(f, dim) for f in factors)
        self.tok_dropout = nn.Dropout(token_dropout)
        self.layers = nn.ModuleList(Block(dim, heads, hidden, dropout, norm_eps) for _ in range(depth))
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.ModuleList(nn.Linear(dim, f, bias=False) for f in factors)
        self.repa_projector = (
            nn.Sequential(
                nn.Linear(dim, repa_hidden), nn.SiLU(), nn.Linear(repa_hidden, repa_hidden), nn.SiLU(),
                nn.Linear(repa_hidden, repa_dim),
            )
            if repa_dim is not None
            else None
        )
        self.register_buffer("rope", rope_2d(grid, dim // heads, rope_base), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # LlamaGen: normal(0, 0.02) for linear and embedding weights, zero output heads
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for head in self.output:
            nn.init.zeros_(head.weight)

    @classmethod
    def preset(cls, name: str, codebook_size: int, **kwargs: Any) -> LlamaGen:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(codebook_size, **{**PRESETS[name], **kwargs})

    @classmethod
    def for_tokenizer(cls, tokenizer, preset: str | None = None, factorize: bool = True, **kwargs: Any) -> LlamaGen:
        """A generator whose vocabulary is ``tokenizer``'s (FSQ levels as factors when ``factorize``)."""
        q = tokenizer.quantizer
        args = dict(num_codebooks=q.num_codebooks, factors=tokenizer_factors(q, factorize), **kwargs)
        return cls.preset(preset, q.codebook_size, **args) if preset else cls(q.codebook_size, **args)

    # ---- vocabulary ----------------------------------------------------------

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1]

    def check_tokenizer(self, tokenizer) -> None:
        """Raise if ``tokenizer``'s codes are not this generator's vocabulary."""
        q = tokenizer.quantizer
        if (q.codebook_size, q.num_codebooks) != (self.codebook_size, self.num_codebooks):
            raise ValueError(
                f"the tokenizer's codebook ({q.num_codebooks} x {q.codebook_size} codes) is not this generator's vocabulary "
                f"({self.num_codebooks} x {self.codebook_size}): use the tokenizer the generator was trained on, "
                "or train a generator for this one (LlamaGen.for_tokenizer)"
            )

    def to_digits(self, indices: torch.Tensor) -> torch.Tensor:
        """Tokenizer indices ``(B, h, w)`` (``(B, h, w, G)`` with G codebooks) → digits ``(B, h·w, F)``."""
        g = self.num_codebooks
        want = (self.grid[0], self.grid[1]) + ((g,) if g > 1 else ())
        if indices.dim() != len(want) + 1 or tuple(indices.shape[1:]) != want:
            raise ValueError(f"expected token indices (B, {', '.join(map(str, want))}), got shape {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"token indices must lie in [0, {self.codebook_size}): got [{int(indices.min())}, {int(indices.max())}]")
        flat = indices.long().reshape(indices.shape[0], self.seq_len, g)
        per = len(self.factors) // g
        digits = []
        for j in range(g):
            rest = flat[..., j]
            for f in self.factors[j * per : (j + 1) * per]:
                digits.append(rest % f)
                rest = rest // f
        return torch.stack(digits, -1)

    def from_digits(self, digits: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_digits`."""
        g, per = self.num_codebooks, len(self.factors) // self.num_codebooks
        out = []
        for j in range(g):
            idx, scale = torch.zeros_like(digits[..., 0]), 1
            for k, f in enumerate(self.factors[j * per : (j + 1) * per]):
                idx = idx + digits[..., j * per + k] * scale
                scale *= f
            out.append(idx)
        shape = (digits.shape[0], *self.grid) + ((g,) if g > 1 else ())
        return torch.stack(out, -1).reshape(shape)

    def _check_labels(self, labels: torch.Tensor, allow_null: bool = False) -> None:
        hi = self.num_classes + (1 if allow_null else 0)
        if labels.dim() != 1:
            raise ValueError(f"class labels must be a 1-D tensor, got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= hi):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}) (the generator was built for {self.num_classes} classes), "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )

    # ---- forward -------------------------------------------------------------

    def embed(self, digits: torch.Tensor) -> torch.Tensor:
        return sum(emb(digits[..., j]) for j, emb in enumerate(self.tok_embeddings))

    def _run(self, x: torch.Tensor, start: int, cache: KVCache | None, capture: int | None = None):
        rope = self.rope[start : start + x.shape[1]]
        captured = None
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, None if cache is None else (cache.keys[i], cache.values[i]), start)
            if capture is not None and i + 1 == capture:
                captured = x
        return self.norm(x), captured

    def output_logits(self, h: torch.Tensor) -> list[torch.Tensor]:
        return [head(h).float() for head in self.output]

    def forward(self, digits: torch.Tensor, labels: torch.Tensor, repa: bool = False):
        """Teacher-forced logits: one ``(B, N, f_j)`` per factor; with ``repa`` also the projected states ``(B, N, repa_dim)``.

        ``digits (B, N, F)`` from :meth:`to_digits` (or ``(B, N)`` with one factor). In training mode a share
        ``class_dropout`` of the labels is replaced by the null class.
        """
        if digits.dim() == 2:
            digits = digits[..., None]
        if digits.shape[1:] != (self.seq_len, len(self.factors)):
            raise ValueError(f"expected digits (B, {self.seq_len}, {len(self.factors)}), got {tuple(digits.shape)}")
        self._check_labels(labels, allow_null=True)
        if self.training and self.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        x = torch.cat([self.class_embedding(labels)[:, None], self.embed(digits[:, :-1])], 1)
        if repa and self.repa_projector is None:
            raise ValueError("this generator has no REPA projector: build it with repa_dim=<the encoder's feature width>")
        h, captured = self._run(self.tok_dropout(x), 0, None, self.repa_layer if repa else None)
        logits = self.output_logits(h)
        if repa:
            return logits, self.repa_projector(captured)
        return logits

    def loss(self, logits: list[torch.Tensor], digits: torch.Tensor) -> torch.Tensor:
        """Sum over factors of the mean cross-entropy."""
        if digits.dim() == 2:
            digits = digits[..., None]
        return sum(F.cross_entropy(lg.flatten(0, 1), digits[..., j].flatten()) for j, lg in enumerate(logits))

    # ---- sampling --------------------------------------------------------------

    def new_cache(self, batch: int, device=None, dtype=None) -> KVCache:
        p = next(self.parameters())
        shape = (batch, self.layers[0].attention.heads, self.seq_len, self.layers[0].attention.head_dim)
        mk = lambda: torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)  # noqa: E731
        return KVCache([mk() for _ in self.layers], [mk() for _ in self.layers])

    @torch.no_grad()
    def sample(
        self,
        class_labels: torch.Tensor | list[int],
        cfg_scale: float | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        return_logits: bool = False,
    ):
        """Token indices ``(B, h, w[, G])`` for ``class_labels``.

        ``cfg_scale``: ``None`` samples the conditional model alone; a number ``s`` runs the conditional and
        unconditional branches in one batch and samples from ``uncond + s·(cond − uncond)`` (``s = 1`` is the
        conditional distribution). ``top_k`` 0 and ``top_p`` 1 disable those filters. ``use_cache=False``
        recomputes the whole prefix at every step (slow; the reference the KV cache is tested against).
        """
        device = self.rope.device
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device)
        self._check_labels(labels)
        if cfg_scale is not None and self.class_dropout == 0:
            raise ValueError(
                "this generator was trained without class dropout (class_dropout=0), so it has no unconditional "
                "branch for classifier-free guidance: sample with cfg_scale=None, or train with class_dropout > 0"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"need top_p in (0, 1] and top_k >= 0, got top_p={top_p}, top_k={top_k}")
        if generator is None and seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        b = len(labels)
        guided = cfg_scale is not None
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.num_classes)])
        was_training = self.training
        self.eval()
        n, nf = self.seq_len, len(self.factors)
        digits = torch.zeros(b, n, nf, dtype=torch.long, device=device)
        cache = self.new_cache(len(labels)) if use_cache else None
        all_logits = []
        x = self.class_embedding(labels)[:, None]
        for i in range(n):
            if use_cache:
                h, _ = self._run(x, i, cache)
                h = h[:, -1]
            else:
                prefix = digits[:, :i].repeat(2 if guided else 1, 1, 1)
                seq = torch.cat([self.class_embedding(labels)[:, None], self.embed(prefix)], 1)
                h = self._run(seq, 0, None)[0][:, -1]
            logits = self.output_logits(h)
            if guided:
                logits = [u + cfg_scale * (c - u) for c, u in (lg.chunk(2) for lg in logits)]
            if return_logits:
                all_logits.append(logits)
            for j, lg in enumerate(logits):
                digits[:, i, j] = _draw(lg / temperature, top_k, top_p, generator)
            step = digits[:, i : i + 1]
            x = self.embed(step.repeat(2, 1, 1) if guided else step)
        self.train(was_training)
        indices = self.from_digits(digits)
        return (indices, all_logits) if return_logits else indices

    @torch.no_grad()
    def generate(self, class_labels, cfg_scale: float | None = None, tokenizer=None, **kwargs):
        """``(indices, images)``: sampled indices and, given a tokenizer, its decoded images in [-1, 1] (else None)."""
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
        indices = self.sample(class_labels, cfg_scale, **kwargs)
        images = tokenizer.decode(indices).clamp(-1, 1) if tokenizer is not None else None
        return indices, images


def _draw(logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """One sample per row of ``logits (B, V)`` after top-k and nucleus (top-p) filtering."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        remove = (cum - sorted_logits.softmax(-1)) >= top_p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
