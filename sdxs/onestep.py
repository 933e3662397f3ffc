"""The math of one-step sampling as pure functions (no models, no schedulers' state).

Latents are in the UNet's space (already multiplied by the VAE's scaling factor).  ``alphas_cumprod`` is the
training schedule's cumulative product, indexed by integer timestep.  Every function broadcasts over a batch whose
samples may sit at different timesteps.
"""

from __future__ import annotations

import torch


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, torch.float64).reshape(-1, *([1] * (like.ndim - 1)))


def predict_x0(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alphas_cumprod_t: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """x0 from the model's prediction at x_t, computed in float64 (at t=999 sqrt(alpha) is ~0.068 and fp16 loses it).

    ``alphas_cumprod_t``: shape (B,), the schedule at each sample's timestep.  Returns ``x_t``'s dtype.
    """
    a = _per_sample(alphas_cumprod_t, x_t)
    x, out = x_t.double(), model_output.double()
    if prediction_type == "epsilon":
        x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a.sqrt() * x - (1 - a).sqrt() * out
    elif prediction_type == "sample":
        x0 = out
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return x0.to(x_t.dtype)


def predict_eps(model_output, x_t, alphas_cumprod_t, prediction_type: str = "epsilon") -> torch.Tensor:
    """The noise the model implies (needed to land on a non-zero final timestep, as DDIM without alpha-to-one)."""
    if prediction_type == "epsilon":
        return model_output
    a = _per_sample(alphas_cumprod_t, x_t)
    x0 = predict_x0(model_output, x_t, alphas_cumprod_t, prediction_type).double()
    return ((x_t.double() - a.sqrt() * x0) / (1 - a).sqrt()).to(x_t.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod_t: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(x_t | x0) = sqrt(a) x0 + sqrt(1 - a) noise, per sample (as diffusers' ``add_noise``)."""
    a = alphas_cumprod_t.to(x0.device, x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def timestep_for_strength(strength: float, num_train_timesteps: int = 1000) -> int:
    """The single timestep an image-to-image request runs at: strength 1 -> 999, 0.5 -> 499, 0.25 -> 249.

    Equals what diffusers' img2img runs with a ``trailing`` schedule of ``round(1 / strength)`` steps.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return max(0, min(num_train_timesteps - 1, round(num_train_timesteps * strength) - 1))
