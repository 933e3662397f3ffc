"""Identity models of the same shapes: what is left of a frame's cost is the server's own (bench/server.py).

Used by `--null-model`.  `nullify(pipe)` swaps the UNet, the ControlNet and the tiny VAE of a loaded `SDXSPipeline`
(in place) for modules that return tensors of the real shapes at almost no cost: the encoder subsamples the pixels to
latents, the UNet returns its input, the ControlNet returns no residuals, the decoder returns a fixed picture of the
image's shape.  Prompt embeddings stay real (computed once per prompt and cached, as when serving).  Everything
outside the models (decode, squaring, control images, to-float, the one-step arithmetic, uint8 conversion, copies,
encode, protocol) runs as in production.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class NullUNet(nn.Module):
    def __init__(self, config: Any, dtype: torch.dtype):
        super().__init__()
        self.config, self._dtype = config, dtype

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def forward(self, latents, timesteps, encoder_hidden_states=None, return_dict=False, **residuals):
        return (latents,)


class NullControlNet(NullUNet):
    def forward(self, latents, timesteps, encoder_hidden_states=None, controlnet_cond=None, conditioning_scale=1.0,
                return_dict=False):
        return [], None


class NullVAE(NullUNet):
    """encode: (B, 3, S, S) -> (B, C, S/f, S/f) by subsampling; decode: the reverse by repetition."""

    def __init__(self, config: Any, dtype: torch.dtype, factor: int, channels: int):
        super().__init__(config, dtype)
        self.factor, self.channels = factor, channels

    def encode(self, pixels: torch.Tensor) -> SimpleNamespace:
        sub = pixels[:, :, :: self.factor, :: self.factor]
        return SimpleNamespace(latents=sub[:, :1].expand(-1, self.channels, -1, -1).contiguous())

    def decode(self, latents: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        """A fixed picture of the right shape (made once: a model's cost is not the server's), as a batch view."""
        b, _, h, w = latents.shape
        key = (h * self.factor, w * self.factor, latents.device)
        if getattr(self, "_picture", (None,))[0] != key:
            small = F.interpolate(torch.linspace(-1, 1, 3 * h * w).view(1, 3, h, w), scale_factor=self.factor,
                                  mode="bilinear")
            self._picture = key, (small + 0.1 * torch.randn(small.shape)).clamp(-1, 1).to(latents.device)
        return (self._picture[1].expand(b, -1, -1, -1),)


def nullify(pipe: Any) -> Any:
    """Swap the pipeline's models for identities of the same shapes (in place); returns `pipe`."""
    channels = pipe.unet.config.in_channels
    pipe.unet = NullUNet(pipe.unet.config, pipe.dtype)
    if pipe.controlnet is not None:
        pipe.controlnet = NullControlNet(pipe.controlnet.config, pipe.dtype)
    vae = NullVAE(pipe.encoder_vae.config, pipe.encoder_vae.dtype, pipe.vae_scale_factor, channels)
    pipe.encoder_vae = vae
    pipe.decoder_vae = NullVAE(pipe.decoder_vae.config, pipe.decoder_dtype, pipe.vae_scale_factor, channels)
    pipe.graphs = False  # nothing left to capture
    return pipe
