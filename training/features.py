"""Feature networks for the one-step warm-up's feature matching (paper Fig. 3: "multi-layer features of an encoder").

Each maps UNet-space latents (B, 4, h, w) to a list of feature maps (B, C_l, H_l, W_l); all weights are frozen but
gradients flow to the input.  Built from the teacher's own VAE, so no extra pretrained network is needed:
``latent`` (the latents themselves), ``vae_decoder`` (the teacher decoder's up-stage outputs and its pixels),
``vae_encoder`` (decode with the teacher, then the teacher encoder's down-stage outputs; the paper's choice of an
encoder applied to both images), ``unet_encoder`` (the frozen diffusion UNet's down blocks and mid block on the
latents at a small timestep with the empty prompt: the paper's third option, which needs nothing beyond the teacher
and works offline).  Kinds combine with ``+``: ``latent+vae_encoder`` matches the latents themselves
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


class UNetEncoderFeatures(nn.Module):
    """The teacher UNet's encoder half as a feature network: down-block outputs and the mid block's, for latents
    treated as x_t at ``timestep`` (small: nearly clean) with the empty prompt's embeddings (1, L, D)."""

    def __init__(self, unet, uncond: torch.Tensor, timestep: int = 20):
        super().__init__()
        self.unet, self.timestep = unet.requires_grad_(False).eval(), timestep
        self.register_buffer("uncond", uncond.detach(), persistent=False)

    def forward(self, latents: torch.Tensor) -> list[torch.Tensor]:
        unet = self.unet
        dtype = next(unet.parameters()).dtype
        sample = latents.to(dtype)
        embedding = unet.time_embedding(unet.get_time_embed(sample, self.timestep).expand(len(sample), -1).to(dtype))
        context = self.uncond.to(dtype).expand(len(sample), -1, -1)
        hidden = unet.conv_in(sample)
        features = []
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, _ = block(hidden_states=hidden, temb=embedding, encoder_hidden_states=context)
            else:
                hidden, _ = block(hidden_states=hidden, temb=embedding)
            features.append(hidden.float())
        if unet.mid_block is not None:
            features.append(unet.mid_block(hidden, embedding, encoder_hidden_states=context).float())
        return features


class DINOv2Features(nn.Module):
    """DINOv2 (transformers' ``Dinov2Model``) on the teacher's decodes: patch tokens of every ``layer_every``-th layer
    as (B, hidden, H/14, W/14) maps; pixels are resized up to a multiple of the patch size and ImageNet-normalised."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, vae, model, layer_every: int = 3):
        super().__init__()
        self.vae, self.model = vae.requires_grad_(False).eval(), model.requires_grad_(False).eval()
        self.layer_every = layer_every
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, latents: torch.Tensor) -> list[torch.Tensor]:
        dtype = next(self.vae.parameters()).dtype
        return self.from_pixels(self.vae.decode((latents / self.vae.config.scaling_factor).to(dtype)).sample)

    def from_pixels(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Pixels (B, 3, H, W) in [-1, 1] -> the maps."""
        pixels = pixels.float()
        patch = self.model.config.patch_size
        side = max(patch, -(-max(pixels.shape[-2:]) // patch) * patch)
        pixels = torch.nn.functional.interpolate((pixels + 1) / 2, size=(side, side), mode="bilinear")
        pixels = ((pixels - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        states = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        grid = side // patch
        maps = []
        for state in states[self.layer_every :: self.layer_every] or states[-1:]:
            tokens = state[:, -grid * grid :]  # patch tokens (after the CLS and any register tokens)
            maps.append(tokens.transpose(1, 2).reshape(len(tokens), -1, grid, grid).float())
        return maps


def load_dinov2(name_or_path: str):
    """transformers' Dinov2Model from a Hub id or a folder; a ValueError saying what to do when it is not there."""
    from transformers import Dinov2Model

    try:
        return Dinov2Model.from_pretrained(name_or_path)
    except OSError as exc:
        raise ValueError(
            f"feature_net dinov2 needs the weights of {name_or_path!r}: they are not in the Hugging Face cache and "
            f"the Hub could not be reached ({type(exc).__name__}). Download them where there is a network "
            f"(hf download {name_or_path}) or set feature_model to a local folder; unet_encoder works offline."
        ) from None


class PixelFeatures(nn.Module):
    """A feature network on pixels (B, 3, H, W) in [-1, 1] (the decoder stage's Projected GAN): the teacher VAE
    encoder's down-stage outputs (``vae_encoder``, offline) or DINOv2's maps (``dinov2``)."""

    def __init__(self, kind: str, vae, model: str = "facebook/dinov2-small"):
        super().__init__()
        if kind not in ("vae_encoder", "dinov2"):
            raise ValueError(f"unknown pixel feature network {kind!r}: expected vae_encoder or dinov2")
        self.kind, self.vae = kind, vae.requires_grad_(False).eval()
        if kind == "dinov2":
            self.dinov2 = DINOv2Features(vae, load_dinov2(model))
        else:
            blocks = {str(i): f"encoder.down_blocks.{i}" for i in range(len(vae.encoder.down_blocks))}
            self.recorder = FeatureRecorder(vae, blocks)

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "dinov2":
            return self.dinov2.from_pixels(pixels)
        self.vae.encoder(pixels.to(next(self.vae.parameters()).dtype))
        return [f.float() for f in self.recorder.pop().values()]


class CombinedFeatures(nn.Module):
    """The layers of several feature networks, in order."""

    def __init__(self, parts: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, latents: torch.Tensor) -> list[torch.Tensor]:
        return [f for part in self.parts for f in part(latents)]


def feature_network(
    kind: str, vae=None, unet=None, uncond: torch.Tensor | None = None, model: str = "facebook/dinov2-small"
) -> nn.Module:
    """The feature network ``kind`` (``latent``, ``vae_encoder``, ``vae_decoder``, ``unet_encoder``, ``dinov2``, or
    several joined by ``+``) over the teacher's ``vae`` / ``unet`` (with the empty prompt's embeddings ``uncond``);
    ``model``: the DINOv2 Hub id or folder."""
    if "+" in kind:
        return CombinedFeatures([feature_network(k, vae, unet, uncond, model) for k in kind.split("+")])
    if kind == "dinov2":
        return DINOv2Features(vae, load_dinov2(model))
    if kind == "unet_encoder":
        if unet is None or uncond is None:
            raise ValueError("feature_net unet_encoder needs the teacher UNet and the empty prompt's embeddings")
        return UNetEncoderFeatures(unet, uncond)
    if kind == "latent":
        return LatentFeatures()
    if kind in ("vae_encoder", "vae_decoder"):
        return VAEFeatures(vae, kind)
    raise ValueError(
        f"unknown feature network {kind!r}: expected latent, vae_encoder, vae_decoder, unet_encoder or dinov2"
    )
