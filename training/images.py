"""Image grids for validation and results (no torchvision dependency).  Images (N, C, H, W) float in [0, 1]."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> torch.Tensor:
    """(N, C, H, W) -> (C, rows*(H+pad)+pad, nrow*(W+pad)+pad), padding black."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i, img in enumerate(images.float().clamp(0, 1).cpu()):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    return grid


def save_image(image: torch.Tensor, path: str | Path, scale: int = 1) -> None:
    """Save (C, H, W) in [0, 1] as PNG, optionally nearest-upscaled ``scale`` times."""
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
