"""Toy data that ships inside installed packages: scikit-learn's 8x8 digits, scikit-image's bundled photos.

Pixels are float32 (N, 3, S, S) in [-1, 1]; digits are white ink on black, replicated to RGB, bilinearly upscaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# The digit leads the prompt: the causal CLIP text encoder then carries it into every later token.  With the digit
# last ("a photo of the digit 3") a randomly initialised encoder changes only the final tokens and the toy teacher
# learnt no class conditioning in 500 steps (accuracy at chance); digit first: 0.45 after 300 steps.
PROMPT = "{0}: a photo of the digit {0}"
# A prompt that names no digit: sketch mode's, so that the drawing alone decides the digit (a digit prompt that
# contradicts the drawing would fight it).  The teacher learns it as "any digit" from extra rows of the train digits
# (``with_neutral_rows``); the ControlNet stages see it on half their rows (``sketch_captions``).  The model card and
# ``sdxs_model.json`` (``sketch.prompt``) name it, and the page puts it in the prompt box in sketch mode.
NEUTRAL_PROMPT = "a photo of a digit"
NEUTRAL_EVERY = 8  # the teacher's folder adds one neutral-prompt row per 8 train digits
# The page's default pen in sketch mode, a fraction of the canvas side (``sdxs_model.json``'s ``sketch.pen_width``):
# about the ink width of the training digits' skeletons redrawn (``training.strokes.TRAIN_WIDTHS`` spans 0.05-0.15)
SKETCH_PEN_WIDTH = 0.1
PHOTOS = (
    "astronaut",
    "camera",
    "cat",
    "chelsea",
    "coffee",
    "coins",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "brick",
    "grass",
    "gravel",
    "moon",
    "clock",
    "cell",
    "colorwheel",
)


SPLITS = ("train", "validation", "test")  # validation: every setting choice and sweep; test: only the claims table


@dataclass
class Digits:
    """The three stratified splits; the split seed alone fixes them, so every training seed sees the same ones."""

    train: torch.Tensor  # (N, 3, S, S) in [-1, 1]
    train_labels: torch.Tensor  # (N,) int64
    validation: torch.Tensor
    validation_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, labels) of split ``name`` (one of ``SPLITS``)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name), getattr(self, f"{name}_labels")


def digits(
    size: int = 32, validation_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0
) -> Digits:
    """sklearn's 1797 digits, upscaled to ``size``, split stratified into train / validation / test (about 70 / 15 /
    15%) by ``split_seed`` only."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]  # ink in [0, 1]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    pixels = (images * 2 - 1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(data.target).long()
    held_out = validation_fraction + test_fraction
    tr, rest = train_test_split(
        np.arange(len(labels)), test_size=held_out, random_state=split_seed, stratify=data.target
    )
    va, te = train_test_split(
        rest, test_size=test_fraction / held_out, random_state=split_seed, stratify=data.target[rest]
    )
    return Digits(pixels[tr], labels[tr], pixels[va], labels[va], pixels[te], labels[te])


def captions(labels: torch.Tensor) -> list[str]:
    """Each digit's own prompt."""
    return [PROMPT.format(int(k)) for k in labels]


def with_neutral_rows(pixels: torch.Tensor, labels: torch.Tensor, every: int = NEUTRAL_EVERY):
    """The teacher's and the text stages' rows: every digit with its own prompt, then every ``every``-th digit again
    with ``NEUTRAL_PROMPT``.  Returns (pixels (N + N/every, 3, S, S), captions)."""
    extra = pixels[::every]
    return torch.cat([pixels, extra]), captions(labels) + [NEUTRAL_PROMPT] * len(extra)


def sketch_captions(labels: torch.Tensor) -> list[str]:
    """The ControlNet stages' prompts: rows 0 and 1 of every 4 take ``NEUTRAL_PROMPT`` (sketch mode's), rows 2 and 3
    their digit's prompt (edges mode keeps the visitor's).  ``training.control``'s ``strokes+canny`` alternates the
    control kind row by row, so each kind meets both prompts."""
    return [NEUTRAL_PROMPT if i % 4 < 2 else PROMPT.format(int(k)) for i, k in enumerate(labels)]


def slanted(
    pixels: torch.Tensor,
    seed: int = 0,
    rotate: float = 12.0,
    shear: float = 0.35,
    widths: tuple[float, float] = (0.75, 1.15),
    heights: tuple[float, float] = (0.85, 1.05),
    shift: float = 0.08,
) -> torch.Tensor:
    """Each digit (N, 3, S, S) in [-1, 1] under its own random affine map (drawn from ``seed``): a rotation up to
    ``rotate`` degrees, a horizontal shear (slant) up to ``shear``, a width and height scale in ``widths`` /
    ``heights`` and a shift up to ``shift`` of the side; bilinear, black (-1) outside.  The sketches a visitor draws
    are slanted, narrow, wide and off-centre in ways scikit-learn's 1797 scanned digits barely cover."""
    n = len(pixels)
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    angle = torch.deg2rad(uniform(-rotate, rotate))
    slant, sx, sy = uniform(-shear, shear), uniform(*widths), uniform(*heights)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output -> input coordinates (affine_grid's convention): the inverse of scale, then shear, then rotation
    forward = torch.zeros(n, 3, 3)
    forward[:, 0, 0], forward[:, 0, 1] = sx * cos, sx * (slant * cos - sin)
    forward[:, 1, 0], forward[:, 1, 1] = sy * sin, sy * (slant * sin + cos)
    forward[:, :2, 2] = torch.stack([uniform(-shift, shift), uniform(-shift, shift)], 1) * 2
    forward[:, 2, 2] = 1
    theta = torch.linalg.inv(forward)[:, :2]
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    moved = F.grid_sample(pixels.float() + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (moved - 1).clamp(-1, 1)


def sketch_rows(pixels: torch.Tensor, labels: torch.Tensor, slanted_copies: int = 0, seed: int = 0):
    """The ControlNets' rows (the teacher's, stages 3 and 5): the train digits with ``sketch_captions``, then
    ``slanted_copies`` more copies of them under ``slanted`` (copy k drawn with ``seed + k``).  Returns (pixels
    (N * (1 + copies), 3, S, S) in [-1, 1], captions)."""
    copies = [pixels] + [slanted(pixels, seed + k) for k in range(slanted_copies)]
    labels = labels.repeat(1 + slanted_copies)
    return torch.cat(copies), sketch_captions(labels)


def photo_splits(split_seed: int = 0, size: int = 32) -> dict[str, torch.Tensor]:
    """Stage 2's photo crops (N, 3, S, S) in [-1, 1] by split: 480 to train on, 60 each to score PSNR on."""
    photos = photo_crops(600, size, seed=split_seed)
    return {"train": photos[:480], "validation": photos[480:540], "test": photos[540:]}


def photo_crops(n: int, size: int = 32, seed: int = 0, names=PHOTOS) -> torch.Tensor:
    """``n`` random ``size`` crops from scikit-image's bundled photos, each downscaled 4x first: (n, 3, S, S)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    sources = []
    for name in names:
        img = np.asarray(getattr(skimage.data, name)())
        img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
        pil = Image.fromarray(img.astype(np.uint8))
        sources.append(np.asarray(pil.resize((max(size, pil.width // 4), max(size, pil.height // 4)), Image.BICUBIC)))
    crops = []
    for i in range(n):
        src = sources[i % len(sources)]
        y, x = rng.integers(0, src.shape[0] - size + 1), rng.integers(0, src.shape[1] - size + 1)
        crops.append(src[y : y + size, x : x + size])
    return torch.from_numpy(np.stack(crops).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()


def write_folder(directory: str | Path, pixels: torch.Tensor, captions: list[str]) -> Path:
    """An image-text folder (``00000.png`` + ``00000.txt``), the layout ``training.data`` reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for i, (array, caption) in enumerate(zip(arrays, captions)):
        Image.fromarray(array).save(directory / f"{i:05d}.png")
        (directory / f"{i:05d}.txt").write_text(caption)
    return directory
