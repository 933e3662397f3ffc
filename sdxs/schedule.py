"""What one sampling step means for the scheduler a model folder ships, reduced to numbers.

Every supported diffusers scheduler, run for a single step, feeds the UNet ``x_t`` (variance-preserving scale) at
one timestep and returns ``c_skip * x_t + c_out * x0`` mixed with ``final_alpha`` (DDIM without alpha-to-one stops
at ``alphas_cumprod[0]``, not at x0).  ``OneStepSchedule`` holds exactly those numbers so the pipeline can run any
mix of timesteps in one batch and still equal diffusers' own pipelines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sdxs.onestep import predict_eps, predict_x0, timestep_for_strength

log = logging.getLogger(__name__)

_LANDS_ON_X0 = {"DDPMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LCMScheduler",
                "TCDScheduler", "DDIMScheduler"}


@dataclass(frozen=True)
class OneStepSchedule:
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,) float64
    prediction_type: str
    text_timestep: int  # where a text-to-image step starts (999 for the released models)
    final_alpha: float = 1.0  # DDIM without set_alpha_to_one lands at alphas_cumprod[0] instead of x0
    lcm_timestep_scaling: float | None = None  # LCM/TCD boundary condition (c_skip, c_out)

    @classmethod
    def from_scheduler(cls, scheduler) -> OneStepSchedule:
        name = type(scheduler).__name__
        if name not in _LANDS_ON_X0:
            log.warning("scheduler %s is not one of %s; one step is taken to land on x0", name, sorted(_LANDS_ON_X0))
        scheduler.set_timesteps(1)
        final = 1.0
        if name == "DDIMScheduler":
            final = float(scheduler.final_alpha_cumprod)
        return cls(
            alphas_cumprod=scheduler.alphas_cumprod.double(),
            prediction_type=scheduler.config.prediction_type,
            text_timestep=int(round(float(scheduler.timesteps[0]))),
            final_alpha=final,
            lcm_timestep_scaling=scheduler.config.get("timestep_scaling") if name in ("LCMScheduler", "TCDScheduler")
            else None,
        )

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def timestep(self, strength: float | None) -> int:
        """Text mode (``None``) starts at ``text_timestep``; image mode at the strength's timestep."""
        return self.text_timestep if strength is None else timestep_for_strength(strength, self.num_train_timesteps)

    def alphas(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[timesteps.cpu().long()]

    def step(self, model_output: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor,
             alphas: torch.Tensor | None = None) -> torch.Tensor:
        """The one-step result for a batch whose samples sit at ``timesteps`` (B,).  x0 math runs in float64.
        ``alphas``: ``self.alphas(timesteps)`` already on ``x_t``'s device (no host round trip on CUDA)."""
        a = self.alphas(timesteps) if alphas is None else alphas
        x0 = predict_x0(model_output, x_t, a, self.prediction_type)
        if self.lcm_timestep_scaling is not None:
            scaled = timesteps.double().cpu() * self.lcm_timestep_scaling
            c_skip = (0.25 / (scaled**2 + 0.25)).to(x_t.device).view(-1, 1, 1, 1)
            c_out = (scaled / (scaled**2 + 0.25).sqrt()).to(x_t.device).view(-1, 1, 1, 1)
            x0 = (c_out * x0.double() + c_skip * x_t.double()).to(x_t.dtype)
        if self.final_alpha != 1.0:
            eps = predict_eps(model_output, x_t, a, self.prediction_type)
            x0 = (self.final_alpha**0.5 * x0.double() + (1 - self.final_alpha) ** 0.5 * eps.double()).to(x_t.dtype)
        return x0
