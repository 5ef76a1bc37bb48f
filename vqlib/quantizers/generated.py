"""The base of quantizers whose codebook is generated from learned parameters.

SimVQ (arXiv 2411.02038) computes ``E = C Wᵀ + b`` from a frozen basis, FVQ
(arXiv 2509.10140) ``E = VQBridge(E_raw)``. Both search the nearest code in l2
over the effective codebook ``E`` and train what generates it by gradient with
the loss ``‖z_q − sg(z)‖² + β‖sg(z_q) − z‖²``.
"""

from __future__ import annotations

import torch

from .base import Quantizer, mse
from .nearest import nearest

__all__ = ["GeneratedCodebookQuantizer"]


class GeneratedCodebookQuantizer(Quantizer):
    """A codebook computed from learned parameters (SimVQ, FVQ), trained by gradient.

    Nearest code in l2 over the effective codebook ``E``; loss
    ``‖z_q − sg(z)‖² + β‖sg(z_q) − z‖²`` (the first term trains what generates
    ``E``). Subclasses set ``beta`` and implement ``_effective_codebook``.
    """

    beta: float

    def _lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self._effective_codebook()[indices[:, 0]]

    def _encode(self, z: torch.Tensor) -> torch.Tensor:
        return self._encode_with(z, self._effective_codebook())

    def _quantize(self, z: torch.Tensor):
        codebook = self._effective_codebook()
        idx = self._encode_with(z, codebook)
        codes = codebook[idx]
        loss = mse(codes, z.detach()) + self.beta * mse(z, codes.detach())
        return z, codes, idx, loss

    @staticmethod
    def _encode_with(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        return nearest(z, codebook.detach())[1][:, 0]
