"""The server's image boundary: header checks, batch decode, encode.

Frames stay encoded bytes until the worker. On the event loop `probe` reads only the header and applies the size
checks and the decompression-bomb guard (bad_image / image_too_small / image_too_large at once); the worker's staging
thread then decodes a whole batch with `decode_frames`: JPEG with nvJPEG on CUDA where torchvision's decoder is usable
and right (server/nvjpeg.py: a stream of its own, a self-test, the CPU whenever it is not), else libjpeg-turbo
(simplejpeg) at the smallest DCT scale that still covers the served size. PNG and WebP are decoded with PIL on
receipt, on a decode thread (`decode_now`: they cannot be decoded scaled down, so a huge one must not hold up a
batch), transparent pixels composited on white, then squared at once as the pipeline squares every frame (so only size
x size pixels are kept). The pipeline squares the frames (sdxs.frames). `encode` writes JPEG with libjpeg-turbo, WebP
and PNG with PIL.

Pixel convention at this boundary: uint8 RGB, shape (H, W, 3), values 0-255.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import simplejpeg
from PIL import Image, ImageFile

from server.protocol import ErrorCode, ImageFormat, ProtocolError

if TYPE_CHECKING:
    import torch

    from server.nvjpeg import NvJpeg

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, never a half-grey frame
log = logging.getLogger("sdxs.codec")


@dataclass(frozen=True, slots=True)
class ImageLimits:
    min_side: int = 16
    max_side: int = 4096
    max_pixels: int = 4096 * 4096


class Encoded:
    """An input frame still encoded: its bytes, declared format and header size (checked by `probe`).  `decoded`
    keeps its pixels once decoded, so an unchanged input under new parameters is not decoded again."""

    __slots__ = ("payload", "fmt", "width", "height", "decoded")

    def __init__(self, payload: bytes, fmt: ImageFormat, width: int, height: int):
        self.payload, self.fmt, self.width, self.height = payload, fmt, width, height
        self.decoded: np.ndarray | torch.Tensor | None = None  # uint8 (H, W, 3); a CUDA tensor when nvJPEG decoded it


def probe(payload: bytes, fmt: ImageFormat, limits: ImageLimits, frame_id: int | None = None) -> Encoded:
    """Read the header only: raises ProtocolError BAD_IMAGE (not this format), IMAGE_TOO_SMALL or IMAGE_TOO_LARGE.
    A JPEG header takes microseconds (call it on the event loop); PNG and WebP go through PIL (use a thread)."""
    try:
        if fmt is not ImageFormat.JPEG:
            raise ValueError("PIL reads PNG and WebP headers")
        height, width, _, _ = simplejpeg.decode_jpeg_header(payload)
        _check_size(width, height, limits, frame_id)
    except ValueError:  # PNG, WebP, or a JPEG libjpeg-turbo does not read: PIL decides (and checks the size)
        width, height = _open_checked(payload, fmt, limits, frame_id).size
    return Encoded(payload, fmt, width, height)


def decode_frames(images: Sequence[Any], size: int, gpu: NvJpeg | None = None) -> list[Any]:
    """Decode the `Encoded` among `images` (others pass through): uint8 RGB (H, W, 3) arrays, or CUDA tensors where
    `gpu` (nvJPEG) decoded them, at least `size` on the short side where the source is, or a ProtocolError
    (BAD_IMAGE) in place of a frame that does not decode.  One bad frame never fails the others."""
    out = list(images)
    todo = [i for i, im in enumerate(images) if isinstance(im, Encoded) and im.decoded is None]
    failure = None
    if gpu is not None:
        failure = gpu.decode([images[i] for i in todo if images[i].fmt is ImageFormat.JPEG])
    for i in todo:
        if images[i].decoded is None:
            try:
                images[i].decoded = _decode_one(images[i], size)
            except ProtocolError as err:
                out[i] = err
    if gpu is not None:
        gpu.judge(failure)
    return [im.decoded if isinstance(im, Encoded) and im.decoded is not None else im for im in out]


def decode_now(image: Encoded, size: int, frame_id: int | None = None) -> None:
    """Decode `image` into `image.decoded` (as `decode_frames` would); raises ProtocolError (BAD_IMAGE) when its body
    does not decode."""
    if image.decoded is None:
        try:
            image.decoded = _decode_one(image, size)
        except ProtocolError as err:
            raise ProtocolError(err.code, err.message, frame_id=frame_id) from err


def _decode_one(image: Encoded, size: int) -> np.ndarray:
    if image.fmt is ImageFormat.JPEG:
        short = min(image.width, image.height)
        try:  # libjpeg-turbo scales by M/8 while decoding: the smallest scale whose short side still covers size
            return simplejpeg.decode_jpeg(image.payload, "RGB", min_height=size if image.height == short else 0,
                                          min_width=size if image.width == short else 0)
        except ValueError:  # truncated, corrupt, or a kind libjpeg-turbo's fast path refuses (CMYK): PIL decides
            pass
    try:
        pil = Image.open(io.BytesIO(image.payload), formats=[image.fmt.pil_name])
        pil.load()
        return squared(np.asarray(to_rgb(pil)), size)
    # PIL's decoders raise OSError and ValueError mostly, but also EOFError, struct.error, IndexError... on corrupt
    # bytes: every one means "not a valid image", the client's bad_image, never a server error
    except Exception as exc:  # noqa: BLE001
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"{image.fmt.pil_name} data could not be decoded: "
                            f"{type(exc).__name__}: {exc}") from exc


def squared(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 RGB (size, size, 3), squared as the pipeline squares every frame (sdxs.frames, on
    the CPU): what a session keeps of a PNG or WebP, however large it came, and exactly what the pipeline would have
    made of it (a huge one is decoded whole, then only this much is kept)."""
    from sdxs import frames

    return frames.square([rgb], size)[0].permute(1, 2, 0).numpy()


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
    _check_size(*image.size, limits, frame_id)
    return image


def _check_size(width: int, height: int, limits: ImageLimits, frame_id: int | None) -> None:
    if min(width, height) < limits.min_side:
        raise ProtocolError(ErrorCode.IMAGE_TOO_SMALL,
                            f"image is {width}x{height}; each side must be at least {limits.min_side}",
                            frame_id=frame_id)
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ProtocolError(ErrorCode.IMAGE_TOO_LARGE,
                            f"image is {width}x{height}; at most {limits.max_side} per side and "
                            f"{limits.max_pixels} pixels", frame_id=frame_id)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as RGB; transparent pixels composited on white (an empty sketch canvas is white paper)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image.convert("RGB")


def encode(image: np.ndarray, fmt: ImageFormat, quality: int = 80) -> bytes:
    """Encode uint8 RGB (H, W, 3) as JPEG/WebP (`quality` 1-100) or PNG (fast, lossless).  JPEG goes through
    libjpeg-turbo directly (4:2:0, as PIL's default at these qualities)."""
    if fmt is ImageFormat.JPEG:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality, "RGB", "420", fastdct=False)
    buffer = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    if fmt is ImageFormat.WEBP:
        pil.save(buffer, "WEBP", quality=quality, method=0)
    elif fmt is ImageFormat.PNG:
        pil.save(buffer, "PNG", compress_level=1)
    else:
        raise ValueError(f"cannot encode to {fmt!r}")
    return buffer.getvalue()
