"""Stage 3 (paper Fig. 2c): distil a student ControlNet for the (frozen) student UNet from the teacher's ControlNet.

Teacher UNet + teacher ControlNet (frozen) and student UNet (frozen) + student ControlNet (trained) see the same noisy
latents, prompts and control image; loss = w_out * MSE(outputs) + w_feat * feature KD on the UNet's **up** stages
only (the ControlNet's residuals enter the UNet there) + optional w_denoise * MSE(student, eps).  Control images are
extracted from the data's pixels (``control_kind``).  ``timestep_sampling: cubic`` draws mostly noisy timesteps, where
the control decides the layout and where the one-step model of stage 5 runs.
Code: ``ControlNetKD``, the student of ``training.stages.kd.KDTrainer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdxs.student import stage_map
from training.config import TrainConfig, check_choice, parse_args
from training.control import extract_control
from training.models import freeze, recipe_from, student_controlnet, student_unet
from training.runner import Runner
from training.sampling import model_output
from training.stages.common import TIMESTEP_SAMPLING
from training.stages.kd import KDTrainer
from training.stages.onestep import Teachers


@dataclass
class DistillControlNetConfig(TrainConfig):
    teacher: str = ""
    teacher_controlnet: str = ""
    student: str = ""  # the (stage 1) student UNet folder; empty: derived from the teacher by ``recipe``
    recipe: Any = "sdxs-512-dreamshaper"
    student_controlnet: str = ""  # continue from; empty: mirrored from the student UNet (sdxs.controlnet)
    embedding_channels: Any = None  # ControlNet conditioning embedding; None: diffusers default (8x)
    control_kind: str = "canny"
    out_kd_weight: float = 1.0
    feat_kd_weight: float = 1.0
    denoise_weight: float = 0.0
    uncond_prob: float = 0.1
    timestep_sampling: str = "uniform"  # or "cubic": mostly noisy timesteps (training.stages.common.sample_timesteps)
    validation_steps: int = 25


class ControlNetKD:
    """Stage 3's student for ``KDTrainer``: the student UNet (``student``, or cut from the teacher by ``recipe``) is
    frozen in the weight dtype and its ControlNet (``student_controlnet``, or mirrored from it) trained in float32;
    feature KD compares the UNet's up stages only, where the ControlNet's residuals enter."""

    name, controlnet, feature_down = "controlnet", True, False

    def __init__(self, cfg: DistillControlNetConfig, teachers: Teachers, device, weight_dtype):
        recipe = recipe_from(cfg.recipe)
        self.unet = freeze(student_unet(teachers.unet, cfg.student, recipe)).to(device, weight_dtype)
        controlnet = student_controlnet(self.unet, cfg.student_controlnet, cfg.embedding_channels)
        self.trained = controlnet.to(device, torch.float32)
        self.stages = stage_map(recipe, len(self.unet.config.block_out_channels))
        self.timestep_sampling, self.control_kind, self.dtype = cfg.timestep_sampling, cfg.control_kind, weight_dtype

    def output(self, module, x_t, t, embeds, control) -> torch.Tensor:
        """The frozen student UNet's prediction (B, 4, h, w) float32 with the residuals of ``module`` (the trained
        ControlNet, wrapped or not) for ``control`` (B, 3, H, W) in [0, 1]; both networks see the latents and prompts
        in the UNet's dtype."""
        return model_output(self.unet, x_t.to(self.dtype), t, embeds.to(self.dtype), module, control)

    def extra_columns(self, bank) -> dict:
        """The control images (N, 3, H, W) float16 in [0, 1], extracted from the data's pixels (``control_kind``)."""
        return {"control": extract_control(bank.tensors["pixels"].float(), self.control_kind).half()}

    def sampler(self, module) -> tuple:
        """(UNet, ControlNet) for DDIM sampling with the trained ``module``."""
        return self.unet, module

    def validation_inputs(self, cfg: DistillControlNetConfig, bank, text, device) -> tuple:
        """(the data's first prompt embeddings (N, L, D), their controls (N, 3, H, W) in [0, 1], guidance 1)."""
        n = cfg.num_validation
        return bank.tensors["embeds"][:n].to(device).float(), bank.tensors["control"][:n].float().to(device), 1.0


def main(argv=None) -> Runner:
    cfg = parse_args(DistillControlNetConfig, argv, __doc__)
    check_choice("timestep_sampling", cfg.timestep_sampling, TIMESTEP_SAMPLING)
    return KDTrainer(cfg, Runner(cfg, "distill_controlnet"), ControlNetKD).train()


if __name__ == "__main__":
    main()
