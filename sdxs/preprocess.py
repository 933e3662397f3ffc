"""The former PIL preprocessing, kept only for ``SDXSPipeline.legacy`` (the old path that bench/server.py measures
against) and the server's ``--frame-path legacy``; the pipeline squares frames with ``sdxs.frames`` and makes control
images with ``sdxs.control``.

Inputs are PIL images, uint8 arrays (H, W, 3) or encoded image bytes (PNG, JPEG, WebP) in any size; they are
centre-cropped to a square and resized to the model's size.  Outputs are float tensors (1, 3, S, S): ``to_pixels``
in [-1, 1] for the tiny encoder; control images in [0, 1], white strokes on black as the released sketch ControlNet
expects.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from sdxs.errors import InvalidRequest
from sdxs.frames import MIN_SIDE, open_image


def to_rgb_square(image, size: int, field: str = "image") -> Image.Image:
    """A PIL RGB image of ``size`` x ``size`` (centre crop, then bicubic resize)."""
    if isinstance(image, bytes | bytearray | memoryview):
        image = open_image(image, field)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InvalidRequest(field, f"expected a uint8 (H, W[, 3]) array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InvalidRequest(field, f"expected a PIL image, a uint8 array or encoded image bytes, got "
                                    f"{type(image).__name__}")
    if min(image.size) < MIN_SIDE:
        raise InvalidRequest(field, f"image is {image.size[0]}x{image.size[1]}; each side must be >= {MIN_SIDE}")
    image = image.convert("RGB")
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    return image


def pil_to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def to_pixels(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [-1, 1] (diffusers' ``VaeImageProcessor`` convention)."""
    return pil_to_unit_tensor(image) * 2.0 - 1.0


def sketch_control(image: Image.Image) -> Image.Image:
    """Dark strokes on a light canvas -> white strokes on black (the released sketch ControlNet's input)."""
    return ImageOps.invert(image.convert("L")).convert("RGB")


def edge_control(image: Image.Image, low: int = 80, high: int = 160) -> Image.Image:
    """Canny edges of a photo: white edges on black, fed to the sketch ControlNet (webcam style transfer)."""
    gray = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, min(low, high), max(low, high))
    return Image.fromarray(edges).convert("RGB")
