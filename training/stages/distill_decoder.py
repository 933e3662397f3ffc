"""Stage 2 (paper Fig. 2a): distil the tiny image decoder (TAESD-shaped ``AutoencoderTiny``) from the teacher VAE.

Latents come from the frozen diffusion model: encoded real images, the teacher's own multi-step samples and, for a
decoder fine-tuned on what an exported one-step pipeline decodes, the one-step model's samples (``onestep_unet``,
with ``onestep_controlnet`` on controls extracted from the data's images; continue from stage 2's decoder through
``tiny_vae``).  Both the teacher decoder and the tiny decoder decode them; loss = L1 after ``downsample``x average
pooling (8 = the latent resolution) + ``gan_weight`` * hinge GAN loss, with teacher decodes as "real" and tiny
decodes as "fake" for a spectral-normalised PatchGAN discriminator (``discriminator: patch``, the default) or, as
the paper's section 4 says, a Projected GAN (``projected``: heads over the frozen teacher VAE encoder's or DINOv2's
maps).  Only the decoder is trained by these losses; with ``encoder_weight > 0`` the tiny encoder is additionally
regressed onto the teacher's latents (MSE, real images only) so the exported ``AutoencoderTiny`` also serves
image-to-image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sdxs.decoder import build_tiny_autoencoder
from training.config import TrainConfig, check_choice, parse_args
from training.control import extract_control
from training.data import Bank, load_bank
from training.features import PixelFeatures
from training.losses import PatchDiscriminator, downsampled_l1, hinge_discriminator_loss, hinge_generator_loss
from training.models import freeze, load_controlnet, load_part, load_text_encoder, load_tiny_vae, student_unet
from training.projected_gan import ProjectedDiscriminator
from training.runner import Runner
from training.sampling import ddim_sample, onestep_sample
from training.shards import make_once
from training.stages.common import alphas_cumprod, decode_unet_samples, mean_logs


@dataclass
class DistillDecoderConfig(TrainConfig):
    teacher: str = ""
    tiny_vae: str = ""  # continue from this AutoencoderTiny; empty: build_tiny_autoencoder(**tiny_overrides)
    tiny_overrides: dict = field(default_factory=dict)
    downsample: int = 8
    gan_weight: float = 0.1
    gan_start: int = 0  # GAN loss enters after this many steps (L1 first)
    disc_lr: float = 1e-4
    discriminator: str = "patch"  # patch: a PatchGAN from scratch | projected: Projected GAN (paper section 4)
    disc_channels: Any = (64, 128, 256)  # the PatchGAN's
    disc_features: str = "vae_encoder"  # the Projected GAN's frozen network on pixels: vae_encoder (offline) | dinov2
    feature_model: str = "facebook/dinov2-small"  # dinov2: a Hub id or a local folder
    disc_hidden: int = 64  # the Projected GAN heads' width
    encoder_weight: float = 1.0
    teacher_samples: int = 0  # teacher multi-step samples added to the latent pool
    sample_steps: int = 25
    sample_guidance: float = 1.0
    # one-step samples added to the latent pool (0: none): the one-step model's latents need not match the teacher's
    # scale, and the tiny decoder's input clamp (tanh(x/3)*3) renders latents outside it worse than the teacher decoder
    onestep_samples: int = 0
    onestep_unet: str = ""  # a one-step UNet folder (stage 4's final)
    onestep_controlnet: str = ""  # its ControlNet (stage 5's final); empty: text-only one-step samples
    onestep_control_share: float = 1.0  # with onestep_controlnet: the share of samples made with it (the rest: text)
    onestep_timestep: int = 999
    control_kind: str = "canny"  # how controls are extracted from the data's images for onestep_controlnet
    cache_teacher_decodes: bool = True  # pixels of the fixed latent pool, decoded once (float16 in CPU memory)


class TinyVAETrainable(torch.nn.Module):
    """Routes decode (and encode) through one ``forward`` so DDP/FSDP see every use of the trained weights."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor, pixels: torch.Tensor | None = None):
        """latents (B, 4, h, w) UNet space -> pixels (B, 3, H, W) in [-1, 1]; pixels [-1, 1] -> latents (or None)."""
        decoded = self.vae.decode(latents).sample
        encoded = self.vae.encode(pixels).latents if pixels is not None else None
        return decoded, encoded


@torch.no_grad()
def teacher_latents(cfg, run, bank: Bank, text, rank: int = 0, world: int = 1) -> list[tuple[int, torch.Tensor]]:
    """``teacher_samples`` latents sampled by the teacher UNet (DDIM) from prompts of the data, in chunks of 64:
    ``rank`` of ``world`` samples chunks ``rank``, ``rank + world``, ... (drawing every chunk's random numbers, so the
    ranks' chunks put together equal one process's, ``merge_chunks``).  Returns (chunk, latents (n, 4, h, w))."""
    unet = freeze(load_part(cfg.teacher, "unet")).to(run.device)
    scheduler = load_part(cfg.teacher, "scheduler")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    out, uncond = [], text([""])
    for chunk, i in enumerate(range(0, cfg.teacher_samples, 64)):
        n = min(64, cfg.teacher_samples - i)
        index = torch.randint(len(bank), (n,), generator=gen)
        noise = torch.randn((n, *bank.tensors["latents"].shape[1:]), generator=gen).to(run.device)
        if chunk % world != rank:
            continue
        embeds = bank.tensors["embeds"][index].to(run.device).float()
        sample = ddim_sample(unet, scheduler.config, noise, embeds, uncond, cfg.sample_steps, cfg.sample_guidance)
        out.append((chunk, sample.cpu()))
    return out


@torch.no_grad()
def onestep_latents(cfg, run, bank: Bank, rank: int = 0, world: int = 1) -> list[tuple[int, torch.Tensor]]:
    """``onestep_samples`` latents (UNet space) from the one-step UNet for prompts of the data, from fresh noise, in
    chunks of 64 shared out like ``teacher_latents``: the first ``onestep_control_share`` of them with the ControlNet,
    on controls of the data's images [-1, 1], the rest without."""
    if cfg.onestep_controlnet and "pixels" not in bank.tensors:
        raise ValueError("onestep_controlnet needs the data's images for its controls: use data with pixels")
    unet = freeze(student_unet(None, cfg.onestep_unet, None)).to(run.device)
    controlnet = freeze(load_controlnet(cfg.onestep_controlnet)).to(run.device) if cfg.onestep_controlnet else None
    scheduler = load_part(cfg.teacher, "scheduler")
    ac = alphas_cumprod(scheduler, run.device)
    gen = torch.Generator().manual_seed(cfg.seed + 2)

    def draw(noise, embeds, controlnet=None, control=None) -> torch.Tensor:
        t, prediction = cfg.onestep_timestep, scheduler.config.prediction_type
        return onestep_sample(unet, noise, embeds, ac, t, prediction, controlnet, control).float().cpu()

    with_control = round(cfg.onestep_control_share * cfg.onestep_samples) if controlnet is not None else 0
    out = []
    for chunk, i in enumerate(range(0, cfg.onestep_samples, 64)):
        n = min(64, cfg.onestep_samples - i)
        index = torch.randint(len(bank), (n,), generator=gen)
        noise = torch.randn((n, *bank.tensors["latents"].shape[1:]), generator=gen).to(run.device)
        if chunk % world != rank:
            continue
        embeds = bank.tensors["embeds"][index].to(run.device).float()
        k = max(0, min(n, with_control - i))  # this chunk's first k rows take the ControlNet
        parts = []
        if k:
            control = extract_control(bank.tensors["pixels"][index[:k]].float().to(run.device), cfg.control_kind)
            parts.append(draw(noise[:k], embeds[:k], controlnet, control))
        if k < n:
            parts.append(draw(noise[k:], embeds[k:]))
        out.append((chunk, torch.cat(parts)))
    return out


def merge_chunks(shards: list[list[tuple[int, torch.Tensor]]]) -> torch.Tensor:
    """The ranks' (chunk, tensor) lists as one tensor in chunk order."""
    return torch.cat([t for _, t in sorted((pair for shard in shards for pair in shard), key=lambda p: p[0])])


def _cached(run, name: str, make) -> torch.Tensor:
    """The samples ``make(rank, world)`` makes, made once per run (resume reuses them), shared out over the processes
    (``training.shards.make_once``, ``merge_chunks``); loaded everywhere."""
    path = run.out / "cache" / name
    make_once(run.accelerator, path, make, merge_chunks)
    return torch.load(path)


def discriminator(cfg: DistillDecoderConfig, vae, device) -> torch.nn.Module:
    """The PatchGAN (pixels (B, 3, H, W) in [-1, 1] -> patch logits), or the Projected GAN's heads over the frozen
    ``disc_features`` network (-> logits (B,)); hinge losses average either."""
    if cfg.discriminator == "patch":
        return PatchDiscriminator(3, tuple(cfg.disc_channels)).to(device)
    features = PixelFeatures(cfg.disc_features, vae, cfg.feature_model).to(device)
    example = torch.zeros(1, 3, 64, 64, device=device)
    return ProjectedDiscriminator.over(features, example, hidden=cfg.disc_hidden).to(device)


def main(argv=None) -> Runner:
    cfg = parse_args(DistillDecoderConfig, argv, __doc__)
    check_choice("discriminator", cfg.discriminator, ("patch", "projected"))
    if cfg.onestep_samples and not cfg.onestep_unet:
        raise ValueError("onestep_samples needs onestep_unet (a one-step UNet folder)")
    run = Runner(cfg, "distill_decoder")
    device = run.device

    # 1. models
    vae = freeze(load_part(cfg.teacher, "vae")).to(device, run.weight_dtype)
    tiny = (load_tiny_vae(cfg.tiny_vae) if cfg.tiny_vae else build_tiny_autoencoder(**cfg.tiny_overrides)).to(device)
    disc = discriminator(cfg, vae, device)
    text = load_text_encoder(cfg.teacher, device)

    # 2. data: real-image latents (+ pixels for the encoder), teacher samples and one-step samples
    bank = load_bank(cfg.data, vae, text, run.accelerator, run.out / "cache")
    pool = [bank.tensors["latents"]]
    if cfg.teacher_samples:
        pool.append(_cached(run, "teacher_latents.pt", lambda r, w: teacher_latents(cfg, run, bank, text, r, w)))
    if cfg.onestep_samples:
        pool.append(_cached(run, "onestep_latents.pt", lambda r, w: onestep_latents(cfg, run, bank, r, w)))
    pool = torch.cat([p.float() for p in pool])
    latent_bank = Bank({"latents": pool})
    if cfg.cache_teacher_decodes:  # the teacher decoder is frozen: decode the fixed pool once, not every step
        scale_ = vae.config.scaling_factor
        with torch.no_grad():
            decoded = [
                vae.decode((c.to(device) / scale_).to(run.weight_dtype)).sample.half().cpu() for c in pool.split(256)
            ]
        latent_bank.tensors["teacher_pixels"] = torch.cat(decoded)

    # 3. optimisers: decoder (+ encoder) and discriminator
    train_encoder = cfg.encoder_weight > 0 and "pixels" in bank.tensors
    tiny.encoder.requires_grad_(train_encoder)
    opt = run.optimizer(tiny.parameters())
    opt_d = run.optimizer(disc.parameters(), cfg.disc_lr)
    sched = run.lr_scheduler(opt)
    tiny_ddp, disc_ddp, opt, opt_d, sched = run.prepare(TinyVAETrainable(tiny), disc, opt, opt_d, sched)
    run.add_ema("vae", tiny_ddp)
    disc_plain = run.unwrap(disc_ddp)
    scale = vae.config.scaling_factor

    def decode_teacher(latents):
        with torch.no_grad():
            return vae.decode((latents / scale).to(run.weight_dtype)).sample.float()

    def generator_loss(draws, micro: int):
        """Micro-batch loss of the tiny decoder (+ encoder); also returns the (real, fake) pixels the discriminator
        then judges, and the logs."""
        drawn = draws.sample(latent_bank, device)
        latents = drawn["latents"]
        real = drawn["teacher_pixels"] if cfg.cache_teacher_decodes else decode_teacher(latents)
        batch = draws.sample(bank, device) if train_encoder else None
        with run.accelerator.autocast():
            fake, encoded = tiny_ddp(latents, batch["pixels"] if train_encoder else None)
            l1 = downsampled_l1(fake, real, cfg.downsample)
            # the generator's GAN term goes through the unwrapped discriminator (no discriminator grads to sync), in
            # eval mode: its spectral norms' power iteration runs once per step, in the discriminator's own step
            disc_plain.requires_grad_(False).eval()
            g_loss = hinge_generator_loss(disc_plain(fake)) if use_gan() else torch.zeros((), device=device)
            disc_plain.requires_grad_(True).train()
            enc = (
                torch.nn.functional.mse_loss(encoded, batch["latents"])
                if train_encoder
                else torch.zeros((), device=device)
            )
            loss = l1 + cfg.gan_weight * g_loss + cfg.encoder_weight * enc
        logs = {"l1_down": l1.item(), "g_loss": g_loss.item(), "encoder_mse": enc.item(), "loss": loss.item()}
        return loss, (real.float(), fake.detach().float(), logs)

    def use_gan() -> bool:
        return cfg.gan_weight > 0 and run.state.step >= cfg.gan_start

    def step() -> dict:
        """The decoder's step, then (with the GAN) the discriminator's on the same micro-batches: teacher decodes
        are real, tiny decodes fake."""
        judged = run.accumulated_step(tiny_ddp, opt, sched, 0, generator_loss)
        logs = mean_logs([logs for _, _, logs in judged])
        if use_gan():

            def discriminator_loss(draws, micro: int):
                real, fake, _ = judged[micro]
                disc_plain.train(micro == 0)  # one power iteration per step, whatever the number of micro-batches
                with run.accelerator.autocast():
                    logits = disc_ddp(torch.cat([real, fake]))  # one forward: one DDP reduction
                    d_loss = hinge_discriminator_loss(*logits.chunk(2))
                return d_loss, d_loss.item()

            d_losses = run.accumulated_step(disc_ddp, opt_d, None, 1, discriminator_loss)
            disc_plain.train()
            logs["d_loss"] = sum(d_losses) / cfg.grad_accum
        return logs

    def validate() -> torch.Tensor:
        latents = pool[: cfg.num_validation].to(device)
        with torch.no_grad():
            tiny_px = ((tiny.decode(latents).sample.float() + 1) / 2).clamp(0, 1)
        return torch.cat([decode_unet_samples(vae, latents), tiny_px])  # top: teacher, bottom: tiny

    run.run(step, validate, models={"vae": tiny})
    return run


if __name__ == "__main__":
    main()
