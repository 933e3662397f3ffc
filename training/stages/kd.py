"""Stages 1 and 3 (paper section 3.1, Fig. 2b, 2c; BK-SDM): knowledge distillation from a frozen teacher.

The teacher (with its ControlNet in stage 3) and the student see the same noisy latents x_t = sqrt(a_t) x0 +
sqrt(1 - a_t) eps (x0: the data's cached latents; t per row, ``uniform`` or, in stage 3, optionally ``cubic``), the
same prompts (each replaced by the empty prompt with probability ``uncond_prob``) and, in stage 3, the same control
image; loss = ``out_kd_weight`` * output KD + ``feat_kd_weight`` * feature KD + ``denoise_weight`` * the denoising loss
(``kd_loss``; the paper excludes the last, BK-SDM adds it).

Code: ``KDTrainer`` holds the frozen ``Teachers`` (``training.stages.onestep``) and a student: stage 1's ``UNetKD``
(``training.stages.distill_unet``) or stage 3's ``ControlNetKD`` (``training.stages.distill_controlnet``), which say
what is trained, which stages feature KD compares and how the student predicts.  A step is ``kd_step``: one optimiser
step over ``grad_accum`` micro-batches (``Runner.accumulated_step``) whose draws are rows of the step's global batch
(``training.draws``).
"""

from __future__ import annotations

from typing import Any

import torch

from sdxs.onestep import add_noise
from sdxs.student import StageMap
from training.data import load_bank
from training.draws import StepDraws
from training.hooks import FeatureRecorder, kd_pairs, unet_stage_paths
from training.losses import denoising_loss, feature_kd_loss, output_kd_loss
from training.runner import Runner
from training.sampling import ddim_sample, model_output
from training.stages.common import decode_unet_samples, draw_timesteps, drop_prompts
from training.stages.onestep import Teachers


def kd_loss(parts: dict[str, torch.Tensor], cfg: Any) -> torch.Tensor:
    """The stage's loss from its terms (scalars): ``out_kd_weight`` * output KD + ``feat_kd_weight`` * feature KD
    (Fig. 2b) + ``denoise_weight`` * the denoising loss."""
    return (
        cfg.out_kd_weight * parts["out_kd"]
        + cfg.feat_kd_weight * parts["feat_kd"]
        + cfg.denoise_weight * parts["denoise"]
    )


def stage_features(stages: StageMap, down: bool) -> tuple[dict[str, str], dict[str, str], list[tuple[str, str]]]:
    """What feature KD records: (teacher paths, student paths, (teacher name, student name) pairs) for the mapped up
    stages and, with ``down``, the mapped down stages (``training.hooks``)."""
    teacher = unet_stage_paths(stages.down if down else (), stages.up)
    student = unet_stage_paths(stages.down.values() if down else (), stages.up.values())
    return teacher, student, kd_pairs(stages, down=down, up=True)


class KDTrainer:
    """Stages 1 and 3: output KD + feature KD (+ the denoising loss) of a student against the frozen teacher.

    ``kind`` builds the student from the config and the teachers and gives: ``name`` (the trained model's folder
    under ``final/``), ``controlnet`` (whether the teachers include the teacher ControlNet), ``unet`` (the student UNet,
    whose stages feature KD records), ``trained`` (what the optimiser moves), ``stages`` (the teacher-to-student
    ``StageMap``), ``feature_down`` (whether feature KD compares the down stages too), ``timestep_sampling``,
    ``output`` (the student's prediction through a given trained module), ``extra_columns`` (columns the bank gains),
    ``sampler`` and ``validation_inputs`` (for ``validate``)."""

    def __init__(self, cfg: Any, run: Runner, kind: type):
        self.cfg, self.run, self.device = cfg, run, run.device
        # 1. models: the frozen teachers, the student, feature recorders on the unwrapped UNets
        self.teachers = teachers = Teachers.load(cfg, run.device, run.weight_dtype, controlnet_mode=kind.controlnet)
        self.student = student = kind(cfg, teachers, run.device, run.weight_dtype)
        trained = student.trained.train()
        if cfg.gradient_checkpointing:
            trained.enable_gradient_checkpointing()
        teacher_paths, student_paths, self.pairs = stage_features(student.stages, student.feature_down)
        self.t_rec = FeatureRecorder(teachers.unet, teacher_paths)
        self.s_rec = FeatureRecorder(student.unet, student_paths)
        # 2. data: cached latents, prompt embeddings and pixels (+ the student's extra columns, stage 3's controls)
        self.bank = load_bank(
            cfg.data, teachers.vae, teachers.text, run.accelerator, run.out / "cache",
            teacher=(teachers.unet, teachers.scheduler.config, teachers.uncond),
        )  # fmt: skip
        self.bank.tensors.update(student.extra_columns(self.bank))
        # 3. optimiser, accelerate, EMA
        opt = run.optimizer(trained.parameters())
        self.trained, self.opt, self.sched = run.prepare(trained, opt, run.lr_scheduler(opt))
        run.add_ema(student.name, self.trained)
        self.ac = teachers.scheduler.alphas_cumprod.to(self.device)
        self.T = teachers.scheduler.config.num_train_timesteps

    # ---- pieces ----------------------------------------------------------------------------------------

    def inputs(self, draws: StepDraws) -> dict:
        """``draws``' rows of the bank as the inputs teacher and student share: noisy latents ``x_t`` (B, 4, h, w),
        timesteps ``t`` (B,), prompt embeddings ``embeds`` (B, L, D) (some dropped to the empty prompt), the ``noise``
        eps and, in stage 3, ``control`` (B, 3, H, W) in [0, 1] (else None)."""
        batch = draws.sample(self.bank, self.device)
        embeds = drop_prompts(batch["embeds"], self.teachers.uncond, self.cfg.uncond_prob, draws)
        noise = draws.randn(batch["latents"].shape[1:], self.device)
        t = draw_timesteps(draws, self.T, self.device, self.student.timestep_sampling)
        x_t = add_noise(batch["latents"], noise, self.ac[t])
        return {"x_t": x_t, "t": t, "embeds": embeds, "noise": noise, "control": batch.get("control")}

    @torch.no_grad()
    def teacher_output(self, inputs: dict) -> torch.Tensor:
        """The frozen teacher's prediction (B, 4, h, w) float32 at ``inputs`` (stage 3: with its ControlNet's
        residuals); its stage features land in ``t_rec``."""
        t = self.teachers
        return model_output(t.unet, inputs["x_t"], inputs["t"], inputs["embeds"], t.controlnet, inputs["control"])

    def kd_losses(self, inputs: dict) -> dict[str, torch.Tensor]:
        """The loss terms (float32 scalars) at ``inputs``, with grad through the trained module: output KD and feature
        KD against the frozen teacher (Fig. 2b, 2c), the denoising loss against the noise."""
        target = self.teacher_output(inputs)
        t_feats = self.t_rec.pop()
        with self.run.accelerator.autocast():
            pred = self.student.output(self.trained, inputs["x_t"], inputs["t"], inputs["embeds"], inputs["control"])
        s_feats = self.s_rec.pop()
        return {
            "out_kd": output_kd_loss(pred, target),
            "feat_kd": feature_kd_loss(s_feats, t_feats, self.pairs),
            "denoise": denoising_loss(pred, inputs["noise"]),
        }

    # ---- the update and the loop -----------------------------------------------------------------------

    def kd_step(self, phase: int = 0) -> dict:
        """One optimiser step of the trained module on ``kd_loss``; returns the last micro-batch's terms and loss
        (the logs these stages have always written; the other stages log the micro-batches' mean)."""

        def micro_loss(draws: StepDraws, micro: int):
            parts = self.kd_losses(self.inputs(draws))
            loss = kd_loss(parts, self.cfg)
            return loss, {**{k: v.item() for k, v in parts.items()}, "loss": loss.item()}

        return self.run.accumulated_step(self.trained, self.opt, self.sched, phase, micro_loss)[-1]

    @torch.no_grad()
    def validate(self) -> torch.Tensor:
        """The in-memory student's DDIM samples (``validation_steps``) from the seed's noise, (N, 3, H, W) in [0, 1]
        (stage 3: the controls (N, 3, H, W) above them)."""
        cfg, teachers = self.cfg, self.teachers
        embeds, control, guidance = self.student.validation_inputs(cfg, self.bank, teachers.text, self.device)
        gen = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn((len(embeds), *self.bank.tensors["latents"].shape[1:]), generator=gen).to(self.device)
        module = self.run.unwrap(self.trained).eval()
        unet, controlnet = self.student.sampler(module)
        latents = ddim_sample(unet, teachers.scheduler.config, noise, embeds, teachers.uncond, cfg.validation_steps,
                              guidance, controlnet, control)  # fmt: skip
        module.train()
        images = decode_unet_samples(teachers.vae, latents)
        return images if control is None else torch.cat([control, images])  # top: controls, bottom: samples

    def train(self) -> Runner:
        self.run.run(self.kd_step, self.validate, models={self.student.name: self.trained})
        return self.run
