"""Stroke controls: a picture's ink redrawn as pen strokes, the way the page's sketch canvas sends a drawing.

The page (frontend/sketch.js) draws round-capped black strokes of one pen width on a white 512x512 canvas; the server
squares and resizes the frame with one antialiased bilinear resize (``sdxs.frames.square_batch``) and inverts it
(``sdxs.control.sketch``).  A picture's ink (bright pixels: the miniature's digits are white on black) is thinned to
its skeleton at ``RENDER`` pixels, redrawn with a round pen of ``width`` (a fraction of the side), and then takes that
same served path, so a ControlNet trained on these controls sees what the page sends, whatever the pen width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sdxs import control
from sdxs.frames import square_batch

# the side strokes are drawn at (the page draws at 512; after the resize to 32 both agree within a grey level)
RENDER = 128
# pen widths (fractions of the side) training controls cycle through, row by row: about 1.5 to 5 pixels at 32x32
TRAIN_WIDTHS = (0.05, 0.075, 0.1, 0.125, 0.15)


def skeleton(ink: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """bool (H, W) one-pixel-wide centre lines of the ``ink`` (float (H, W) in [0, 1]) above ``threshold``."""
    from skimage.morphology import skeletonize

    return skeletonize(ink > threshold)


def redraw(lines: np.ndarray, width: float) -> np.ndarray:
    """bool (H, W): ``lines`` drawn with a round pen ``width`` (a fraction of the side) wide."""
    import cv2

    d = max(1, round(width * lines.shape[-1]))
    pen = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))
    return cv2.dilate(lines.astype(np.uint8), pen) > 0


def stroke_pictures(pixels: torch.Tensor, widths: Sequence[float] = TRAIN_WIDTHS) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1], bright ink -> uint8 (B, 3, H, W) black strokes on white paper, as the page's
    canvas after the server's resize; row i is drawn ``widths[i % len(widths)]`` wide."""
    b, _, h, w = pixels.shape
    ink = F.interpolate((pixels.float().mean(1, keepdim=True) + 1) / 2, size=(RENDER, RENDER), mode="bilinear",
                        align_corners=False)[:, 0].cpu().numpy()  # fmt: skip
    drawn = np.stack([redraw(skeleton(ink[i]), widths[i % len(widths)]) for i in range(b)])
    paper = torch.from_numpy(np.where(drawn, 0, 255).astype(np.uint8))[:, None].expand(-1, 3, -1, -1)
    return square_batch(paper.contiguous(), h).to(pixels.device)


def stroke_controls(pixels: torch.Tensor, widths: Sequence[float] = TRAIN_WIDTHS) -> torch.Tensor:
    """The sketch control of ``stroke_pictures``: (B, 1, H, W) in [0, 1], white strokes on black
    (``sdxs.control.sketch``, the server's own inversion)."""
    return control.sketch(stroke_pictures(pixels, widths)).float() / 255.0
