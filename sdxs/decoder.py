"""The tiny image decoder (TAESD-shaped ``AutoencoderTiny``, 1.2M decoder parameters).

Value conventions (diffusers ``AutoencoderTiny``): ``encode`` takes pixels in [-1, 1] and returns latents in the UNet's
own scale (``scaling_factor`` is 1.0: no 0.18215 multiply); ``decode`` clamps latents with ``tanh(x / 3) * 3`` and
returns pixels in [-1, 1].
"""

from __future__ import annotations

from diffusers import AutoencoderTiny


def build_tiny_autoencoder(upsample_fn: str = "nearest", **overrides) -> AutoencoderTiny:
    """A randomly initialised tiny autoencoder with the released shapes (or ``overrides``)."""
    return AutoencoderTiny(upsample_fn=upsample_fn, **overrides)
