"""Handwritten-looking digits as pen strokes, for tests that sketch a digit (with PIL, or with the mouse in Chromium)
and check that the miniature model draws that digit.

Strokes are polylines in a unit square, (x, y) with y pointing down; `render` draws them as dark ink on white paper,
the way a visitor sketches on the page.  `WIDTH`, 15% of the side, is about the ink width of the miniature's
training digits (scikit-learn's 8x8 digits upscaled to 32x32); the page's default pen comes from the model's notes
(`sdxs_model.json`: `sketch.pen_width`).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def _ellipse(cx: float, cy: float, rx: float, ry: float, start: float = 0.0, end: float = 360.0, n: int = 24):
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(start, end, n)]


STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_ellipse(0.5, 0.5, 0.26, 0.38)],
    1: [[(0.36, 0.26), (0.52, 0.1), (0.52, 0.9)]],
    2: [[(0.26, 0.3), (0.36, 0.14), (0.58, 0.1), (0.74, 0.24), (0.7, 0.44), (0.26, 0.88), (0.8, 0.88)]],
    3: [[(0.26, 0.16), (0.68, 0.14), (0.74, 0.3), (0.5, 0.48), (0.76, 0.62), (0.72, 0.84), (0.26, 0.88)]],
    4: [[(0.62, 0.9), (0.62, 0.1), (0.2, 0.64), (0.84, 0.64)]],
    5: [[(0.76, 0.12), (0.32, 0.12), (0.28, 0.46), (0.6, 0.42), (0.76, 0.6), (0.7, 0.84), (0.26, 0.88)]],
    6: [[(0.7, 0.1), (0.42, 0.28), (0.28, 0.62), (0.38, 0.88), (0.64, 0.86), (0.72, 0.66), (0.54, 0.5),
         (0.3, 0.6)]],
    7: [[(0.2, 0.12), (0.8, 0.12), (0.44, 0.9)]],
    8: [_ellipse(0.5, 0.29, 0.18, 0.18, 90, 450), _ellipse(0.5, 0.69, 0.22, 0.21, -90, 270)],
    9: [_ellipse(0.5, 0.33, 0.21, 0.21, 0, 360), [(0.71, 0.33), (0.66, 0.9)]],
}


WIDTH = 0.15


def render(digit: int, size: int = 512, width: float = WIDTH) -> np.ndarray:
    """The digit as dark strokes (``width`` of the side) on white: uint8 RGB (size, size, 3)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    px = max(1, round(width * size))
    for stroke in STROKES[digit]:
        points = [(x * size, y * size) for x, y in stroke]
        draw.line(points, fill="black", width=px, joint="curve")
        for x, y in (points[0], points[-1]):
            draw.ellipse((x - px / 2, y - px / 2, x + px / 2, y + px / 2), fill="black")
    return np.asarray(image)
