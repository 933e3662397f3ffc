"""Input frames -> the square uint8 batch the models see, as tensor ops on the pipeline's device.

The one place a frame is squared: centre crop to the short side, then one antialiased bilinear resize to ``size``.
Frames of equal shape are stacked, uploaded (from pinned memory on CUDA) and resized as one batch.

Accepted frames (the library's public edge): PIL images (converted to RGB), uint8 arrays (H, W, 3), (H, W, 4) (alpha
dropped, as PIL's RGB conversion does), (H, W, 1) or (H, W) (grey), uint8 tensors (H, W, 3) on any device, and encoded
image bytes (PNG, JPEG, WebP; decoded with PIL: the server decodes its frames itself, in server/codec.py).
Output: uint8 (B, 3, S, S) RGB, values 0-255, on the device.
"""

from __future__ import annotations

import io
import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdxs.errors import InvalidRequest

MIN_SIDE = 16


def open_image(data: bytes | bytearray | memoryview, field: str = "image") -> Image.Image:
    """Encoded image bytes as a loaded PIL image; InvalidRequest(field) when PIL cannot read them."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(field, f"bytes are not an image PIL can read ({exc})") from None
    return image


def to_hwc(image: Any, field: str = "image") -> np.ndarray | torch.Tensor:
    """One frame as uint8 (H, W, 3): a numpy array, or the caller's tensor as it is."""
    if isinstance(image, bytes | bytearray | memoryview):
        image = open_image(image, field)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray | torch.Tensor):
        hwc = _three_channels(image, field)
    else:
        raise InvalidRequest(field, f"expected a PIL image, a uint8 array or encoded image bytes, got "
                                    f"{type(image).__name__}")
    if min(hwc.shape[:2]) < MIN_SIDE:
        raise InvalidRequest(field, f"image is {hwc.shape[1]}x{hwc.shape[0]}; each side must be >= {MIN_SIDE}")
    return hwc


def _three_channels(array: np.ndarray | torch.Tensor, field: str) -> np.ndarray | torch.Tensor:
    if array.dtype not in (np.uint8, torch.uint8) or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InvalidRequest(field, f"expected a uint8 (H, W[, 3]) array, got {array.dtype} {tuple(array.shape)}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        return array.repeat(3, 2) if isinstance(array, np.ndarray) else array.expand(-1, -1, 3)
    return array[:, :, :3]


def square(images: Sequence[Any], size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Frames of any sizes -> uint8 (B, 3, size, size) on ``device``, channels-last, in input order."""
    device = torch.device(device)
    frames = [to_hwc(image) for image in images]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, frame in enumerate(frames):
        groups[tuple(frame.shape)].append(i)
    if len(groups) == 1:  # the usual case (a webcam's frames): no gather
        return square_batch(upload(frames, device), size)
    out = torch.empty((len(frames), 3, size, size), dtype=torch.uint8, device=device)
    out = out.contiguous(memory_format=torch.channels_last)
    for rows in groups.values():
        out[rows] = square_batch(upload([frames[i] for i in rows], device), size)
    return out


def upload(frames: Sequence[np.ndarray | torch.Tensor], device: torch.device) -> torch.Tensor:
    """Equal-shaped uint8 (H, W, 3) frames -> uint8 (B, 3, H, W) on ``device`` (a channels-last view of one stacked
    buffer; host frames pinned, and copied without blocking, on CUDA).  Tensors (e.g. decoded on the GPU by nvJPEG)
    and arrays may come in one batch: each kind is stacked on its own and the rows put back in order."""
    tensors = [i for i, f in enumerate(frames) if isinstance(f, torch.Tensor)]
    if len(tensors) == len(frames):
        stacked = torch.stack([f.to(device, non_blocking=True) for f in frames])
    elif not tensors:
        stacked = _upload_arrays(frames, device)
    else:
        arrays = [i for i in range(len(frames)) if i not in set(tensors)]
        stacked = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8, device=device)
        stacked[tensors] = torch.stack([frames[i].to(device, non_blocking=True) for i in tensors])
        stacked[arrays] = _upload_arrays([frames[i] for i in arrays], device)
    return stacked.permute(0, 3, 1, 2)


def _upload_arrays(frames: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Equal-shaped uint8 (H, W, 3) host arrays -> uint8 (B, H, W, 3) on ``device``."""
    if device.type == "cpu" and len(frames) == 1:  # no copy at all (the frame is only read)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(np.asarray(frames[0])).unsqueeze(0)  # (numpy's [None] has stride 0: not NHWC)
    host = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8, pin_memory=device.type == "cuda")
    np.stack([np.asarray(f) for f in frames], out=host.numpy())
    return host.to(device, non_blocking=True)


def square_batch(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> uint8 (B, 3, size, size): centre crop to the short side, antialiased bilinear resize
    (PIL's bilinear filter; uint8 in and out on the CPU, where torch has a fast kernel for it; float elsewhere)."""
    h, w = frames.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = frames[..., top : top + side, left : left + side]
    if side == size:
        return frames
    if frames.device.type == "cpu":
        return F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    resized = F.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def to_pixels(frames: torch.Tensor, dtype: torch.dtype,
              memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> (B, 3, S, S) in [-1, 1] (diffusers' ``VaeImageProcessor`` convention: x / 255 * 2 - 1)
    in ``dtype`` and ``memory_format``: one converting copy into the new layout, then arithmetic in place (a
    converting ``torch.mul(..., out=)`` from uint8 measured 7x slower on the CPU)."""
    pixels = torch.empty(frames.shape, dtype=torch.float32, device=frames.device, memory_format=memory_format)
    pixels.copy_(frames).mul_(2.0 / 255.0).sub_(1.0)
    return pixels.to(dtype)


def to_uint8_hwc(unit: torch.Tensor) -> torch.Tensor:
    """Rounded float (B, 3, S, S) in [0, 255] -> uint8 (B, S, S, 3), one buffer for the batch.  On the CPU through
    numpy and OpenCV (torch's float-to-uint8 cast and transposition take ten times as long there)."""
    if unit.device.type != "cpu":
        return unit.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    if unit.is_contiguous(memory_format=torch.channels_last):
        return torch.from_numpy(unit.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    import cv2

    planes = unit.numpy().astype(np.uint8)
    out = np.empty((planes.shape[0], *planes.shape[2:], 3), np.uint8)
    for frame, rgb in zip(out, planes):
        cv2.merge(list(rgb), dst=frame)
    return torch.from_numpy(out)


def to_pil(frame: torch.Tensor) -> Image.Image:
    """uint8 (3, S, S) -> a PIL RGB image (the library's public edge only)."""
    return Image.fromarray(frame.permute(1, 2, 0).cpu().numpy())
