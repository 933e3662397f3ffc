"""Optional safety checker (off by default): flags generated frames; the worker sends a blank frame instead.

`--safety-checker DIR|HUB_ID` names a folder in the layout of `CompVis/stable-diffusion-safety-checker`
(a `StableDiffusionSafetyChecker` and its `CLIPImageProcessor` config).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def load_safety_checker(spec: str) -> Callable[[list[np.ndarray]], list[bool]]:
    """Return `check(images) -> flags`: images uint8 RGB (H, W, 3), one boolean per image (True = replace)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPImageProcessor

    checker = StableDiffusionSafetyChecker.from_pretrained(spec).eval()
    processor = CLIPImageProcessor.from_pretrained(spec)

    def check(images: list[np.ndarray]) -> list[bool]:
        clip_input = processor(images=images, return_tensors="pt").pixel_values
        floats = np.stack(images).astype(np.float32) / 255.0  # the checker blanks these; we only keep the flags
        with torch.inference_mode():
            _, flagged = checker(images=floats, clip_input=clip_input.to(checker.dtype))
        return [bool(f) for f in flagged]

    return check
