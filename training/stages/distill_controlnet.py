"""Stage 3 (paper Fig. 2c): distil a student ControlNet for the (frozen) student UNet from the teacher's ControlNet.

Teacher UNet + teacher ControlNet (frozen) and student UNet (frozen) + student ControlNet (trained) see the same noisy
latents, prompts and control image; loss = w_out * MSE(outputs) + w_feat * feature KD on the UNet's **up** stages
only (the ControlNet's residuals enter the UNet there) + optional w_denoise * MSE(student, eps).  Control images are
extracted from the data's pixels (``control_kind``).  ``timestep_sampling: cubic`` draws mostly noisy timesteps, where
the control decides the layout and where the one-step model of stage 5 runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdxs.onestep import add_noise
from sdxs.student import stage_map
from training.config import TrainConfig, check_choice, parse_args
from training.control import extract_control
from training.data import load_bank
from training.hooks import FeatureRecorder, kd_pairs, unet_stage_paths
from training.losses import denoising_loss, feature_kd_loss, output_kd_loss
from training.models import (
    freeze,
    load_controlnet,
    load_part,
    load_text_encoder,
    recipe_from,
    student_controlnet,
    student_unet,
)
from training.runner import Runner
from training.sampling import ddim_sample, model_output
from training.stages.common import TIMESTEP_SAMPLING, decode_unet_samples, draw_timesteps, drop_prompts


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


def main(argv=None) -> Runner:
    cfg = parse_args(DistillControlNetConfig, argv, __doc__)
    check_choice("timestep_sampling", cfg.timestep_sampling, TIMESTEP_SAMPLING)
    run = Runner(cfg, "distill_controlnet")
    device, wd = run.device, run.weight_dtype

    # 1. models: frozen teacher pair, frozen student UNet, trained student ControlNet
    teacher = freeze(load_part(cfg.teacher, "unet")).to(device, wd)
    teacher_cn = freeze(load_controlnet(cfg.teacher_controlnet)).to(device, wd)
    recipe = recipe_from(cfg.recipe)
    student = freeze(student_unet(teacher, cfg.student, recipe)).to(device, wd)
    controlnet = student_controlnet(student, cfg.student_controlnet, cfg.embedding_channels).to(device, torch.float32)
    controlnet.train()
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
    scheduler = load_part(cfg.teacher, "scheduler")
    vae = freeze(load_part(cfg.teacher, "vae")).to(device)
    text = load_text_encoder(cfg.teacher, device)
    uncond = text([""])
    stages = stage_map(recipe, len(student.config.block_out_channels))
    pairs = kd_pairs(stages, down=False, up=True)
    t_rec = FeatureRecorder(teacher, unet_stage_paths(up=stages.up))
    s_rec = FeatureRecorder(student, unet_stage_paths(up=stages.up.values()))

    # 2. data (pixels kept: the control images are extracted from them)
    bank = load_bank(
        cfg.data,
        vae,
        text,
        run.accelerator,
        run.out / "cache",
        keep_pixels=True,
        teacher=(teacher, scheduler.config, uncond),
    )
    controls = extract_control(bank.tensors["pixels"].float(), cfg.control_kind).half()
    bank.tensors["control"] = controls

    # 3. optimiser
    optimizer = run.optimizer(controlnet.parameters())
    lr_scheduler = run.lr_scheduler(optimizer)
    cn_ddp, optimizer, lr_scheduler = run.prepare(controlnet, optimizer, lr_scheduler)
    run.add_ema("controlnet", cn_ddp)
    ac = scheduler.alphas_cumprod.to(device)
    T = scheduler.config.num_train_timesteps

    def step() -> dict:
        logs = {}
        for micro in range(cfg.grad_accum):
            with run.accelerator.accumulate(cn_ddp):
                draws = run.draws.start(run.state.step, micro=micro)
                batch = draws.sample(bank, device)
                embeds = drop_prompts(batch["embeds"], uncond, cfg.uncond_prob, draws)
                noise = draws.randn(batch["latents"].shape[1:], device)
                t = draw_timesteps(draws, T, device, cfg.timestep_sampling)
                x_t = add_noise(batch["latents"], noise, ac[t])
                with torch.no_grad():
                    target = model_output(teacher, x_t.to(wd), t, embeds.to(wd), teacher_cn, batch["control"].to(wd))
                t_feats = t_rec.pop()
                with run.accelerator.autocast():
                    pred = model_output(student, x_t.to(wd), t, embeds.to(wd), cn_ddp, batch["control"])
                s_feats = s_rec.pop()
                parts = {
                    "out_kd": output_kd_loss(pred, target),
                    "feat_kd": feature_kd_loss(s_feats, t_feats, pairs),
                    "denoise": denoising_loss(pred, noise),
                }
                loss = (
                    cfg.out_kd_weight * parts["out_kd"]
                    + cfg.feat_kd_weight * parts["feat_kd"]
                    + cfg.denoise_weight * parts["denoise"]
                )
                run.backward_step(loss, cn_ddp, optimizer, lr_scheduler)
                logs = {**{k: v.item() for k, v in parts.items()}, "loss": loss.item()}
        return logs

    def validate() -> torch.Tensor:
        n = cfg.num_validation
        gen = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn((n, *bank.tensors["latents"].shape[1:]), generator=gen).to(device)
        control = bank.tensors["control"][:n].float().to(device)
        cn = run.unwrap(cn_ddp).eval()
        latents = ddim_sample(
            student,
            scheduler.config,
            noise,
            bank.tensors["embeds"][:n].to(device).float(),
            uncond,
            cfg.validation_steps,
            1.0,
            cn,
            control,
        )
        cn.train()
        return torch.cat([control, decode_unet_samples(vae, latents)])  # top: control, bottom: samples

    run.run(step, validate, models={"controlnet": cn_ddp})
    return run


if __name__ == "__main__":
    main()
