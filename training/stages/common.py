"""Pieces several stages share: timestep schedules, prompt dropping, decoding for validation."""

from __future__ import annotations

import torch

from training.config import check_choice
from training.draws import StepDraws

TIMESTEP_SAMPLING = ("uniform", "cubic")


def sample_timesteps(high: int, n: int, generator: torch.Generator, device, schedule: str = "uniform") -> torch.Tensor:
    """(n,) int64 training timesteps in [0, high) from ``generator`` (the miniature's givens; the stages draw per row
    with ``draw_timesteps``).

    ``uniform``: every timestep alike.  ``cubic``: t = (1 - u^3) * high for uniform u, so that four draws in five
    (0.5^(1/3)) fall in the noisier half (T2I-Adapter's non-uniform sampling for condition models: the layout that a
    control image fixes is decided at high noise, and a one-step generator lives at the highest timestep).
    """
    check_choice("timestep_sampling", schedule, TIMESTEP_SAMPLING)
    if schedule == "uniform":
        return torch.randint(high, (n,), generator=generator).to(device)
    return _cubic(torch.rand(n, generator=generator, dtype=torch.float64), high).to(device)


def draw_timesteps(draws: StepDraws, high: int, device, schedule: str = "uniform") -> torch.Tensor:
    """(B,) int64 timesteps in [0, high), one per row of ``draws`` (schedules as in ``sample_timesteps``)."""
    check_choice("timestep_sampling", schedule, TIMESTEP_SAMPLING)
    if schedule == "uniform":
        return draws.randint(high, device)
    return _cubic(draws.rand(dtype=torch.float64), high).to(device)


def _cubic(u: torch.Tensor, high: int) -> torch.Tensor:
    return ((1 - u**3) * high).long().clamp(0, high - 1)


def drop_prompts(embeds: torch.Tensor, uncond: torch.Tensor, prob: float, draws: StepDraws) -> torch.Tensor:
    """Replace each prompt embedding (B, L, D) by the empty prompt's with probability ``prob`` (trains CFG's
    unconditional), one draw per row."""
    if prob <= 0:
        return embeds
    keep = (draws.rand() >= prob).to(embeds.device).view(-1, 1, 1)
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


def mean_logs(logs: list[dict]) -> dict:
    """The micro-batches' logged floats, averaged key by key (a key missing from some counts where present)."""
    keys = dict.fromkeys(k for row in logs for k in row)
    return {k: sum(row[k] for row in logs if k in row) / sum(k in row for row in logs) for k in keys}
