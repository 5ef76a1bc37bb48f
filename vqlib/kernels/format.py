"""The stored format of a codebook-compressed linear layer: code types and checks (format in :mod:`.vq_linear`)."""

from __future__ import annotations

import torch

from vqlib.quantizers.packing import packed_size

__all__ = [
    "FLOAT_DTYPES",
    "MAX_CODEBOOK_SIZE",
    "as_dtype",
    "check_codes_in_range",
    "check_format",
    "code_dtype",
    "to_stored_codes",
    "unpack_signs",
    "unsigned",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_CODEBOOK_SIZE = 1 << 16


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A dtype as a config records it (``"float16"``) or as it is."""
    value = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; pass a torch.dtype or its name such as 'float16'")
    return value


def code_dtype(codebook_size: int) -> torch.dtype:
    """The smallest stored code type: ``uint8`` up to 256 codewords, ``int16`` (read as unsigned) up to 65536."""
    if not 1 <= codebook_size <= MAX_CODEBOOK_SIZE:
        raise ValueError(f"codebook size must be in [1, {MAX_CODEBOOK_SIZE}], got {codebook_size}")
    return torch.uint8 if codebook_size <= 256 else torch.int16


def to_stored_codes(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Integer codes in ``[0, K)`` → the stored dtype; out-of-range codes are an error, never wrapped."""
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    c = unsigned(codes) if codes.dtype == torch.int16 else codes.long()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= codebook_size):
        raise ValueError(
            f"codes must lie in [0, {codebook_size}) (the codebook size), got range [{int(c.min())}, {int(c.max())}]"
        )
    dtype = code_dtype(codebook_size)
    if dtype == torch.int16:
        c = torch.where(c >= 1 << 15, c - (1 << 16), c)  # two's complement of the unsigned 16-bit code
    return c.to(dtype).contiguous()


def unsigned(codes: torch.Tensor) -> torch.Tensor:
    """Stored codes (uint8, or int16 holding unsigned 16-bit values) → int64 in ``[0, 65536)``."""
    return codes.long() & 0xFFFF


def check_format(
    codebook: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor | None,
    signs: torch.Tensor | None,
    bias: torch.Tensor | None,
    in_features: int,
) -> None:
    """Shapes and dtypes of a stored layer; a clear error rather than a wrong number later."""
    if codebook.dim() != 3:
        raise ValueError(f"codebook must be (groups, codebook_size, vector_size), got shape {tuple(codebook.shape)}")
    if codebook.dtype not in FLOAT_DTYPES:
        raise ValueError(f"codebook must be fp16, bf16 or fp32, got {codebook.dtype}")
    groups, k, v = codebook.shape
    if codes.dim() != 2:
        raise ValueError(f"codes must be (out_features, in_features / vector_size), got shape {tuple(codes.shape)}")
    n, j = codes.shape
    if codes.dtype != code_dtype(k):
        raise ValueError(f"a codebook of {k} codewords stores {code_dtype(k)} codes, got {codes.dtype}")
    if j * v != in_features:
        raise ValueError(f"codes hold {j} sub-vectors of {v} per row = {j * v} inputs, expected {in_features}")
    if groups < 1 or n % groups:
        raise ValueError(f"{groups} codebook groups must split the {n} output rows evenly")
    devices = {t.device for t in (codebook, codes, scales, signs, bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors of a layer must be on one device, got {sorted(map(str, devices))}")
    for name, t in (("scales", scales), ("bias", bias)):
        if t is not None and (t.shape != (n,) or t.dtype not in FLOAT_DTYPES):
            raise ValueError(f"{name} must be a float (out_features,) = ({n},) tensor, got {t.dtype} {tuple(t.shape)}")
    if signs is not None and (signs.dtype != torch.uint8 or signs.shape != (n, packed_size(in_features, 1))):
        need = (n, packed_size(in_features, 1))
        raise ValueError(f"packed signs must be uint8 of shape {need}, got {signs.dtype} {tuple(signs.shape)}")


def check_codes_in_range(codes: torch.Tensor, codebook_size: int) -> None:
    if codes.numel() == 0:
        return
    hi = int(unsigned(codes).max())  # stored codes are unsigned: only the top can be out of range
    if hi >= codebook_size:
        raise ValueError(f"codes must lie in [0, {codebook_size}) (the codebook size), got a code {hi}")


def unpack_signs(signs: torch.Tensor, d: int) -> torch.Tensor:
    """Packed sign bytes ``(N, ⌈d/8⌉)`` → bool ``(N, d)``, True where negative (pack_bits' 1-bit layout)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=signs.device)
    return ((signs[..., None] >> shifts) & 1).reshape(signs.shape[0], -1)[:, :d].bool()
