"""Image arrays to tensors and tensors to PNG files; no Lightning, so ``vqlib encode``/``decode`` start quickly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write

__all__ = ["save_grid", "to_rgb_tensor"]


def to_rgb_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC/HW array (uint8, bool or float) → ``(3, H, W)`` float in ``[0, 1]``."""
    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    else:
        a = a.astype(np.float32)
        if a.max() > 1.0:
            a = a / 255.0
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.shape[-1] == 4:  # composite onto white
        alpha = a[..., 3:4]
        a = a[..., :3] * alpha + (1 - alpha)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected a grayscale, RGB or RGBA image, got array of shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).clamp(0, 1)


def save_grid(images: torch.Tensor, path: Path, rows: int) -> None:
    """Images in ``[-1, 1]`` as a PNG grid with ``rows`` rows (written atomically)."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = (n + rows - 1) // rows
    grid = torch.ones(c, rows * h + (rows - 1) * 2, cols * w + (cols - 1) * 2)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[:, r * (h + 2) : r * (h + 2) + h, col * (w + 2) : col * (w + 2) + w] = (img.float().cpu() + 1) / 2
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
