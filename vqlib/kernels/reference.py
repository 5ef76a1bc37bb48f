"""Torch references for codebook-compressed linear layers: what the Triton kernels must match (format in
:mod:`.vq_linear`). They run on any device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .format import unpack_signs, unsigned

__all__ = ["vq_dequantize_reference", "vq_linear_reference", "vq_lut_linear_reference"]


def vq_dequantize_reference(
    codebook: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor | None = None,
    signs: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The dense ``(N, J·v)`` weight of a stored layer, computed in fp32, returned in ``dtype`` (the codebook's)."""
    groups, k, v = codebook.shape
    n, j = codes.shape
    idx = unsigned(codes)
    if groups > 1:  # one flat table: group g's codewords start at row g·K
        idx = idx + (torch.arange(n, device=codes.device) // (n // groups) * k)[:, None]
    w = F.embedding(idx, codebook.reshape(groups * k, v).float()).reshape(n, j * v)
    if signs is not None:
        w = torch.where(unpack_signs(signs, j * v), -w, w)
    if scales is not None:
        w = w * scales.float()[:, None]
    return w.to(dtype or codebook.dtype)


def vq_linear_reference(x, codebook, codes, scales=None, signs=None, bias=None) -> torch.Tensor:
    """``x Wᵀ + b`` by dequantising W (fp32 maths when x is fp32, else in x's dtype as ``F.linear`` does)."""
    w = vq_dequantize_reference(codebook, codes, scales, signs, dtype=x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def vq_lut_linear_reference(x, codebook, codes, scales=None, bias=None) -> torch.Tensor:
    """``x Wᵀ + b`` through look-up tables, never forming W (no signs: a sign per weight breaks the table).

    For each row m and input group j the table holds ``T[m, j, c] = ⟨x[m, j·v:(j+1)·v], C[c]⟩`` for every
    codeword; output n sums ``T[m, j, a[n, j]]`` over j. In fp32.
    """
    groups, k, v = codebook.shape
    n, j = codes.shape
    lead = x.shape[:-1]
    xm = x.reshape(-1, j, v).float()
    rows_per_group = n // groups
    a = unsigned(codes)
    out = []
    for g in range(groups):
        table = torch.einsum("mjv,kv->mjk", xm, codebook[g].float())  # (M, J, K)
        ag = a[g * rows_per_group : (g + 1) * rows_per_group]  # (R, J)
        picked = table.gather(2, ag.T.unsqueeze(0).expand(xm.shape[0], j, -1))  # (M, J, R)
        out.append(picked.sum(1))
    y = torch.cat(out, 1)
    if scales is not None:
        y = y * scales.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(*lead, n)
