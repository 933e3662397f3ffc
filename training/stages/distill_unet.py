"""Stage 1 (paper Fig. 2b; BK-SDM): distil a block-removed student UNet from its teacher.

loss = w_out * MSE(student, teacher) + w_feat * mean_stage MSE(student stage, teacher stage) [+ w_denoise *
MSE(student, eps)], the features taken on every kept down and up stage through the teacher-to-student stage map
(``sdxs.student.stage_map``).  The student is cut from the teacher with copied weights (``sdxs.student``).
The paper excludes the denoising loss (section 3.1), so ``denoise_weight`` is 0 by default; BK-SDM's recipe adds it
(``denoise_weight: 1``).  The same architecture without KD (the control) is ``out_kd_weight = feat_kd_weight = 0``
with ``denoise_weight = 1``.  Code: ``UNetKD``, the student of ``training.stages.kd.KDTrainer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sdxs.student import stage_map
from training.config import TrainConfig, parse_args
from training.models import recipe_from, student_unet
from training.runner import Runner
from training.sampling import model_output
from training.stages.kd import KDTrainer
from training.stages.onestep import Teachers


@dataclass
class DistillUNetConfig(TrainConfig):
    teacher: str = ""  # StableDiffusionPipeline folder
    student: str = ""  # a UNet folder to continue from; empty: derive from the teacher
    recipe: Any = "sdxs-512-dreamshaper"  # variant name or dict of RemovalRecipe fields
    denoise_weight: float = 0.0  # the paper excludes it (section 3.1); BK-SDM uses 1
    out_kd_weight: float = 1.0
    feat_kd_weight: float = 1.0
    uncond_prob: float = 0.1
    validation_steps: int = 25
    validation_guidance: float = 1.0
    validation_prompts: Sequence[str] = field(default_factory=tuple)


def check_config(cfg: DistillUNetConfig) -> None:
    """Refuse a config with nothing to train before loading anything."""
    if cfg.denoise_weight == cfg.out_kd_weight == cfg.feat_kd_weight == 0:
        raise ValueError(
            "every loss weight is 0 (denoise_weight, out_kd_weight, feat_kd_weight): nothing to train; "
            "the no-KD control needs denoise_weight=1"
        )


class UNetKD:
    """Stage 1's student for ``KDTrainer``: the block-removed UNet (``student``, or cut from the teacher by
    ``recipe`` with copied weights) is trained; feature KD compares every kept down and up stage."""

    name, controlnet, feature_down, timestep_sampling = "unet", False, True, "uniform"

    def __init__(self, cfg: DistillUNetConfig, teachers: Teachers, device, weight_dtype):
        recipe = recipe_from(cfg.recipe)
        self.unet = self.trained = student_unet(teachers.unet, cfg.student, recipe).to(device)  # trained in float32
        self.stages = stage_map(recipe, len(self.unet.config.block_out_channels))

    def output(self, module, x_t, t, embeds, control=None) -> torch.Tensor:
        """The student's prediction (B, 4, h, w) float32, with grad through ``module`` (the trained UNet, wrapped or
        not)."""
        return model_output(module, x_t, t, embeds)

    def extra_columns(self, bank) -> dict:
        return {}

    def sampler(self, module) -> tuple:
        """(UNet, ControlNet) for DDIM sampling with the trained ``module``."""
        return module, None

    def validation_inputs(self, cfg: DistillUNetConfig, bank, text, device) -> tuple:
        """(prompt embeddings (N, L, D), no control, guidance): ``validation_prompts`` or the data's first captions."""
        prompts = list(cfg.validation_prompts) or bank.extras["captions"][: cfg.num_validation]
        return text(prompts), None, cfg.validation_guidance


def main(argv=None) -> Runner:
    cfg = parse_args(DistillUNetConfig, argv, __doc__)
    check_config(cfg)
    return KDTrainer(cfg, Runner(cfg, "distill_unet"), UNetKD).train()


if __name__ == "__main__":
    main()
