"""Image decode (with size checks and a decompression-bomb guard) and encode. CPU-bound: call from a thread pool.

Pixel convention at this boundary: uint8 RGB, shape (H, W, 3), values 0-255.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

from server.protocol import ErrorCode, ImageFormat, ProtocolError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, never a half-grey frame


@dataclass(frozen=True, slots=True)
class ImageLimits:
    min_side: int = 16
    max_side: int = 4096
    max_pixels: int = 4096 * 4096


def decode(payload: bytes, fmt: ImageFormat, size: int, limits: ImageLimits, frame_id: int | None = None) -> np.ndarray:
    """Decode `payload` (declared as `fmt`) to uint8 RGB (size, size, 3): center-crop to a square, resize.

    Checks the header's dimensions before decoding pixels; raises ProtocolError with BAD_IMAGE, IMAGE_TOO_SMALL or
    IMAGE_TOO_LARGE. Transparent pixels are composited on white (an empty sketch canvas is white paper).
    """
    image = _open_checked(payload, fmt, limits, frame_id)
    try:
        if fmt is ImageFormat.JPEG:  # let libjpeg decode at a reduced DCT scale that still covers `size`
            side = min(image.size)
            image.draft("RGB", (image.size[0] * size // side, image.size[1] * size // side))
        image.load()
        return np.asarray(_square(_to_rgb(image), size))
    # PIL's decoders raise OSError and ValueError mostly, but also EOFError, struct.error, IndexError... on corrupt
    # bytes: every one means "not a valid image", the client's bad_image, never a server error
    except Exception as exc:  # noqa: BLE001
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"{fmt.pil_name} data could not be decoded: "
                            f"{type(exc).__name__}: {exc}", frame_id=frame_id) from exc


def _open_checked(payload: bytes, fmt: ImageFormat, limits: ImageLimits, frame_id: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload), formats=[fmt.pil_name])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ProtocolError(ErrorCode.IMAGE_TOO_LARGE, f"image too large: {exc}", frame_id=frame_id) from exc
    except Exception as exc:  # noqa: BLE001 - any parser error on client bytes is bad_image (see decode)
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"bytes are not a valid {fmt.pil_name} image",
                            frame_id=frame_id) from exc
    width, height = image.size
    if min(width, height) < limits.min_side:
        raise ProtocolError(ErrorCode.IMAGE_TOO_SMALL,
                            f"image is {width}x{height}; each side must be at least {limits.min_side}",
                            frame_id=frame_id)
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ProtocolError(ErrorCode.IMAGE_TOO_LARGE,
                            f"image is {width}x{height}; at most {limits.max_side} per side and "
                            f"{limits.max_pixels} pixels", frame_id=frame_id)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image.convert("RGB")


def _square(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if side != width or side != height:
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image


def encode(image: np.ndarray, fmt: ImageFormat, quality: int = 80) -> bytes:
    """Encode uint8 RGB (H, W, 3) as JPEG/WebP (`quality` 1-100) or PNG (fast, lossless)."""
    buffer = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    if fmt is ImageFormat.JPEG:
        pil.save(buffer, "JPEG", quality=quality)
    elif fmt is ImageFormat.WEBP:
        pil.save(buffer, "WEBP", quality=quality, method=0)
    elif fmt is ImageFormat.PNG:
        pil.save(buffer, "PNG", compress_level=1)
    else:
        raise ValueError(f"cannot encode to {fmt!r}")
    return buffer.getvalue()
