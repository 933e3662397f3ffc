from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def pipe(tiny_model_dir):
    from sdxs import SDXSPipeline

    return SDXSPipeline.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def photo():
    """A 160x120 synthetic photo with shapes and a gradient (not square: exercises crop + resize)."""
    x = np.linspace(0, 255, 160, dtype=np.float32)
    base = np.stack([np.tile(x, (120, 1)), np.tile(x[::-1], (120, 1)), np.full((120, 160), 90, np.float32)], -1)
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 20, 90, 80), fill=(240, 220, 30))
    draw.rectangle((100, 50, 150, 110), fill=(20, 40, 200))
    return image


@pytest.fixture(scope="session")
def sketch():
    """Black strokes on a white canvas, as the sketch page sends."""
    image = Image.new("RGB", (128, 128), "white")
    draw = ImageDraw.Draw(image)
    draw.line((10, 100, 60, 20, 118, 100), fill="black", width=4)
    draw.ellipse((40, 60, 90, 110), outline="black", width=3)
    return image
