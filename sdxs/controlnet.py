"""ControlNets: a student ControlNet that mirrors a (possibly mid-block-free) student UNet's down path, and the one
place a ControlNet's residuals are made for a UNet (``control_residuals``: the pipeline, the training stages).

``ControlNetModel.from_unet`` fails on a UNet with ``mid_block_type=None`` while the UNet still adds the ControlNet's
mid residual, so the student ControlNet gets the cheapest mid block diffusers has (``UNetMidBlock2D`` with one resnet;
its zero-initialised output conv makes it a no-op at the start) and the down path's weights are copied by hand.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

_SHARED_KEYS = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention", "block_out_channels",
    "layers_per_block", "downsample_padding", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
    "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "attention_head_dim",
    "num_attention_heads", "use_linear_projection", "class_embed_type", "addition_embed_type",
    "addition_time_embed_dim", "num_class_embeds", "upcast_attention", "resnet_time_scale_shift",
    "projection_class_embeddings_input_dim",
)
COPIED_FROM_UNET = ("conv_in", "time_proj", "time_embedding", "class_embedding", "add_embedding", "down_blocks")


def controlnet_config(unet_config, conditioning_channels: int = 3, **overrides) -> dict:
    """ControlNet config matching ``unet_config``'s down path, with a one-resnet mid block.

    ``overrides`` go straight into the config (e.g. ``conditioning_embedding_out_channels`` for a VAE that
    downsamples 4x instead of 8x).
    """
    cfg = {k: unet_config[k] for k in _SHARED_KEYS if k in unet_config}
    cfg.update(mid_block_type="UNetMidBlock2D", conditioning_channels=conditioning_channels, **overrides)
    return cfg


def build_student_controlnet(
    unet: UNet2DConditionModel, conditioning_channels: int = 3, copy_weights: bool = True, **overrides
) -> ControlNetModel:
    """A ControlNet for ``unet``, its embeddings and down blocks initialised from ``unet`` (the ControlNet paper's)."""
    controlnet = ControlNetModel.from_config(controlnet_config(unet.config, conditioning_channels, **overrides))
    controlnet.to(device=unet.device, dtype=unet.dtype)
    if copy_weights:
        for name in COPIED_FROM_UNET:
            source = getattr(unet, name, None)
            if source is not None and getattr(controlnet, name, None) is not None:
                getattr(controlnet, name).load_state_dict(source.state_dict())
    return controlnet


def control_residuals(
    controlnet: ControlNetModel | None,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    embeds: torch.Tensor,
    control: torch.Tensor,
    scale: float | torch.Tensor = 1.0,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """``controlnet``'s residuals as the UNet's keyword arguments ({} without a ControlNet).

    ``latents`` (B, 4, h, w) in the UNet's latent space, ``timesteps`` (B,), ``embeds`` (B, L, D) text hidden states,
    ``control`` (B, 3, H, W) in [0, 1], all in the ControlNet's dtype; ``scale`` a float or (B, 1, 1, 1) per-row
    conditioning scale.  ``dtype``: the residuals cast to it (the UNet's, where the two networks' dtypes differ).
    Gradients flow as the caller's grad mode says.
    """
    if controlnet is None:
        return {}
    down, mid = controlnet(latents, timesteps, encoder_hidden_states=embeds, controlnet_cond=control,
                           conditioning_scale=scale, return_dict=False)
    if dtype is not None:
        down, mid = tuple(r.to(dtype) for r in down), mid.to(dtype)
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
