"""Stage 4 (paper Fig. 3): one-step training of the student UNet; stage 5 reuses it for the student ControlNet.

Phase (a), feature-matching warm-up (``warmup_steps``): the student maps noise z to x0 in one step at
``student_timestep``; the teacher maps the same z with its multi-step ODE sampler (cached pairs); loss =
``fm_weight`` * (feature distance (``feature_distance`` over ``feature_net``'s layers; SSIM as in the paper) +
``latent_weight`` * the latents' MSE, which keeps their scale at the teacher's for a tiny decoder).  In
stage 5 the pairs also hold a control image, and by default the target is the image that control was extracted from
(``control_target``, ``make_pairs``).  A pairs file records the settings it was made with and is reused only by a
run with the same settings.

Phase (b), segmented Diff-Instruct (the remaining steps): the student's sample is re-noised at t ~ U[t_min, t_max];
an online "fake" score model, initialised from the frozen offline ("real") teacher and trained with the denoising
loss on the student's samples (``fake_updates`` per student update: two time scales, two optimisers), and the
teacher give x0 predictions (float64); their difference is the student's gradient (``losses.score_distillation``).
Score-distillation samples and the fake model's samples come from fresh noise (``fresh_noise``; the pairs' fixed
noises stay with the feature-matching rows, whose targets need them).  Samples whose t falls in the feature-matching
segment (``losses.score_distillation_mask``: t >= alpha*T with the
paper's ``score_on=low``) take the feature-matching loss instead, weighted by a weight decaying from ``fm_weight`` to
``fm_weight_end``; alpha itself may be lowered during the phase (``segment_alpha`` -> ``segment_alpha_end``), as the
paper does.  Options: a GAN head on the fake model's bottleneck (DMD2, ``gan_weight``), switching the
feature-matching teacher to a frozen copy of the one-step student at ``switch_teacher_at``.

Code: ``OneStepTrainer`` holds the frozen ``Teachers``, a ``UNetStudent`` (stage 4) or ``ControlNetStudent`` (stage 5)
and the fake score; a step is ``warmup_step`` in phase (a), else ``fake_updates`` x ``fake_step`` then ``score_step``.
Each is one optimiser step over ``grad_accum`` micro-batches (``Runner.accumulated_step``) whose draws are rows of the
step's global batch (``training.draws``).  The pairs live in ``training.stages.onestep_pairs``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sdxs.controlnet import control_residuals
from sdxs.onestep import add_noise, predict_x0
from training.config import TrainConfig, check_choice, parse_args
from training.control import extract_control
from training.data import Bank, load_bank
from training.diagnostics import gradient_logs
from training.draws import StepDraws
from training.features import feature_network
from training.hooks import FeatureRecorder
from training.losses import (
    FEATURE_DISTANCES,
    FeatureGANHead,
    decayed_weight,
    denoising_loss,
    latent_moments_per_sample,
    latent_mse_per_sample,
    score_distillation_mask,
    score_distillation_per_sample,
    segmented_loss,
    softplus_discriminator_loss,
    softplus_generator_loss,
)
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
from training.sampling import guided_output, onestep_sample
from training.stages.common import decode_unet_samples, mean_logs
from training.stages.onestep_pairs import load_or_solve_pairs

CONTROL_SOURCES = ("teacher", "data")  # where stage 5's control images come from (``make_pairs``)
LATENT_DISTANCES = {"mse": latent_mse_per_sample, "moments": latent_moments_per_sample}
CONTROL_TARGETS = ("ode", "source")  # what stage 5's feature matching pulls towards (``make_pairs``)


@dataclass
class OneStepConfig(TrainConfig):
    teacher: str = ""
    student: str = ""  # stage-1 student UNet folder; empty: derived from the teacher by ``recipe``
    recipe: Any = "sdxs-512-dreamshaper"
    student_timestep: int = 999
    # teacher ODE pairs (z, prompt) -> x0 for feature matching
    num_pairs: int = 1024
    ode_steps: int = 25
    guidance: float = 1.0  # teacher CFG for the ODE targets
    pairs_path: str = ""  # default: <output_dir>/cache/pairs.pt (share it between runs)
    # the UNet that solves the ODE for the pairs (empty: ``teacher``); the paper uses a separate, straightened teacher
    # for them while ``teacher`` gives the real score.  It shares ``teacher``'s VAE and text encoder (and, for stage 5,
    # its ControlNet must fit it)
    pairs_teacher: str = ""
    # (a) feature matching
    warmup_steps: int = 0
    # latent | vae_decoder | vae_encoder | unet_encoder | dinov2, joined by +.  The paper names VGG, DINOv2 or the
    # diffusion UNet's encoder; the default is the last (offline, nothing beyond the teacher).  The miniature's
    # vae_encoder is a named deviation (training/README.md)
    feature_net: str = "unet_encoder"
    feature_model: str = "facebook/dinov2-small"  # dinov2: a Hub id or a local folder
    feature_distance: str = "ssim"  # ssim | mse | lpips
    feature_weights: Any = None
    # + latent_weight * MSE(student latents, target latents): the teacher decoder saturates, so decoded features alone
    # let the one-step latents drift to 2-3x the teacher's scale, which a tiny decoder renders blown out (0: off)
    latent_weight: float = 0.0
    latent_distance: str = "mse"  # mse: pointwise | moments: each channel's mean and std (the scale, not the layout)
    fm_weight: float = 1.0
    fm_weight_end: float = 0.0
    fm_decay: str = "linear"  # linear | cosine | constant
    switch_teacher_at: int = 0  # 0: never
    # (b) segmented Diff-Instruct
    segment_alpha: float = 0.5  # the boundary alpha*T between the segments (at the start of phase (b))
    # the paper starts with alpha near 1 and lowers it (with lambda_FM, ``fm_weight`` -> ``fm_weight_end``, which is
    # independent of alpha): alpha goes from ``segment_alpha`` to ``segment_alpha_end`` by ``alpha_decay``; None: fixed
    segment_alpha_end: float | None = None
    alpha_decay: str = "linear"  # linear | cosine | constant
    score_on: str = "low"  # low (paper) | high | all (plain Diff-Instruct)
    t_min: int = 20
    t_max: int = 980
    real_guidance: float = 1.0
    normalise_score: bool = True
    diff_instruct_lr: float = 0.0  # the student's learning rate in phase (b); 0: keep ``lr``
    fake_lr: float = 1e-4
    fake_updates: int = 5
    fresh_noise: bool = True  # score distillation and the fake model see fresh noise; False: the pairs' noise
    # the share of those rows that get fresh noise (the paper re-initialises a portion of the noise); 1: all of them
    fresh_noise_fraction: float = 1.0
    gan_weight: float = 0.0
    gan_lr: float = 1e-4
    # stage 5 (one-step ControlNet) only
    teacher_controlnet: str = ""
    student_controlnet: str = ""
    embedding_channels: Any = None
    control_kind: str = "canny"
    control_source: str = "teacher"  # teacher: from an independent teacher sample (paper) | data: the prompt's image
    control_target: str = "source"  # source: the image the control came from | ode: teacher + ControlNet, pair's noise
    validation_guidance: float = 1.0
    # diagnostics: on logged steps, each loss term's own gradient norm on the trained weights (``grad_norm/<term>``)
    # and the cosine between the score-distillation and feature-matching gradients; their time is left out of the
    # step timings (which set the equal-compute control's length)
    log_grad_norms: bool = False


class FakeScore(nn.Module):
    """The online score model (and DMD2's optional GAN head on its bottleneck features), one ``forward`` for DDP."""

    def __init__(self, unet, gan_head: bool):
        super().__init__()
        self.unet = unet
        path = "mid_block" if unet.mid_block is not None else f"down_blocks.{len(unet.down_blocks) - 1}"
        self.recorder = FeatureRecorder(unet, {"bottleneck": path})
        channels = unet.config.block_out_channels[-1]
        self.head = FeatureGANHead(channels) if gan_head else None

    def forward(self, x_t, t, embeds, residuals: dict | None = None, logits: bool = False):
        """(prediction like the teacher's, GAN logits (B,) or None)."""
        pred = self.unet(x_t, t, encoder_hidden_states=embeds, **(residuals or {})).sample
        feats = self.recorder.pop()["bottleneck"]
        return pred, (self.head(feats) if logits and self.head is not None else None)


def check_config(cfg: OneStepConfig) -> None:
    """Refuse choices and ranges the trainer would otherwise meet only after loading every model."""
    check_choice("control_source", cfg.control_source, CONTROL_SOURCES)
    check_choice("control_target", cfg.control_target, CONTROL_TARGETS)
    check_choice("latent_distance", cfg.latent_distance, tuple(LATENT_DISTANCES))
    check_choice("alpha_decay", cfg.alpha_decay, ("linear", "cosine", "constant"))
    for name in ("segment_alpha", "segment_alpha_end", "fresh_noise_fraction"):
        value = getattr(cfg, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} {value!r}: expected a number in [0, 1]")


def fresh_noise_rows(draws: StepDraws, rows: torch.Tensor | None, fraction: float, device) -> torch.Tensor:
    """Which rows of ``draws``' micro-batch get fresh noise, (B,) bool: each of ``rows`` (all when None) with
    probability ``fraction``.  At fraction 1 nothing is drawn."""
    n = draws.batch_size
    chosen = torch.ones(n, dtype=torch.bool, device=device) if fraction >= 1 else draws.rand(device) < fraction
    return chosen if rows is None else chosen & rows.to(device)


def segment_alpha_at(cfg: OneStepConfig, progress: float) -> float:
    """The segment boundary alpha at ``progress`` in [0, 1] of phase (b): ``segment_alpha`` lowered to
    ``segment_alpha_end`` by ``alpha_decay`` (fixed when ``segment_alpha_end`` is None)."""
    if cfg.segment_alpha_end is None:
        return cfg.segment_alpha
    return decayed_weight(cfg.segment_alpha, cfg.segment_alpha_end, progress, cfg.alpha_decay)


@dataclass
class Teachers:
    """The frozen models both one-step stages share: the teacher UNet (the "real" score and the pairs' solver unless
    ``pairs_teacher``), its scheduler, VAE and text encoder, and in stage 5 the teacher ControlNet."""

    unet: nn.Module
    scheduler: Any
    vae: nn.Module
    text: Any
    uncond: torch.Tensor  # (1, L, D) the empty prompt's embeddings
    controlnet: nn.Module | None

    @classmethod
    def load(cls, cfg: OneStepConfig, device, weight_dtype, controlnet_mode: bool) -> Teachers:
        text = load_text_encoder(cfg.teacher, device)
        return cls(
            unet=freeze(load_part(cfg.teacher, "unet")).to(device, weight_dtype),
            scheduler=load_part(cfg.teacher, "scheduler"),
            vae=freeze(load_part(cfg.teacher, "vae")).to(device),
            text=text,
            uncond=text([""]),
            controlnet=freeze(load_controlnet(cfg.teacher_controlnet)).to(device, weight_dtype)
            if controlnet_mode
            else None,
        )


    def data(self, cfg: OneStepConfig, run: Runner) -> tuple[Bank, Bank]:
        """The prompts' bank (latents (N, 4, h, w) + embeddings, no pixels) and the ODE pairs solved by these
        teachers (``training.stages.onestep_pairs``)."""
        bank = load_bank(
            cfg.data, self.vae, self.text, run.accelerator, run.out / "cache", keep_pixels=False,
            teacher=(self.unet, self.scheduler.config, self.uncond),
        )  # fmt: skip
        controlnet_mode = self.controlnet is not None
        args = (self.unet, self.controlnet, self.scheduler, self.vae, self.uncond, controlnet_mode)
        return bank, load_or_solve_pairs(cfg, run, bank, *args)


class UNetStudent:
    """Stage 4: the student UNet itself is trained (any module with the UNet's call signature and an epsilon output:
    the known-answer tests give it a small generator)."""

    name = "unet"

    def __init__(self, trained: nn.Module):
        self.trained = trained

    @classmethod
    def load(cls, cfg: OneStepConfig, teachers: Teachers, device) -> UNetStudent:
        """The stage-1 student (``student``), or one derived from the teacher by ``recipe``."""
        return cls(student_unet(teachers.unet, cfg.student, recipe_from(cfg.recipe)).to(device))

    def sample(self, module, batch: dict, ac: torch.Tensor, timestep: int) -> torch.Tensor:
        """One-step x0 (B, 4, h, w) float32 of ``module`` (the trained UNet, wrapped or not) from ``batch``'s noise."""
        return onestep_sample(module, batch["noise"], batch["embeds"], ac, timestep)

    def validation_images(self, batch: dict, images: torch.Tensor) -> torch.Tensor:
        return images


class ControlNetStudent:
    """Stage 5: the one-step student UNet is frozen; its ControlNet is trained."""

    name = "controlnet"

    def __init__(self, cfg: OneStepConfig, teachers: Teachers, device, weight_dtype):
        unet = student_unet(teachers.unet, cfg.student, recipe_from(cfg.recipe))
        self.unet = freeze(unet).to(device, weight_dtype)
        controlnet = student_controlnet(unet, cfg.student_controlnet, cfg.embedding_channels)
        self.trained = controlnet.to(device, torch.float32)  # trained in float32 whatever the frozen UNet's dtype

    def sample(self, module, batch: dict, ac: torch.Tensor, timestep: int) -> torch.Tensor:
        """One-step x0 (B, 4, h, w) float32 of the frozen UNet steered by ``module`` (the trained ControlNet) with
        ``batch``'s control images (B, 3, H, W) in [0, 1]."""
        return onestep_sample(
            self.unet, batch["noise"], batch["embeds"], ac, timestep, controlnet=module, control=batch["control"]
        )

    def validation_images(self, batch: dict, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([batch["control"], images])  # top: the controls, bottom: what the student made of them


class OneStepTrainer:
    """Stages 4 and 5 (paper section 3.2, Fig. 3): feature-matching warm-up, then segmented Diff-Instruct.

    A training step is ``fake_updates`` fake-model steps (phase (b) only) and one student step; each is an optimiser
    step over ``grad_accum`` micro-batches whose random draws are rows of the step's global batch
    (``training.draws``), so a run's result does not depend on how many processes share it."""

    def __init__(self, cfg: OneStepConfig, run: Runner, controlnet_mode: bool):
        # 1. models: frozen teachers, the student (UNet or ControlNet), the feature network
        teachers = Teachers.load(cfg, run.device, run.weight_dtype, controlnet_mode)
        if controlnet_mode:
            student = ControlNetStudent(cfg, teachers, run.device, run.weight_dtype)
        else:
            student = UNetStudent.load(cfg, teachers, run.device)
        features = feature_network(cfg.feature_net, teachers.vae, teachers.unet, teachers.uncond, cfg.feature_model)
        # 2. data: prompts (+ real latents for the GAN) and the teacher's ODE pairs
        bank, pairs = teachers.data(cfg, run)
        self._assemble(cfg, run, teachers, student, features, bank, pairs)

    @classmethod
    def from_parts(cls, cfg: OneStepConfig, run: Runner, teachers: Teachers, student, features, bank: Bank,
                   pairs: Bank) -> OneStepTrainer:
        """A trainer over models and data built elsewhere: any score models with the UNet's call signature
        (``unet(x_t, t, encoder_hidden_states=...).sample``, epsilon prediction) and pairs with ``noise``, ``embeds``
        and ``target`` columns.  The known-answer tests (``training.known_answer``) run the stage's own steps on
        exact scores this way."""
        trainer = cls.__new__(cls)
        trainer._assemble(cfg, run, teachers, student, features, bank, pairs)
        return trainer

    def _assemble(self, cfg, run, teachers, student, features, bank, pairs) -> None:
        self.cfg, self.run, self.device = cfg, run, run.device
        self.teachers, self.student, self.features, self.bank, self.pairs = teachers, student, features, bank, pairs
        trained = student.trained.train()
        if cfg.gradient_checkpointing:
            trained.enable_gradient_checkpointing()
        # the online fake score starts as a copy of the frozen teacher
        fake = FakeScore(copy.deepcopy(teachers.unet).float().requires_grad_(True).train(), cfg.gan_weight > 0)
        self.fm_distance = FEATURE_DISTANCES[cfg.feature_distance]
        # two optimisers (student, fake score), accelerate, EMA
        opt_g, opt_f = run.optimizer(trained.parameters()), run.optimizer(fake.parameters(), cfg.fake_lr)
        sched_g = run.lr_scheduler(opt_g)
        self.trained, self.fake, self.opt_g, self.opt_f, self.sched_g = run.prepare(
            trained, fake, opt_g, opt_f, sched_g
        )
        run.add_ema(student.name, self.trained)
        self.fake_plain = run.unwrap(self.fake)
        self.ac = teachers.scheduler.alphas_cumprod.to(self.device)
        self.T = teachers.scheduler.config.num_train_timesteps
        self.fm_teacher = None  # a frozen copy of the student from ``switch_teacher_at`` on
        self.diagnostic_seconds = 0.0  # time spent on ``log_grad_norms``, left out of the step timings

    # ---- pieces ----------------------------------------------------------------------------------------

    def generate(self, batch: dict, module=None) -> torch.Tensor:
        """The student's one-step x0 (B, 4, h, w) float32, with grad through ``module`` (default: the trained one)."""
        return self.student.sample(module or self.trained, batch, self.ac, self.cfg.student_timestep)

    def fm_targets(self, batch: dict) -> torch.Tensor:
        """The feature-matching targets: the pairs' (teacher ODE or control source), or a frozen copy's samples."""
        if self.fm_teacher is None:
            return batch["target"]
        with torch.no_grad():
            return self.generate(batch, self.fm_teacher)

    def fm_loss_per_sample(self, x, batch: dict, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature-matching distance and latent distance per sample ((B,), (B,)) against ``batch``'s targets; with a
        (B,) bool ``rows``, computed only there (zero elsewhere: the score-distillation rows, whose noise may not
        match the targets).  The loss takes ``distance + latent_weight * latent distance``."""
        if rows is not None:
            index = rows.nonzero(as_tuple=True)[0]
            picked = {k: v[index] for k, v in batch.items()}
            routed = self.fm_loss_per_sample(x[index], picked) if len(index) else None
            zeros = x.new_zeros(len(x), dtype=torch.float32)
            return (zeros, zeros) if routed is None else tuple(zeros.index_put((index,), r.float()) for r in routed)
        with torch.no_grad():
            target = self.fm_targets(batch)
            t_feats = self.features(target)
        distance = self.fm_distance(self.features(x), t_feats, self.cfg.feature_weights)
        return distance, LATENT_DISTANCES[self.cfg.latent_distance](x, target)

    def with_fresh_noise(self, batch: dict, draws: StepDraws, rows=None) -> dict:
        """``batch`` with new noise in ``rows`` (a (B,) bool mask; all rows when None) when ``fresh_noise``.

        The teacher pairs hold a fixed set of noises; a fake score model trained only on the student's outputs for
        those learns a sum of point masses, whose low-t score pulls each sample to itself instead of describing the
        student's distribution (DMD likewise keeps its paired noise for the regression loss only)."""
        if not self.cfg.fresh_noise:
            return batch
        rows = fresh_noise_rows(draws, rows, self.cfg.fresh_noise_fraction, self.device)
        fresh = draws.randn(batch["noise"].shape[1:], self.device)
        return {**batch, "noise": torch.where(rows.view(-1, *[1] * (fresh.ndim - 1)), fresh, batch["noise"])}

    def residuals(self, x_t, t, embeds, control, grad: bool = False) -> dict:
        """The frozen teacher ControlNet's residuals at ``x_t`` in the weight dtype ({} without a ControlNet);
        without ``grad`` they are constants, with it differentiable with respect to ``x_t`` (the GAN generator term,
        whose gradient reaches the student through them)."""
        wd = self.run.weight_dtype
        cast = None if control is None else control.to(wd)
        x_t = x_t if grad else x_t.detach()
        with torch.set_grad_enabled(grad):
            return control_residuals(self.teachers.controlnet, x_t.to(wd), t, embeds.to(wd), cast)

    def real_batch(self, draws: StepDraws) -> dict:
        """Real data for the GAN head: latents (B, 4, h, w), their own prompts' embeddings and, with a ControlNet,
        control images extracted from their decoded pixels (so that real rows are consistent with their condition)."""
        real = draws.sample(self.bank, self.device)
        if self.teachers.controlnet is not None:
            with torch.no_grad():
                pixels = decode_unet_samples(self.teachers.vae, real["latents"]) * 2 - 1
                real["control"] = extract_control(pixels, self.cfg.control_kind)
        return real

    def scores(self, x, batch: dict, t, draws: StepDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """Fake and real x0 predictions (float64, no grad) at a copy of the student's sample re-noised to ``t``."""
        cfg, wd, teachers = self.cfg, self.run.weight_dtype, self.teachers
        x_t = add_noise(x.detach(), draws.randn(x.shape[1:], self.device), self.ac[t])
        embeds, control = batch["embeds"], batch.get("control")
        prediction_type = teachers.scheduler.config.prediction_type
        with torch.no_grad():
            fake_out, _ = self.fake_plain(x_t, t, embeds, self.residuals(x_t, t, embeds, control))
            real_out = guided_output(
                teachers.unet, x_t.to(wd), t, embeds.to(wd), teachers.uncond.to(wd), cfg.real_guidance,
                teachers.controlnet, None if control is None else control.to(wd),
            )  # fmt: skip
            x0_fake = predict_x0(fake_out, x_t.double(), self.ac[t], prediction_type)
            x0_real = predict_x0(real_out, x_t.double(), self.ac[t], prediction_type)
        return x0_fake, x0_real

    def progress(self) -> float:
        """How far phase (b) has come, in [0, 1]."""
        cfg = self.cfg
        return (self.run.state.step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)

    # ---- the three kinds of update -------------------------------------------------------------------------

    def fake_step(self, phase: int = 0) -> dict:
        """One optimiser step of the fake score model: the denoising loss on fresh student samples (+ its GAN head's
        discriminator loss: real data vs them)."""

        def micro_loss(draws: StepDraws, micro: int):
            cfg = self.cfg
            batch = self.with_fresh_noise(self.pairs.take(draws.randint(len(self.pairs)), self.device), draws)
            with torch.no_grad():
                x = self.generate(batch)
            t = draws.randint(self.T, self.device)
            noise = draws.randn(x.shape[1:], self.device)
            x_t = add_noise(x, noise, self.ac[t])
            embeds = batch["embeds"]
            res = self.residuals(x_t, t, embeds, batch.get("control"))
            if cfg.gan_weight <= 0:
                with self.run.accelerator.autocast():
                    pred, _ = self.fake(x_t, t, embeds, res)
                    loss = denoising_loss(pred, noise)
                return loss, {"fake_loss": loss.item(), "gan_d": 0.0}
            real = self.real_batch(draws)
            real_t = add_noise(real["latents"], draws.randn(x.shape[1:], self.device), self.ac[t])
            res_real = self.residuals(real_t, t, real["embeds"], real.get("control"))
            both = {k: _cat(res[k], res_real[k]) for k in res}
            with self.run.accelerator.autocast():
                pred, logits = self.fake(
                    torch.cat([x_t, real_t]), torch.cat([t, t]), torch.cat([embeds, real["embeds"]]), both, True
                )
                fake_logits, real_logits = logits.chunk(2)
                d_loss = softplus_discriminator_loss(real_logits, fake_logits)
                loss = denoising_loss(pred[: len(x)], noise) + cfg.gan_weight * d_loss
            return loss, {"fake_loss": loss.item(), "gan_d": d_loss.item()}

        return mean_logs(self.run.accumulated_step(self.fake, self.opt_f, None, phase, micro_loss))

    def warmup_step(self, phase: int = 0) -> dict:
        """One student step of phase (a): feature matching towards the pairs' targets (Eq. 8-9)."""

        def micro_loss(draws: StepDraws, micro: int):
            batch = self.pairs.take(draws.randint(len(self.pairs)), self.device)
            cfg = self.cfg
            with self.run.accelerator.autocast():
                x = self.generate(batch)
                distance, latent = self.fm_loss_per_sample(x, batch)
                loss = cfg.fm_weight * (distance + cfg.latent_weight * latent).mean()
            logs = {"fm": distance.mean().item(), "latent_mse": latent.mean().item(), "loss": loss.item()}
            if self.diagnose_now():
                fm, lat = cfg.fm_weight * distance.mean(), cfg.fm_weight * cfg.latent_weight * latent.mean()
                logs.update(self.gradient_logs({"fm": fm, "latent": lat}))
            return loss, logs

        return mean_logs(self.run.accumulated_step(self.trained, self.opt_g, self.sched_g, phase, micro_loss))

    def score_step(self, phase: int = 0) -> dict:
        """One student step of phase (b), segmented Diff-Instruct (Eq. 10-12): each sample's t decides its loss,
        score distillation where t is in the score segment (fresh noise there), feature matching elsewhere, weighted
        by the decaying lambda_FM (+ the GAN generator term)."""
        cfg = self.cfg
        progress = self.progress()
        alpha = segment_alpha_at(cfg, progress)
        weight = decayed_weight(cfg.fm_weight, cfg.fm_weight_end, progress, cfg.fm_decay)

        def micro_loss(draws: StepDraws, micro: int):
            batch = self.pairs.take(draws.randint(len(self.pairs)), self.device)
            t = draws.randint(cfg.t_max + 1, self.device, low=cfg.t_min)
            mask = score_distillation_mask(t, alpha, self.T, cfg.score_on)
            batch = self.with_fresh_noise(batch, draws, mask)
            with self.run.accelerator.autocast():
                x = self.generate(batch)
                distance, latent = self.fm_loss_per_sample(x, batch, ~mask)
                sd = score_distillation_per_sample(x, *self.scores(x, batch, t, draws), cfg.normalise_score)
                loss = segmented_loss(sd, distance + cfg.latent_weight * latent, mask, weight)
                logs = {
                    "fm": distance[~mask].mean().item() if (~mask).any() else 0.0,
                    "latent_mse": latent[~mask].mean().item() if (~mask).any() else 0.0,
                    "sd": sd.mean().item(), "fm_weight": weight, "alpha": alpha,
                    "score_fraction": mask.float().mean().item(),
                }  # fmt: skip
                terms = {}
                if cfg.gan_weight > 0:
                    gan_g = self.gan_generator_loss(x, t, batch, draws)
                    loss = loss + cfg.gan_weight * gan_g
                    logs["gan_g"] = gan_g.item()
                    terms["gan"] = cfg.gan_weight * gan_g
            if self.diagnose_now():  # each term's share of ``segmented_loss`` (a mean over the micro-batch)
                n, fm_rows = len(x), (~mask).float()
                terms.update(sd=(sd * mask.float()).sum() / n, fm=weight * (distance * fm_rows).sum() / n,
                             latent=weight * cfg.latent_weight * (latent * fm_rows).sum() / n)  # fmt: skip
                logs.update(self.gradient_logs(terms))
            return loss, {**logs, "loss": loss.item()}

        return mean_logs(self.run.accumulated_step(self.trained, self.opt_g, self.sched_g, phase, micro_loss))

    def diagnose_now(self) -> bool:
        """Whether this step logs its terms' gradients (``log_grad_norms``, on the steps the runner logs)."""
        return self.cfg.log_grad_norms and (self.run.state.step + 1) % self.cfg.log_every == 0

    def gradient_logs(self, terms: dict) -> dict:
        """``training.diagnostics.gradient_logs`` of ``terms`` on the trained weights, its time kept aside."""
        started = self.clock()
        logs = gradient_logs(terms, self.trained.parameters(), pairs=[("sd", "fm")] if "sd" in terms else [])
        logs.pop("diagnostic_seconds")
        self.diagnostic_seconds += self.clock() - started
        return logs

    def clock(self) -> float:
        """Seconds for the step timings that size the equal-compute control: on the CPU the process's CPU time (a
        busy machine stretches wall-clock time, and unevenly between the phases: a Diff-Instruct step measured 6.1 and
        9.8 warm-up steps in two runs side by side), elsewhere wall-clock time after a synchronise."""
        if self.device.type == "cpu":
            return time.process_time()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def gan_generator_loss(self, x, t, batch: dict, draws: StepDraws) -> torch.Tensor:
        """DMD2's generator term: the fake model's GAN head on the student's re-noised sample (head frozen here)."""
        self.fake_plain.requires_grad_(False)
        x_gan = add_noise(x, draws.randn(x.shape[1:], self.device), self.ac[t])
        res = self.residuals(x_gan, t, batch["embeds"], batch.get("control"), grad=True)
        _, logits = self.fake_plain(x_gan, t, batch["embeds"], res, True)
        self.fake_plain.requires_grad_(True)
        return softplus_generator_loss(logits)

    # ---- the loop --------------------------------------------------------------------------------------

    def step(self) -> dict:
        cfg, run = self.cfg, self.run
        warmup = run.state.step < cfg.warmup_steps
        if not warmup and cfg.diff_instruct_lr:
            set_learning_rate(self.opt_g, self.sched_g, cfg.diff_instruct_lr)
        if cfg.switch_teacher_at and run.state.step >= cfg.switch_teacher_at and self.fm_teacher is None:
            self.fm_teacher = freeze(copy.deepcopy(run.unwrap(self.trained)))
        start, diagnostics = self.clock(), self.diagnostic_seconds
        logs = {}
        if warmup:
            logs.update(self.warmup_step())
        else:
            for update in range(cfg.fake_updates):
                logs = self.fake_step(phase=update)
            logs.update(self.score_step(phase=cfg.fake_updates))
        key = "warmup" if warmup else "diff_instruct"
        seconds = self.clock() - start - (self.diagnostic_seconds - diagnostics)
        run.timing[f"{key}_seconds"] = run.timing.get(f"{key}_seconds", 0.0) + seconds
        run.timing[f"{key}_steps"] = run.timing.get(f"{key}_steps", 0) + 1
        return logs

    @torch.no_grad()
    def validate(self) -> torch.Tensor:
        """The in-memory student's samples for the first pairs, (N, 3, H, W) in [0, 1] (stage 5: controls above)."""
        n = min(self.cfg.num_validation, len(self.pairs))
        batch = {k: v[:n].float().to(self.device) for k, v in self.pairs.tensors.items()}
        module = self.run.unwrap(self.trained).eval()
        x = self.generate(batch, module)
        module.train()
        return self.student.validation_images(batch, decode_unet_samples(self.teachers.vae, x))

    def train(self) -> Runner:
        self.run.run(self.step, self.validate, models={self.student.name: self.trained})
        return self.run


def main(argv=None, controlnet_mode: bool = False, cfg_cls=OneStepConfig) -> Runner:
    cfg = parse_args(cfg_cls, argv, __doc__)
    check_config(cfg)
    run = Runner(cfg, "onestep_controlnet" if controlnet_mode else "onestep")
    return OneStepTrainer(cfg, run, controlnet_mode).train()


def set_learning_rate(optimizer, scheduler, lr: float) -> None:
    """Set every group's learning rate and the scheduler's base rates (they are what a scheduler multiplies), so the
    new rate holds through ``scheduler.step()`` and is re-applied after a resume restores the old one."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    inner = getattr(scheduler, "scheduler", scheduler)
    if hasattr(inner, "base_lrs"):
        inner.base_lrs = [lr] * len(inner.base_lrs)


def _cat(a, b):
    if isinstance(a, (tuple, list)):
        return type(a)(torch.cat([x, y]) for x, y in zip(a, b))
    return torch.cat([a, b])


if __name__ == "__main__":
    main()
