"""Bit packing of integer codes: ``pack_bits`` / ``unpack_bits`` for 1–16 bits per code.

Codes are packed along the last dimension, little-endian: code ``j`` occupies
bits ``[j·b, (j+1)·b)`` of the row's bit stream, bit ``t`` of the stream is bit
``t mod 8`` of byte ``t // 8``. A row of ``n`` codes takes ``ceil(n·b / 8)``
bytes; :func:`packed_size` gives that number, and every codec in vqlib
reports its storage from the packed tensors it actually keeps.
"""

from __future__ import annotations

import torch

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32)


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits take once packed."""
    _check_bits(bits)
    return (n * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [1, 16], got {bits!r}")


def _weights(nbits: int, device) -> torch.Tensor:
    return 1 << torch.arange(nbits, device=device, dtype=torch.int32)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer ``codes`` of shape ``(..., n)``, each in ``[0, 2**bits)``, into ``(..., ceil(n·bits/8))`` uint8."""
    _check_bits(bits)
    if codes.dtype not in _INT_DTYPES:
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.ndim == 0:
        raise ValueError("codes must have at least one dimension (codes are packed along the last one)")
    c = codes.to(torch.int32)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {1 << bits}) for {bits} bits, got range [{int(c.min())}, {int(c.max())}]")
    *lead, n = c.shape
    if bits == 8:
        return c.to(torch.uint8)
    if bits == 16:
        return torch.stack([c & 0xFF, c >> 8], -1).reshape(*lead, 2 * n).to(torch.uint8)
    if bits == 4 and n % 2 == 0:
        pairs = c.reshape(*lead, n // 2, 2)
        return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)
    # general case: explode to a bit stream, then gather 8 bits per byte
    stream = ((c.unsqueeze(-1) >> torch.arange(bits, device=c.device, dtype=torch.int32)) & 1).reshape(*lead, n * bits)
    nbytes = packed_size(n, bits)
    pad = nbytes * 8 - n * bits
    if pad:
        stream = torch.cat([stream, stream.new_zeros(*lead, pad)], -1)
    return (stream.reshape(*lead, nbytes, 8) * _weights(8, c.device)).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``(..., ceil(n·bits/8))`` uint8 → ``(..., n)`` int64 codes."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed must be uint8, got {packed.dtype}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    need = packed_size(n, bits)
    if packed.ndim == 0 or packed.shape[-1] != need:
        got = tuple(packed.shape)
        raise ValueError(f"{n} codes of {bits} bits take {need} bytes per row, got packed shape {got}")
    p = packed.to(torch.int32)
    *lead, nbytes = p.shape
    if bits == 8:
        return p.long()
    if bits == 16:
        pairs = p.reshape(*lead, n, 2)
        return (pairs[..., 0] | (pairs[..., 1] << 8)).long()
    if bits == 4 and n % 2 == 0:
        return torch.stack([p & 0xF, p >> 4], -1).reshape(*lead, n).long()
    stream = ((p.unsqueeze(-1) >> torch.arange(8, device=p.device, dtype=torch.int32)) & 1).reshape(*lead, nbytes * 8)
    stream = stream[..., : n * bits].reshape(*lead, n, bits)
    return (stream * _weights(bits, p.device)).sum(-1).long()
