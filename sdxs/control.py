"""Control images for the ControlNet, one definition for serving (sdxs.pipeline) and training (training/control.py).

Input: uint8 RGB frames (B, 3, H, W) on any device.  Output of ``control_images``: float (B, 3, H, W) in [0, 1],
white strokes on black, the released sketch ControlNet's convention.

* ``grey``: ITU-R BT.601 luma in OpenCV 5's fixed point (``cv2.cvtColor(..., COLOR_RGB2GRAY)``; OpenCV on the CPU,
  the same integer formula as tensor ops elsewhere).  On grey
  pictures (R = G = B, like the miniature's digits) it is the picture itself, so edges trained on the channel mean of
  grey digits are unchanged.
* ``sketch``: the grey picture inverted (dark strokes on light paper -> white on black).
* ``canny``: ``cv2.Canny(grey, low, high)`` (3x3 Sobel, L1 magnitude, hysteresis).  On the CPU it is OpenCV itself;
  on other devices a torch port of the same algorithm, pinned bit for bit to OpenCV by tests/sdxs/test_control.py.
  (kornia's Canny blurs first and thresholds an L2 magnitude in [0, 1]: other edges than the ones trained on.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SHIFT = 15  # OpenCV's RGB2GRAY for 8-bit (OpenCV 5): (R*9798 + G*19235 + B*3735 + 2^14) >> 15
LUMA = (9798, 19235, 3735)
TG22 = 13573  # round(tan(22.5 deg) * 2^15), as OpenCV's Canny sector test
CANNY_SHIFT = 15
HYSTERESIS_CHECK_EVERY = 8  # dilation rounds between convergence checks (each check waits for the device)


def grey(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB -> uint8 (B, 1, H, W) luma (OpenCV 5's ``COLOR_RGB2GRAY``)."""
    if rgb.device.type == "cpu":  # 20x faster than the tensor ops there
        import cv2

        frames = [cv2.cvtColor(np.ascontiguousarray(f.permute(1, 2, 0).numpy()), cv2.COLOR_RGB2GRAY) for f in rgb]
        return torch.from_numpy(np.stack(frames))[:, None]
    return grey_torch(rgb)


def grey_torch(rgb: torch.Tensor) -> torch.Tensor:
    """``grey`` as integer tensor ops (exact: every product and sum stays below 2^31)."""
    r, g, b = rgb.to(torch.int32).unbind(1)
    y = (r * LUMA[0] + g * LUMA[1] + b * LUMA[2] + (1 << (SHIFT - 1))) >> SHIFT
    return y.to(torch.uint8)[:, None]


def sketch(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W): dark strokes on a light canvas -> uint8 (B, 1, H, W) white strokes on black."""
    return 255 - grey(rgb)


def canny(rgb: torch.Tensor, low: Sequence[int] | int = 80, high: Sequence[int] | int = 160) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB -> uint8 (B, 1, H, W) edges in {0, 255}: ``cv2.Canny`` of the luma, per-frame
    thresholds (``low``/``high``: one int, or one per frame; swapped when low > high, as OpenCV does)."""
    n = rgb.shape[0]
    lows, highs = _per_frame(low, n), _per_frame(high, n)
    pairs = [(min(lo, hi), max(lo, hi)) for lo, hi in zip(lows, highs)]
    g = grey(rgb)
    if g.device.type == "cpu":
        return canny_opencv(g, pairs)
    return canny_torch(g, pairs)


def canny_opencv(g: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    import cv2

    frames = g[:, 0].contiguous().numpy()
    out = np.stack([cv2.Canny(frame, lo, hi) for frame, (lo, hi) in zip(frames, pairs)])
    return torch.from_numpy(out)[:, None]


def canny_torch(g: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """OpenCV's Canny (aperture 3, L1 gradient) as batched tensor ops: the same sector test in integers, the same
    neighbour comparisons (strict on one side), hysteresis by repeated 3x3 dilation until nothing changes."""
    n, device = g.shape[0], g.device
    x = F.pad(g.float(), (1, 1, 1, 1), mode="replicate")  # Sobel with BORDER_REPLICATE; exact in float32
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=device).view(1, 1, 3, 3)
    dx = F.conv2d(x, kx).round().to(torch.int32)
    dy = F.conv2d(x, kx.transpose(2, 3)).round().to(torch.int32)
    mag = dx.abs() + dy.abs()
    p = F.pad(mag, (1, 1, 1, 1))  # magnitudes outside the picture are 0
    h, w = mag.shape[-2:]

    def at(r: int, c: int) -> torch.Tensor:  # the neighbour at row offset r, column offset c
        return p[..., 1 + r : 1 + r + h, 1 + c : 1 + c + w]

    ax, ay = dx.abs(), dy.abs() << CANNY_SHIFT
    tg22x = ax * TG22
    tg67x = tg22x + (ax << (CANNY_SHIFT + 1))
    horizontal = (mag > at(0, -1)) & (mag >= at(0, 1))
    vertical = (mag > at(-1, 0)) & (mag >= at(1, 0))
    falling = (mag > at(-1, 1)) & (mag > at(1, -1))  # dx, dy of opposite signs
    rising = (mag > at(-1, -1)) & (mag > at(1, 1))
    diagonal = torch.where((dx ^ dy) < 0, falling, rising)
    peak = torch.where(ay < tg22x, horizontal, torch.where(ay > tg67x, vertical, diagonal))
    lows = torch.tensor([lo for lo, _ in pairs], device=device, dtype=torch.int32).view(n, 1, 1, 1)
    highs = torch.tensor([hi for _, hi in pairs], device=device, dtype=torch.int32).view(n, 1, 1, 1)
    candidate = peak & (mag > lows)
    edges = candidate & (mag > highs)
    return (_hysteresis(edges, candidate) * 255).to(torch.uint8)


def _hysteresis(strong: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """Every candidate 8-connected to a strong pixel through candidates (OpenCV's edge tracking)."""
    edges = strong.float()
    allowed = candidate.float()
    while True:
        before = edges
        for _ in range(HYSTERESIS_CHECK_EVERY):
            edges = F.max_pool2d(edges, 3, stride=1, padding=1) * allowed
        if torch.equal(edges, before):
            return edges.bool()


def control_images(rgb: torch.Tensor, kinds: Sequence[str], low: Sequence[int] | int = 80,
                   high: Sequence[int] | int = 160) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB -> float32 (B, 3, H, W) in [0, 1], white on black (a view repeating one channel);
    ``kinds[i]`` is ``"sketch"`` or ``"edges"`` (the serving modes) for frame i; ``low``/``high`` apply to edges."""
    n = rgb.shape[0]
    lows, highs = _per_frame(low, n), _per_frame(high, n)
    made = {}
    for kind in set(kinds):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        picked = rgb if len(rows) == n else rgb[rows]
        if kind == "sketch":
            made[kind] = rows, sketch(picked)
        elif kind == "edges":
            made[kind] = rows, canny(picked, [lows[i] for i in rows], [highs[i] for i in rows])
        else:
            raise ValueError(f"unknown control kind {kind!r}")
    if len(made) == 1:
        out = next(iter(made.values()))[1]
    else:
        out = torch.empty((n, 1, *rgb.shape[-2:]), dtype=torch.uint8, device=rgb.device)
        for rows, values in made.values():
            out[rows] = values
    return (out.float() / 255.0).expand(-1, 3, -1, -1)


def _per_frame(value: Sequence[int] | int, n: int) -> list[int]:
    values = [int(value)] * n if isinstance(value, int | np.integer) else [int(v) for v in value]
    if len(values) != n:
        raise ValueError(f"expected {n} thresholds, got {len(values)}")
    return values
