"""Samplers used by training: the teacher's multi-step ODE (DDIM, eta=0) and the student's one step.

Latents in the UNet's space; ``embeds`` (B, L, D) text-encoder hidden states; ``control`` (B, 3, H, W) in [0, 1].
The x0 conversions are ``sdxs.onestep``'s float64 pure functions.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from sdxs.controlnet import control_residuals
from sdxs.onestep import predict_x0


def _batch_t(t, x_t) -> torch.Tensor:
    """A per-sample timestep tensor (B,) from an int, a 0-d tensor or a (B,) tensor."""
    if torch.is_tensor(t) and t.ndim == 1:
        return t
    return torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)


def model_output(unet, x_t, t, embeds, controlnet=None, control=None, control_scale: float = 1.0) -> torch.Tensor:
    """The UNet's raw prediction (float32) at (x_t, t), with an optional ControlNet's residuals added.

    Inputs are cast to each network's weight dtype, so frozen bf16/fp16 teachers take float32 latents."""
    t = _batch_t(t, x_t)
    kwargs = {}
    dtype = _dtype(unet)
    if controlnet is not None:
        cn = _dtype(controlnet)
        kwargs = control_residuals(controlnet, x_t.to(cn), t, embeds.to(cn), control.to(cn), control_scale, dtype)
    return unet(x_t.to(dtype), t, encoder_hidden_states=embeds.to(dtype), **kwargs).sample.float()


def _dtype(module) -> torch.dtype:
    """The weight dtype of a (possibly DDP-wrapped) module."""
    return next(module.parameters()).dtype


def guided_output(unet, x_t, t, embeds, uncond, guidance: float, controlnet=None, control=None, control_scale=1.0):
    """Classifier-free guidance: out_u + g (out_c - out_u) in one batched pass; ``guidance == 1`` skips the uncond."""
    if guidance == 1.0 or uncond is None:
        return model_output(unet, x_t, t, embeds, controlnet, control, control_scale)
    t = _batch_t(t, x_t)
    uncond = uncond.expand_as(embeds) if uncond.shape[0] == 1 else uncond
    both = model_output(
        unet,
        torch.cat([x_t, x_t]),
        torch.cat([t, t]),
        torch.cat([uncond, embeds]),
        controlnet,
        None if control is None else torch.cat([control, control]),
        control_scale,
    )
    out_u, out_c = both.chunk(2)
    return out_u + guidance * (out_c - out_u)


@torch.no_grad()
def ddim_sample(
    unet,
    scheduler_config,
    noise,
    embeds,
    uncond=None,
    steps: int = 25,
    guidance: float = 1.0,
    controlnet=None,
    control=None,
    control_scale: float = 1.0,
) -> torch.Tensor:
    """The teacher's deterministic multi-step ODE sample (DDIM, trailing spacing, ending at x0) from ``noise``.

    x0 is never clipped or thresholded: latents are unbounded, and diffusers' pixel-space defaults
    (``clip_sample=True``, range 1), which a scheduler config saved with defaults keeps, would squash every step's x0
    into [-1, 1] (the known-answer checks caught it: a Gaussian target at mean 1.5 came out at 0.6)."""
    scheduler = DDIMScheduler.from_config(scheduler_config, timestep_spacing="trailing", set_alpha_to_one=True,
                                          clip_sample=False, thresholding=False)  # fmt: skip
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = guided_output(unet, x, t, embeds, uncond, guidance, controlnet, control, control_scale)
        x = scheduler.step(out, t, x).prev_sample
    return x


def onestep_sample(
    unet,
    noise,
    embeds,
    alphas_cumprod,
    timestep: int = 999,
    prediction_type: str = "epsilon",
    controlnet=None,
    control=None,
    control_scale: float = 1.0,
    uncond=None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """One network evaluation at ``timestep`` from pure noise, converted to x0 in float64 (keeps the graph)."""
    t = torch.full((noise.shape[0],), timestep, device=noise.device, dtype=torch.long)
    out = guided_output(unet, noise, t, embeds, uncond, guidance, controlnet, control, control_scale)
    return predict_x0(out, noise, alphas_cumprod[t], prediction_type)
