"""Stage 1 (paper Fig. 2b; BK-SDM): distil a block-removed student UNet from its teacher.

loss = w_out * MSE(student, teacher) + w_feat * mean_stage MSE(student stage, teacher stage) [+ w_denoise *
MSE(student, eps)], the features taken on every kept down and up stage through the teacher-to-student stage map
(``sdxs.student.stage_map``).  The student is cut from the teacher with copied weights (``sdxs.student``).
The paper excludes the denoising loss (section 3.1), so ``denoise_weight`` is 0 by default; BK-SDM's recipe adds it
(``denoise_weight: 1``).  The same architecture without KD (the control) is ``out_kd_weight = feat_kd_weight = 0``
with ``denoise_weight = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sdxs.onestep import add_noise
from sdxs.student import stage_map
from training.config import TrainConfig, parse_args
from training.data import load_bank
from training.hooks import FeatureRecorder, kd_pairs, unet_stage_paths
from training.losses import denoising_loss, feature_kd_loss, output_kd_loss
from training.models import freeze, load_part, load_text_encoder, recipe_from, student_unet
from training.runner import Runner
from training.sampling import ddim_sample
from training.stages.common import decode_unet_samples, drop_prompts


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


def main(argv=None) -> Runner:
    cfg = parse_args(DistillUNetConfig, argv, __doc__)
    if cfg.denoise_weight == cfg.out_kd_weight == cfg.feat_kd_weight == 0:
        raise ValueError(
            "every loss weight is 0 (denoise_weight, out_kd_weight, feat_kd_weight): nothing to train; "
            "the no-KD control needs denoise_weight=1"
        )
    run = Runner(cfg, "distill_unet")
    device = run.device

    # 1. models: frozen teacher, student cut from it (copied weights), hooks on the unwrapped modules
    teacher = freeze(load_part(cfg.teacher, "unet")).to(device, run.weight_dtype)
    recipe = recipe_from(cfg.recipe)
    student = student_unet(teacher, cfg.student, recipe).to(device).train()
    if cfg.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    scheduler = load_part(cfg.teacher, "scheduler")
    vae = freeze(load_part(cfg.teacher, "vae")).to(device)
    text = load_text_encoder(cfg.teacher, device)
    uncond = text([""])
    stages = stage_map(recipe, len(student.config.block_out_channels))
    pairs = kd_pairs(stages)
    t_rec = FeatureRecorder(teacher, unet_stage_paths(stages.down, stages.up))
    s_rec = FeatureRecorder(student, unet_stage_paths(stages.down.values(), stages.up.values()))

    # 2. data: cached latents + prompt embeddings
    bank = load_bank(
        cfg.data, vae, text, run.accelerator, run.out / "cache", teacher=(teacher, scheduler.config, uncond)
    )

    # 3. optimiser, accelerate
    optimizer = run.optimizer(student.parameters())
    lr_scheduler = run.lr_scheduler(optimizer)
    student_ddp, optimizer, lr_scheduler = run.prepare(student, optimizer, lr_scheduler)
    run.add_ema("unet", student_ddp)
    ac = scheduler.alphas_cumprod.to(device)
    T = scheduler.config.num_train_timesteps

    def step() -> dict:
        logs = {}
        for micro in range(cfg.grad_accum):
            with run.accelerator.accumulate(student_ddp):
                draws = run.draws.start(run.state.step, micro=micro)
                batch = draws.sample(bank, device)
                embeds = drop_prompts(batch["embeds"], uncond, cfg.uncond_prob, draws)
                noise = draws.randn(batch["latents"].shape[1:], device)
                t = draws.randint(T, device)
                x_t = add_noise(batch["latents"], noise, ac[t])
                with torch.no_grad():
                    target = teacher(x_t.to(run.weight_dtype), t, embeds.to(run.weight_dtype)).sample
                t_feats = t_rec.pop()
                with run.accelerator.autocast():
                    pred = student_ddp(x_t, t, embeds).sample
                s_feats = s_rec.pop()
                parts = {
                    "denoise": denoising_loss(pred, noise),
                    "out_kd": output_kd_loss(pred, target),
                    "feat_kd": feature_kd_loss(s_feats, t_feats, pairs),
                }
                loss = (
                    cfg.denoise_weight * parts["denoise"]
                    + cfg.out_kd_weight * parts["out_kd"]
                    + cfg.feat_kd_weight * parts["feat_kd"]
                )
                run.backward_step(loss, student_ddp, optimizer, lr_scheduler)
                logs = {**{k: v.item() for k, v in parts.items()}, "loss": loss.item()}
        return logs

    def validate() -> torch.Tensor:
        gen = torch.Generator().manual_seed(cfg.seed)
        prompts = list(cfg.validation_prompts) or bank.extras["captions"][: cfg.num_validation]
        noise = torch.randn((len(prompts), *bank.tensors["latents"].shape[1:]), generator=gen).to(device)
        latents = ddim_sample(
            run.unwrap(student_ddp).eval(),
            scheduler.config,
            noise,
            text(prompts),
            uncond,
            cfg.validation_steps,
            cfg.validation_guidance,
        )
        run.unwrap(student_ddp).train()
        return decode_unet_samples(vae, latents)

    run.run(step, validate, models={"unet": student_ddp})
    return run


if __name__ == "__main__":
    main()
