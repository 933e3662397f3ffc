"""Pieces several stages share: noise/timestep draws from the train state's generator, decoding for validation."""

from __future__ import annotations

import torch

from training.config import check_choice


def randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Standard normal noise drawn on CPU from ``generator`` (device independent, so resumes are exact), then moved."""
    return torch.randn(shape, generator=generator).to(device)


def randint(high: int, n: int, generator: torch.Generator, device, low: int = 0) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=generator).to(device)


TIMESTEP_SAMPLING = ("uniform", "cubic")


def sample_timesteps(high: int, n: int, generator: torch.Generator, device, schedule: str = "uniform") -> torch.Tensor:
    """(n,) int64 training timesteps in [0, high).

    ``uniform``: every timestep alike.  ``cubic``: t = (1 - u^3) * high for uniform u, so that four draws in five
    (0.5^(1/3)) fall in the noisier half (T2I-Adapter's non-uniform sampling for condition models: the layout that a
    control image fixes is decided at high noise, and a one-step generator lives at the highest timestep).
    """
    check_choice("timestep_sampling", schedule, TIMESTEP_SAMPLING)
    if schedule == "uniform":
        return randint(high, n, generator, device)
    u = torch.rand(n, generator=generator, dtype=torch.float64)  # cubic
    return ((1 - u**3) * high).long().clamp(0, high - 1).to(device)


def drop_prompts(embeds: torch.Tensor, uncond: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each prompt embedding by the empty prompt's with probability ``prob`` (trains CFG's unconditional)."""
    if prob <= 0:
        return embeds
    keep = (torch.rand(embeds.shape[0], generator=generator) >= prob).to(embeds.device).view(-1, 1, 1)
    return torch.where(keep, embeds, uncond.expand_as(embeds))


@torch.no_grad()
def decode_unet_samples(vae, latents: torch.Tensor) -> torch.Tensor:
    """UNet-space latents -> pixels in [0, 1] with any diffusers VAE (KL: divide by scaling_factor; tiny: 1.0)."""
    scale = getattr(vae.config, "scaling_factor", 1.0)
    dtype = next(vae.parameters()).dtype
    pixels = vae.decode((latents / scale).to(dtype)).sample
    return ((pixels.float() + 1) / 2).clamp(0, 1)


def alphas_cumprod(scheduler, device) -> torch.Tensor:
    return scheduler.alphas_cumprod.to(device)
