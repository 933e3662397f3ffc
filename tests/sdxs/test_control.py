"""One control-image definition (sdxs.control) for serving and training, pinned to OpenCV on every device."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sdxs import GenerationParams, GenerationRequest, control
from training.control import extract_control

THRESHOLDS = [(80, 160), (10, 40), (100, 50), (0, 255), (30, 31)]


def colour_card(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A colour test card: hue gradients, saturated discs, sensor noise (uint8 RGB (h, w, 3))."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    card = np.stack([x / w * 255, y / h * 255, 128 + 100 * np.sin(x / 7 + y / 11)], -1)
    for _ in range(8):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(5, 30)
        card[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = rng.integers(0, 256, 3)
    return (card + rng.normal(0, 6, card.shape)).clip(0, 255).astype(np.uint8)


def nchw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def test_grey_is_opencv_luma_bit_for_bit_on_both_paths():
    levels = np.arange(0, 256, 3, dtype=np.uint8)
    colours = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 86 * 86, 3)
    expected = cv2.cvtColor(colours, cv2.COLOR_RGB2GRAY)
    assert np.array_equal(control.grey_torch(nchw(colours))[0, 0].numpy(), expected)
    assert np.array_equal(control.grey(nchw(colours))[0, 0].numpy(), expected)


@pytest.mark.parametrize("seed", range(4))
def test_canny_tensor_port_equals_opencv(seed):
    """The CUDA path (canny_torch) runs here on the CPU: bit for bit OpenCV's Canny of the same grey picture."""
    card = colour_card(seed=seed) if seed < 3 else np.random.default_rng(seed).integers(0, 256, (64, 80, 3), np.uint8)
    grey = control.grey(nchw(card))
    for low, high in THRESHOLDS:
        expected = cv2.Canny(grey[0, 0].numpy(), low, high)
        got = control.canny_torch(grey, [(min(low, high), max(low, high))])[0, 0].numpy()
        assert np.array_equal(got, expected), (low, high)
    batch = torch.cat([grey, grey])  # per-frame thresholds in one call
    both = control.canny_torch(batch, [(80, 160), (10, 40)])
    assert np.array_equal(both[1, 0].numpy(), cv2.Canny(grey[0, 0].numpy(), 10, 40))


def test_training_sees_the_edges_and_sketches_it_is_served(pipe):
    """training.control.extract_control and the served control image agree on a colour picture (they used to
    differ on 31% of edge pixels: channel mean vs luma)."""
    card = colour_card(pipe.size, pipe.size, seed=5)
    pixels = torch.from_numpy(card).permute(2, 0, 1)[None].float() / 127.5 - 1
    for kind, mode in (("canny", "edges"), ("sketch", "sketch")):
        served = np.asarray(pipe.control_image(GenerationRequest(GenerationParams(mode=mode), card)))
        trained = (extract_control(pixels, kind)[0].permute(1, 2, 0) * 255).round().byte().numpy()
        assert np.array_equal(served, trained), kind
        assert served.std() > 10


def test_grey_pictures_keep_their_edges():
    """The miniature's ControlNet learnt Canny 80/160 of the channel mean of grey digits: unchanged by luma."""
    grey = np.random.default_rng(1).integers(0, 256, (40, 40), np.uint8)
    grey = cv2.GaussianBlur(grey, (5, 5), 2)
    rgb = np.repeat(grey[..., None], 3, -1)
    assert np.array_equal(control.canny(nchw(rgb))[0, 0].numpy(), cv2.Canny(grey, 80, 160))


def test_control_images_white_on_black_per_frame_kind():
    sketch = np.full((32, 32, 3), 255, np.uint8)
    sketch[10:12, 4:28] = 0  # a dark stroke on white paper
    frames = torch.cat([nchw(sketch), nchw(sketch)])
    out = control.control_images(frames, ["sketch", "edges"])
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert out[0, :, 10, 10].tolist() == [1.0] * 3 and out[0, :, 0, 0].tolist() == [0.0] * 3
    assert out[1].max() == 1.0 and out[1, :, 20, 20].max() == 0.0
