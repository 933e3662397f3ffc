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
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdxs.onestep import add_noise, predict_x0
from training.config import TrainConfig, check_choice, parse_args
from training.control import extract_control
from training.data import Bank, load_bank
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
from training.sampling import ddim_sample, guided_output, onestep_sample
from training.stages.common import decode_unet_samples, randint, randn

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
    feature_net: str = "vae_encoder"  # latent | vae_decoder | vae_encoder | unet_encoder | dinov2, joined by +
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


def controlnet_residuals(controlnet, x_t, t, embeds, control, grad: bool = False) -> dict:
    """The frozen teacher ControlNet's residuals, as UNet keyword arguments ({} without a ControlNet); with ``grad``,
    differentiable with respect to ``x_t`` (the GAN generator term, whose gradient reaches the student through them)."""
    if controlnet is None:
        return {}
    with torch.set_grad_enabled(grad):
        down, mid = controlnet(x_t, t, encoder_hidden_states=embeds, controlnet_cond=control, return_dict=False)
    return dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)


@torch.no_grad()
def make_pairs(
    cfg: OneStepConfig, bank: Bank, teacher, teacher_cn, scheduler, vae, uncond, device, rank: int = 0, world: int = 1
) -> dict:
    """Teacher ODE pairs: noise (N, 4, h, w), prompt embeds, x0 target and, with a ControlNet, the control image
    (N, 3, H, W) in [0, 1], extracted from an independent teacher sample for the same prompt (``control_source:
    teacher``; the paper: controls from the teacher's outputs) or from the dataset image the prompt belongs to
    (``data``: real layouts, as the ControlNet will meet at inference).

    With a ControlNet the target is either the teacher with its ControlNet following that control from the pair's
    noise (``control_target: ode``) or the very image the control was extracted from (``source``: its noise is
    independent of the pair's, so only the control can tell the student where the edges go, as at inference, where
    the control and the noise are unrelated; no second ODE solve).

    ``rank`` of ``world`` processes solves only chunks ``rank``, ``rank + world``, ... of 64 pairs but draws the random
    numbers of every chunk, so ``merge_pair_shards`` of all ranks' results equals one process's pairs exactly; with
    ``world > 1`` the result has a ``chunk`` column for that merge."""
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    out = {k: [] for k in ("noise", "embeds", "target", "control", "chunk")}
    shape = bank.tensors["latents"].shape[1:]
    teacher_refs = teacher_cn is not None and cfg.control_source != "data"
    for chunk, i in enumerate(range(0, cfg.num_pairs, 64)):
        n = min(64, cfg.num_pairs - i)
        index = torch.randint(len(bank), (n,), generator=gen)
        noise = torch.randn((n, *shape), generator=gen).to(device)
        ref_noise = torch.randn((n, *shape), generator=gen).to(device) if teacher_refs else None
        if chunk % world != rank:
            continue
        if world > 1:
            out["chunk"].append(torch.full((n,), chunk))
        embeds = bank.tensors["embeds"][index].to(device).float()
        control = None
        if teacher_cn is not None:
            if cfg.control_source == "data":  # the dataset image the prompt describes (its VAE reconstruction)
                ref = bank.tensors["latents"][index].to(device)
            else:
                ref = ddim_sample(teacher, scheduler.config, ref_noise, embeds, uncond, cfg.ode_steps, cfg.guidance)
            control = extract_control(decode_unet_samples(vae, ref) * 2 - 1, cfg.control_kind)
            out["control"].append(control.half().cpu())
        if control is not None and cfg.control_target == "source":
            target = ref
        else:
            target = ddim_sample(
                teacher, scheduler.config, noise, embeds, uncond, cfg.ode_steps, cfg.guidance, teacher_cn, control
            )
        for k, v in (("noise", noise), ("embeds", embeds), ("target", target)):
            out[k].append(v.cpu())
    return {k: torch.cat(v) for k, v in out.items() if v}


def merge_pair_shards(shards: list[dict]) -> dict:
    """The ranks' ``make_pairs`` results as one process's: rows in chunk order, without the ``chunk`` column."""
    merged = {k: torch.cat([shard[k] for shard in shards if k in shard]) for k in shards[0]}
    order = torch.sort(merged.pop("chunk"), stable=True).indices
    return {k: v[order] for k, v in merged.items()}


def _shard_path(pairs_path: Path, rank: int) -> Path:
    return pairs_path.with_name(f"{pairs_path.stem}.shard{rank}.pt")


PAIR_SETTINGS = ("teacher", "seed", "num_pairs", "ode_steps", "guidance")
CONTROL_PAIR_SETTINGS = ("teacher_controlnet", "control_kind", "control_source", "control_target")


def fresh_noise_rows(
    n: int, rows: torch.Tensor | None, fraction: float, generator: torch.Generator, device
) -> torch.Tensor:
    """Which of ``n`` rows get fresh noise, (n,) bool: each of ``rows`` (all when None) with probability
    ``fraction``.  At fraction 1 nothing is drawn from ``generator`` (runs made before the option are unchanged)."""
    chosen = (
        torch.ones(n, dtype=torch.bool, device=device)
        if fraction >= 1
        else torch.rand(n, generator=generator).to(device) < fraction
    )
    return chosen if rows is None else chosen & rows.to(device)


def segment_alpha_at(cfg: OneStepConfig, progress: float) -> float:
    """The segment boundary alpha at ``progress`` in [0, 1] of phase (b): ``segment_alpha`` lowered to
    ``segment_alpha_end`` by ``alpha_decay`` (fixed when ``segment_alpha_end`` is None)."""
    if cfg.segment_alpha_end is None:
        return cfg.segment_alpha
    return decayed_weight(cfg.segment_alpha, cfg.segment_alpha_end, progress, cfg.alpha_decay)


def pair_settings(cfg: OneStepConfig, controlnet_mode: bool) -> dict:
    """The config fields a pairs file is made from (written beside it as ``<name>.json``); ``pairs_teacher`` only
    when set, so that records written before it existed still match."""
    keys = (
        PAIR_SETTINGS
        + (CONTROL_PAIR_SETTINGS if controlnet_mode else ())
        + (("pairs_teacher",) * bool(cfg.pairs_teacher))
    )
    return json.loads(json.dumps({k: getattr(cfg, k) for k in keys}, default=str))  # as the record reads back


def check_pair_settings(pairs_path: Path, settings: dict) -> None:
    """Stop before any work when an existing pairs file (shared through ``pairs_path``) was made with other settings:
    reusing it would silently train on pairs the config does not describe.  Files without a settings record (written
    before it existed) are trusted."""
    recorded_path = _settings_path(pairs_path)
    if not (pairs_path.exists() and recorded_path.exists()):
        return
    recorded = json.loads(recorded_path.read_text())
    differ = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: {old!r} there, {new!r} here" for k, (old, new) in differ.items())
        raise ValueError(
            f"pairs file {pairs_path} was made with other settings ({detail}); give this run its own pairs_path "
            f"or delete the file to make it again"
        )


def _settings_path(pairs_path: Path) -> Path:
    return pairs_path.with_suffix(".json")


def main(argv=None, controlnet_mode: bool = False, cfg_cls=OneStepConfig) -> Runner:
    cfg = parse_args(cfg_cls, argv, __doc__)
    if cfg.grad_accum != 1:
        raise ValueError("one-step training alternates two optimisers per step; use a larger batch, not grad_accum")
    check_choice("control_source", cfg.control_source, CONTROL_SOURCES)
    check_choice("control_target", cfg.control_target, CONTROL_TARGETS)
    check_choice("latent_distance", cfg.latent_distance, tuple(LATENT_DISTANCES))
    check_choice("alpha_decay", cfg.alpha_decay, ("linear", "cosine", "constant"))
    for name in ("segment_alpha", "segment_alpha_end", "fresh_noise_fraction"):
        value = getattr(cfg, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} {value!r}: expected a number in [0, 1]")
    run = Runner(cfg, "onestep_controlnet" if controlnet_mode else "onestep")
    device, wd = run.device, run.weight_dtype
    pairs_path = Path(cfg.pairs_path or run.out / "cache" / "pairs.pt")
    settings = pair_settings(cfg, controlnet_mode)
    check_pair_settings(pairs_path, settings)

    # 1. models: frozen teacher ("real" score), online fake score from it, the student (UNet, or its ControlNet)
    teacher = freeze(load_part(cfg.teacher, "unet")).to(device, wd)
    scheduler = load_part(cfg.teacher, "scheduler")
    vae = freeze(load_part(cfg.teacher, "vae")).to(device)
    text = load_text_encoder(cfg.teacher, device)
    uncond = text([""])
    unet = student_unet(teacher, cfg.student, recipe_from(cfg.recipe)).to(device)
    teacher_cn = freeze(load_controlnet(cfg.teacher_controlnet)).to(device, wd) if controlnet_mode else None
    if controlnet_mode:
        unet = freeze(unet).to(device, wd)
        trained = student_controlnet(unet, cfg.student_controlnet, cfg.embedding_channels).to(device, torch.float32)
    else:
        trained = unet
    trained.train()
    if cfg.gradient_checkpointing:
        trained.enable_gradient_checkpointing()
    fake = FakeScore(copy.deepcopy(teacher).float().requires_grad_(True).train(), cfg.gan_weight > 0)
    features = feature_network(cfg.feature_net, vae, teacher, uncond, cfg.feature_model)
    fm_distance = FEATURE_DISTANCES[cfg.feature_distance]

    # 2. data: prompts (+ real latents for the GAN) and the teacher's ODE pairs
    bank = load_bank(
        cfg.data,
        vae,
        text,
        run.accelerator,
        run.out / "cache",
        keep_pixels=False,
        teacher=(teacher, scheduler.config, uncond),
    )
    acc = run.accelerator
    need_pairs = not pairs_path.exists()
    acc.wait_for_everyone()  # every rank has looked before any rank writes
    if need_pairs:  # each rank solves its share of the chunks; the main process puts the shards together
        pairs_path.parent.mkdir(parents=True, exist_ok=True)
        solver = freeze(load_part(cfg.pairs_teacher, "unet")).to(device, wd) if cfg.pairs_teacher else teacher
        shard = make_pairs(
            cfg, bank, solver, teacher_cn, scheduler, vae, uncond, device, acc.process_index, acc.num_processes
        )
        del solver
        if acc.num_processes == 1:
            torch.save(shard, pairs_path)
        else:
            torch.save(shard, _shard_path(pairs_path, acc.process_index))
            acc.wait_for_everyone()
            if acc.is_main_process:
                paths = [_shard_path(pairs_path, r) for r in range(acc.num_processes)]
                torch.save(merge_pair_shards([torch.load(p) for p in paths]), pairs_path)
                for path in paths:
                    path.unlink()
        if acc.is_main_process:
            _settings_path(pairs_path).write_text(json.dumps(settings, indent=2))
    acc.wait_for_everyone()
    pairs = Bank(torch.load(pairs_path, mmap=True))  # shared through the page cache by a machine's ranks

    # 3. two optimisers (student, fake score), accelerate
    opt_g = run.optimizer(trained.parameters())
    opt_f = run.optimizer(fake.parameters(), cfg.fake_lr)
    sched_g = run.lr_scheduler(opt_g)
    trained_ddp, fake_ddp, opt_g, opt_f, sched_g = run.prepare(trained, fake, opt_g, opt_f, sched_g)
    name = "controlnet" if controlnet_mode else "unet"
    run.add_ema(name, trained_ddp)
    fake_plain = run.unwrap(fake_ddp)
    ac = scheduler.alphas_cumprod.to(device)
    T = scheduler.config.num_train_timesteps
    g = run.state.generator
    fm_teacher = {"model": None}

    def generate(batch, model=None, cn=None):
        """The student's one-step x0 (B, 4, h, w) float32, with grad through the trained module."""
        if controlnet_mode:
            return onestep_sample(
                unet,
                batch["noise"],
                batch["embeds"],
                ac,
                cfg.student_timestep,
                controlnet=cn or trained_ddp,
                control=batch["control"],
            )
        return onestep_sample(model or trained_ddp, batch["noise"], batch["embeds"], ac, cfg.student_timestep)

    def fm_targets(batch):
        if fm_teacher["model"] is None:
            return batch["target"]
        with torch.no_grad():
            m = fm_teacher["model"]
            return generate(batch, *((None, m) if controlnet_mode else (m, None)))

    def fm_loss_per_sample(x, batch, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature-matching distance and latent MSE per sample ((B,), (B,)) against ``batch``'s targets; with a (B,)
        bool ``rows``, computed only there (zero elsewhere: the score-distillation rows, whose noise may not match
        the targets).  The loss takes ``distance + latent_weight * latent_mse``."""
        if rows is not None:
            index = rows.nonzero(as_tuple=True)[0]
            routed = fm_loss_per_sample(x[index], {k: v[index] for k, v in batch.items()}) if len(index) else None
            zeros = x.new_zeros(len(x), dtype=torch.float32)
            return (zeros, zeros) if routed is None else tuple(zeros.index_put((index,), r.float()) for r in routed)
        with torch.no_grad():
            target = fm_targets(batch)
            t_feats = features(target)
        return fm_distance(features(x), t_feats, cfg.feature_weights), LATENT_DISTANCES[cfg.latent_distance](x, target)

    def with_fresh_noise(batch, rows=None):
        """``batch`` with new noise in ``rows`` (a (B,) bool mask; all rows when None) when ``fresh_noise``.

        The teacher pairs hold a fixed set of noises; a fake score model trained only on the student's outputs for
        those learns a sum of point masses, whose low-t score pulls each sample to itself instead of describing the
        student's distribution (DMD likewise keeps its paired noise for the regression loss only)."""
        if not cfg.fresh_noise:
            return batch
        rows = fresh_noise_rows(len(batch["noise"]), rows, cfg.fresh_noise_fraction, g, device)
        fresh = randn(batch["noise"].shape, g, device)
        fresh = torch.where(rows.view(-1, *[1] * (fresh.ndim - 1)), fresh, batch["noise"])
        return {**batch, "noise": fresh}

    def residuals(x_t, t, embeds, control, grad: bool = False) -> dict:
        """The frozen teacher ControlNet's residuals at ``x_t`` in the weight dtype ({} without a ControlNet);
        without ``grad`` they are constants."""
        cast = None if control is None else control.to(wd)
        x_t = x_t if grad else x_t.detach()
        return controlnet_residuals(teacher_cn, x_t.to(wd), t, embeds.to(wd), cast, grad)

    def real_batch() -> dict:
        """Real data for the GAN head: latents (B, 4, h, w), their own prompts' embeddings and, with a ControlNet,
        control images extracted from their decoded pixels (so that real rows are consistent with their condition)."""
        real = bank.sample(cfg.batch_size, g, device)
        if controlnet_mode:
            with torch.no_grad():
                pixels = decode_unet_samples(vae, real["latents"]) * 2 - 1
                real["control"] = extract_control(pixels, cfg.control_kind)
        return real

    def fake_update() -> dict:
        """One denoising step of the fake score model on fresh student samples (+ its GAN head: real data vs them)."""
        batch = with_fresh_noise(pairs.sample(cfg.batch_size, g, device))
        with torch.no_grad():
            x = generate(batch)
        t = randint(T, cfg.batch_size, g, device)
        noise = randn(x.shape, g, device)
        x_t = add_noise(x, noise, ac[t])
        embeds = batch["embeds"]
        res = residuals(x_t, t, embeds, batch.get("control"))
        opt_f.zero_grad(set_to_none=True)
        if cfg.gan_weight > 0:
            real = real_batch()
            real_t = add_noise(real["latents"], randn(x.shape, g, device), ac[t])
            res_real = residuals(real_t, t, real["embeds"], real.get("control"))
            both = {k: _cat(res[k], res_real[k]) for k in res}
            with run.accelerator.autocast():
                pred, logits = fake_ddp(
                    torch.cat([x_t, real_t]), torch.cat([t, t]), torch.cat([embeds, real["embeds"]]), both, True
                )
                fake_logits, real_logits = logits.chunk(2)
                d_loss = softplus_discriminator_loss(real_logits, fake_logits)
                loss = denoising_loss(pred[: len(x)], noise) + cfg.gan_weight * d_loss
        else:
            with run.accelerator.autocast():
                pred, _ = fake_ddp(x_t, t, embeds, res)
                loss = d_loss = denoising_loss(pred, noise)
        run.backward_step(loss, fake_ddp, opt_f)
        return {"fake_loss": loss.item(), "gan_d": d_loss.item() if cfg.gan_weight > 0 else 0.0}

    def scores(x, batch, t):
        """Fake and real x0 predictions (float64, no grad) at a copy of the student's sample re-noised to ``t``."""
        x_t = add_noise(x.detach(), randn(x.shape, g, device), ac[t])
        embeds, control = batch["embeds"], batch.get("control")
        with torch.no_grad():
            res = residuals(x_t, t, embeds, control)
            fake_out, _ = fake_plain(x_t, t, embeds, res)
            real_out = guided_output(
                teacher,
                x_t.to(wd),
                t,
                embeds.to(wd),
                uncond.to(wd),
                cfg.real_guidance,
                teacher_cn,
                None if control is None else control.to(wd),
            )
            x0_fake = predict_x0(fake_out, x_t.double(), ac[t], scheduler.config.prediction_type)
            x0_real = predict_x0(real_out, x_t.double(), ac[t], scheduler.config.prediction_type)
        return x0_fake, x0_real

    def generator_update(warmup: bool) -> dict:
        batch = pairs.sample(cfg.batch_size, g, device)
        if not warmup:  # each sample's t decides its loss; score-distillation rows may take fresh noise
            t = randint(cfg.t_max + 1, cfg.batch_size, g, device, low=cfg.t_min)
            progress = (run.state.step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
            alpha = segment_alpha_at(cfg, progress)
            mask = score_distillation_mask(t, alpha, T, cfg.score_on)
            batch = with_fresh_noise(batch, mask)
        with run.accelerator.autocast():
            x = generate(batch)
            distance, latent_mse = fm_loss_per_sample(x, batch, None if warmup else ~mask)
            fm = distance + cfg.latent_weight * latent_mse
            fm_rows = slice(None) if warmup else ~mask
            logs = {
                "fm": distance[fm_rows].mean().item() if len(distance[fm_rows]) else 0.0,
                "latent_mse": latent_mse[fm_rows].mean().item() if len(latent_mse[fm_rows]) else 0.0,
            }
            if warmup:
                loss = cfg.fm_weight * fm.mean()
            else:
                x0_fake, x0_real = scores(x, batch, t)
                sd = score_distillation_per_sample(x, x0_fake, x0_real, cfg.normalise_score)
                weight = decayed_weight(cfg.fm_weight, cfg.fm_weight_end, progress, cfg.fm_decay)
                loss = segmented_loss(sd, fm, mask, weight)
                logs.update(
                    sd=sd.mean().item(), fm_weight=weight, alpha=alpha, score_fraction=mask.float().mean().item()
                )
                if cfg.gan_weight > 0:
                    fake_plain.requires_grad_(False)
                    x_gan = add_noise(x, randn(x.shape, g, device), ac[t])
                    res_gan = residuals(x_gan, t, batch["embeds"], batch.get("control"), grad=True)
                    _, logits = fake_plain(x_gan, t, batch["embeds"], res_gan, True)
                    fake_plain.requires_grad_(True)
                    gan_g = softplus_generator_loss(logits)
                    loss = loss + cfg.gan_weight * gan_g
                    logs["gan_g"] = gan_g.item()
        run.backward_step(loss, trained_ddp, opt_g, sched_g)
        logs["loss"] = loss.item()
        return logs

    def step() -> dict:
        warmup = run.state.step < cfg.warmup_steps
        if not warmup and cfg.diff_instruct_lr:
            set_learning_rate(opt_g, sched_g, cfg.diff_instruct_lr)
        if cfg.switch_teacher_at and run.state.step >= cfg.switch_teacher_at and fm_teacher["model"] is None:
            fm_teacher["model"] = freeze(copy.deepcopy(run.unwrap(trained_ddp)))
        start = time.perf_counter()
        logs = {}
        if not warmup:
            for _ in range(cfg.fake_updates):
                logs = fake_update()
        logs.update(generator_update(warmup))
        key = "warmup" if warmup else "diff_instruct"
        run.timing[f"{key}_seconds"] = run.timing.get(f"{key}_seconds", 0.0) + time.perf_counter() - start
        run.timing[f"{key}_steps"] = run.timing.get(f"{key}_steps", 0) + 1
        return logs

    def validate() -> torch.Tensor:
        n = min(cfg.num_validation, len(pairs))
        batch = {k: v[:n].float().to(device) for k, v in pairs.tensors.items()}
        module = run.unwrap(trained_ddp).eval()
        with torch.no_grad():
            x = generate(batch, *((None, module) if controlnet_mode else (module, None)))
        module.train()
        images = decode_unet_samples(vae, x)
        return torch.cat([batch["control"], images]) if controlnet_mode else images

    run.run(step, validate, models={name: trained_ddp})
    return run


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
