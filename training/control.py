"""Control images extracted from pixels, for ControlNet training and the edge-F1 metric.

Input pixels (B, 3, H, W) in [-1, 1]; output control images (B, 3, H, W) in [0, 1], white edges on black (the
released sketch ControlNet's convention).  ``canny`` and ``sketch`` are the server's own (``sdxs.control``, applied to
the pixels rounded to uint8 as a served frame is), so a ControlNet trained here sees the edges it is served;
``strokes`` redraws the picture's ink as the page's pen strokes (``training.strokes``), what sketch mode is served.
Kinds joined by ``+`` alternate row by row (``strokes+canny``: even rows strokes, odd rows Canny edges), so one
ControlNet learns both serving modes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdxs import control
from training.strokes import TRAIN_WIDTHS, stroke_controls


def sobel_edges(pixels: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Binary edge map (B, 1, H, W) in {0, 1}: Sobel gradient magnitude of the grey image above ``threshold``
    (relative to each image's maximum magnitude)."""
    grey = ((pixels.float() + 1) / 2).mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=pixels.device).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = (gx**2 + gy**2).sqrt()
    peak = mag.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return (mag / peak > threshold).float()


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (B, 3, H, W) -> uint8 RGB (B, 3, H, W), rounded as an image file stores it."""
    return (((pixels.float() + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8)


def canny_edges(pixels: torch.Tensor, low: int = 80, high: int = 160) -> torch.Tensor:
    """Canny edges (B, 1, H, W) in {0, 1}: the server's edge mode (``sdxs.control.canny``)."""
    return (control.canny(to_uint8(pixels), low, high) > 0).float()


def extract_control(pixels: torch.Tensor, kind: str = "canny") -> torch.Tensor:
    """The control image for ``pixels``: ``canny``, ``sobel`` edges, ``sketch`` (inverted grey), ``strokes`` (the ink
    redrawn at the training pen widths, row by row) or ``strokes@W`` (one pen width W, a fraction of the side); kinds
    joined by ``+`` take turns row by row."""
    kinds = kind.split("+")
    if len(kinds) > 1:
        out = torch.empty((pixels.shape[0], 3, *pixels.shape[-2:]), device=pixels.device)
        for i, one in enumerate(kinds):
            if len(pixels[i :: len(kinds)]):
                out[i :: len(kinds)] = extract_control(pixels[i :: len(kinds)], one)
        return out
    if kind == "canny":
        edges = canny_edges(pixels)
    elif kind == "sobel":
        edges = sobel_edges(pixels)
    elif kind == "sketch":
        edges = control.sketch(to_uint8(pixels)).float() / 255.0
    elif kind == "strokes" or kind.startswith("strokes@"):
        widths = TRAIN_WIDTHS if kind == "strokes" else (float(kind.split("@", 1)[1]),)
        edges = stroke_controls(pixels, widths)
    else:
        raise ValueError(f"unknown control kind {kind!r}")
    return edges.expand(-1, 3, -1, -1).contiguous()
