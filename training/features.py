"""Feature networks for the one-step warm-up's feature matching (paper Fig. 3: "multi-layer features of an encoder").

Each maps UNet-space latents (B, 4, h, w) to a list of feature maps (B, C_l, H_l, W_l); all weights are frozen but
gradients flow to the input.  Built from the teacher's own VAE, so no extra pretrained network is needed:
``latent`` (the latents themselves), ``vae_decoder`` (the teacher decoder's up-stage outputs and its pixels),
``vae_encoder`` (decode with the teacher, then the teacher encoder's down-stage outputs; the paper's choice of an
encoder applied to both images).  Kinds combine with ``+``: ``latent+vae_encoder`` matches the latents themselves
as the first layer, which pins the latents' scale (the decoder saturates, so decoded features alone let it drift).
"""

from __future__ import annotations

import torch
from torch import nn

from training.hooks import FeatureRecorder


class LatentFeatures(nn.Module):
    def forward(self, latents: torch.Tensor) -> list[torch.Tensor]:
        return [latents.float()]


class VAEFeatures(nn.Module):
    def __init__(self, vae, kind: str = "vae_encoder"):
        super().__init__()
        self.vae, self.kind = vae.requires_grad_(False).eval(), kind
        blocks = vae.encoder.down_blocks if kind == "vae_encoder" else vae.decoder.up_blocks
        root = "encoder.down_blocks" if kind == "vae_encoder" else "decoder.up_blocks"
        self.recorder = FeatureRecorder(vae, {str(i): f"{root}.{i}" for i in range(len(blocks))})

    def forward(self, latents: torch.Tensor) -> list[torch.Tensor]:
        dtype = next(self.vae.parameters()).dtype
        pixels = self.vae.decode((latents / self.vae.config.scaling_factor).to(dtype)).sample
        decoder_features = self.recorder.pop()
        if self.kind == "vae_decoder":
            return [f.float() for f in decoder_features.values()] + [pixels.float()]
        self.vae.encoder(pixels)
        return [f.float() for f in self.recorder.pop().values()]


class CombinedFeatures(nn.Module):
    """The layers of several feature networks, in order."""

    def __init__(self, parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, latents: torch.Tensor) -> list[torch.Tensor]:
        return [f for part in self.parts for f in part(latents)]


def feature_network(kind: str, vae=None) -> nn.Module:
    if "+" in kind:
        return CombinedFeatures([feature_network(k, vae) for k in kind.split("+")])
    if kind == "latent":
        return LatentFeatures()
    if kind in ("vae_encoder", "vae_decoder"):
        return VAEFeatures(vae, kind)
    raise ValueError(f"unknown feature network {kind!r}")
