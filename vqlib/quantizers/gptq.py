"""GPTQ's error feedback around any quantizer of column blocks.

Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", arXiv 2210.17323, after
Optimal Brain Quantization (OBQ; Frantar, Singh, Alistarh 2022, "Optimal Brain
Compression", arXiv 2208.11580). For a linear layer ``y = W x`` (``W``:
out × in) and calibration inputs ``X`` (rows), the output error of a
quantized ``Ŵ`` is ``‖X (W − Ŵ)ᵀ‖²_F = tr((W − Ŵ) H (W − Ŵ)ᵀ)`` with
``H = XᵀX``. The columns are quantized block by block, left to right, and the
error of each block is pushed onto the columns not yet quantized, where it can
still be compensated. With ``H`` dampened by ``λ = damp · mean diag(H)`` and
``U`` the upper Cholesky factor of ``H⁻¹``, fixing a block ``S`` at ``Q_S``
moves the remaining columns ``R`` by

    W_R ← W_R − E U_SR,   where   E U_SS = W_S − Q_S,

the least-squares optimum of the output error given ``Q_S`` (OBQ's update,
written with GPTQ's Cholesky rows so it needs no matrix inverse per step).

Here the quantizer is any callable ``quantize_group(w_block) -> ŵ_block`` on
an ``(out, block_size)`` block: round-to-nearest on a grid (``block_size=1``
is GPTQ exactly), a vector quantizer whose sub-vectors run along the input
dimension (Pyramid VQ, :func:`vqlib.quantizers.pvq_quantize_weight`), and so
on. Unlike GPTQ, a block is quantized jointly (the callable sees the whole
block at once), which is what a vector codec needs; GPTQ's lazy batch updates
are a speed-up that does not change the result and are not needed at this size.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["gptq_quantize"]


def _check_matrix(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a matrix, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    quantize_group: Callable[[torch.Tensor], torch.Tensor],
    *,
    block_size: int = 1,
    damp: float = 0.01,
) -> torch.Tensor:
    """Quantize ``weight`` (out × in) block by block with GPTQ's error feedback; returns ``Ŵ``.

    Args:
        weight: ``(out, in)`` float weights (not modified).
        hessian: ``(in, in)`` ``H = XᵀX`` of the calibration inputs (symmetric, positive semi-definite).
        quantize_group: maps an ``(out, block_size)`` block (``weight``'s dtype) to its quantized
            values of the same shape; called once per block, left to right.
        block_size: columns quantized together; must divide ``in``.
        damp: ``λ = damp · mean diag(H)`` is added to ``H``'s diagonal (GPTQ's 1 %).

    An input no calibration row reaches (``H_jj = 0``) is free: its column is set
    to 0 before quantization and ``H_jj`` to 1 (GPTQ's convention, which keeps ``H``
    invertible). Arithmetic is float64; ``Ŵ`` comes back in ``weight``'s dtype.
    """
    _check_matrix(weight, "weight")
    _check_matrix(hessian, "hessian")
    if not callable(quantize_group):
        raise ValueError(
            f"quantize_group must be a callable (w_block) -> w_hat_block, got {type(quantize_group).__name__}"
        )
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise ValueError(
            f"hessian must be (in, in) = ({cols}, {cols}) for weight of shape {tuple(weight.shape)}, "
            f"got {tuple(hessian.shape)}"
        )
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1 or cols % block_size:
        raise ValueError(f"block_size must be a positive divisor of in = {cols}, got {block_size!r}")
    if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not damp >= 0:
        raise ValueError(f"damp must be a number >= 0, got {damp!r}")

    W = weight.detach().to(torch.float64, copy=True)
    H = hessian.detach().to(torch.float64, copy=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype, device=H.device)
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError(
            "hessian is not positive definite even after damping: pass H = XᵀX of real inputs, or raise damp"
        ) from None
    out = torch.empty_like(weight)
    for start in range(0, cols, block_size):
        s = slice(start, start + block_size)
        block = W[:, s].to(weight.dtype)
        q = quantize_group(block)
        if not isinstance(q, torch.Tensor) or q.shape != block.shape:
            got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
            raise ValueError(
                f"quantize_group must return a tensor of the block's shape {tuple(block.shape)}, got {got}"
            )
        if not bool(torch.isfinite(q).all()):
            raise ValueError(f"quantize_group returned NaN or inf for columns {start}:{s.stop}")
        out[:, s] = q.to(out.dtype)
        err = torch.linalg.solve_triangular(U[s, s], W[:, s] - q.to(torch.float64), upper=True, left=False)
        W[:, s.stop :] -= err @ U[s, s.stop :]
    return out
