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

Code: ``DecoderTrainer``; a step is ``decoder_step``, then (once the GAN is on) ``discriminator_step`` on the same
micro-batches.  The latent pool lives in ``training.stages.decoder_latents``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from sdxs.decoder import build_tiny_autoencoder
from training.config import TrainConfig, check_choice, parse_args
from training.data import Bank, load_bank
from training.draws import StepDraws
from training.features import PixelFeatures
from training.losses import PatchDiscriminator, downsampled_l1, hinge_discriminator_loss, hinge_generator_loss
from training.models import freeze, load_part, load_text_encoder, load_tiny_vae
from training.projected_gan import ProjectedDiscriminator
from training.runner import Runner
from training.stages.common import decode_unet_samples, mean_logs
from training.stages.decoder_latents import latent_pool


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


def discriminator(cfg: DistillDecoderConfig, vae, device) -> torch.nn.Module:
    """The PatchGAN (pixels (B, 3, H, W) in [-1, 1] -> patch logits), or the Projected GAN's heads over the frozen
    ``disc_features`` network (-> logits (B,)); hinge losses average either."""
    if cfg.discriminator == "patch":
        return PatchDiscriminator(3, tuple(cfg.disc_channels)).to(device)
    features = PixelFeatures(cfg.disc_features, vae, cfg.feature_model).to(device)
    example = torch.zeros(1, 3, 64, 64, device=device)
    return ProjectedDiscriminator.over(features, example, hidden=cfg.disc_hidden).to(device)


def check_config(cfg: DistillDecoderConfig) -> None:
    """Refuse choices the trainer would otherwise meet only after loading every model."""
    check_choice("discriminator", cfg.discriminator, ("patch", "projected"))
    if cfg.onestep_samples and not cfg.onestep_unet:
        raise ValueError("onestep_samples needs onestep_unet (a one-step UNet folder)")


class DecoderTrainer:
    """Stage 2 (paper Fig. 2a): the tiny decoder (+ encoder) against the frozen teacher VAE's decodes, with a
    discriminator.

    A step is ``decoder_step`` (downsampled L1 + ``gan_weight`` * the GAN's generator term + ``encoder_weight`` * the
    encoder's regression) and, from ``gan_start`` on, ``discriminator_step`` on the same micro-batches' pixels
    (teacher decodes real, tiny decodes fake); each is one optimiser step over ``grad_accum`` micro-batches
    (``Runner.accumulated_step``) whose draws are rows of the step's global batch (``training.draws``)."""

    def __init__(self, cfg: DistillDecoderConfig, run: Runner):
        self.cfg, self.run, self.device = cfg, run, run.device
        # 1. models: the frozen teacher VAE, the tiny autoencoder, the discriminator, the text encoder (for samples)
        self.vae = vae = freeze(load_part(cfg.teacher, "vae")).to(self.device, run.weight_dtype)
        tiny = load_tiny_vae(cfg.tiny_vae) if cfg.tiny_vae else build_tiny_autoencoder(**cfg.tiny_overrides)
        self.tiny = tiny = tiny.to(self.device)
        disc = discriminator(cfg, vae, self.device)
        text = load_text_encoder(cfg.teacher, self.device)
        # 2. data: real-image latents (+ pixels for the encoder), teacher and one-step samples, the pool's decodes
        self.bank = load_bank(cfg.data, vae, text, run.accelerator, run.out / "cache")
        self.pool = latent_pool(cfg, run, self.bank, text)
        self.latent_bank = Bank({"latents": self.pool})
        if cfg.cache_teacher_decodes:  # the teacher decoder is frozen: decode the fixed pool once, not every step
            decoded = [self.decode_teacher(c.to(self.device)).half().cpu() for c in self.pool.split(256)]
            self.latent_bank.tensors["teacher_pixels"] = torch.cat(decoded)
        # 3. optimisers: decoder (+ encoder) and discriminator, accelerate, EMA
        self.train_encoder = cfg.encoder_weight > 0 and "pixels" in self.bank.tensors
        tiny.encoder.requires_grad_(self.train_encoder)
        opt, opt_d = run.optimizer(tiny.parameters()), run.optimizer(disc.parameters(), cfg.disc_lr)
        sched = run.lr_scheduler(opt)
        self.trained, self.disc, self.opt, self.opt_d, self.sched = run.prepare(
            TinyVAETrainable(tiny), disc, opt, opt_d, sched
        )
        run.add_ema("vae", self.trained)
        self.disc_plain = run.unwrap(self.disc)

    # ---- pieces ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode_teacher(self, latents: torch.Tensor) -> torch.Tensor:
        """UNet-space latents (B, 4, h, w) -> the teacher decoder's pixels (B, 3, H, W) in [-1, 1], weight dtype."""
        return self.vae.decode((latents / self.vae.config.scaling_factor).to(self.run.weight_dtype)).sample

    def use_gan(self) -> bool:
        return self.cfg.gan_weight > 0 and self.run.state.step >= self.cfg.gan_start

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """The hinge generator loss of the tiny decodes (B, 3, H, W) (0 before the GAN is on), through the unwrapped
        discriminator (no discriminator grads to sync) in eval mode: its spectral norms' power iteration runs once
        per step, in the discriminator's own step."""
        if not self.use_gan():
            return torch.zeros((), device=self.device)
        self.disc_plain.requires_grad_(False).eval()
        loss = hinge_generator_loss(self.disc_plain(fake))
        self.disc_plain.requires_grad_(True).train()
        return loss

    def decoder_loss(self, draws: StepDraws, micro: int) -> tuple[torch.Tensor, tuple]:
        """Micro-batch loss of the tiny decoder (+ encoder), and (real, fake pixels (B, 3, H, W) float32 in [-1, 1],
        logs) for the discriminator step and the logs."""
        cfg = self.cfg
        drawn = draws.sample(self.latent_bank, self.device)
        latents = drawn["latents"]
        real = drawn["teacher_pixels"] if cfg.cache_teacher_decodes else self.decode_teacher(latents).float()
        batch = draws.sample(self.bank, self.device) if self.train_encoder else None
        with self.run.accelerator.autocast():
            fake, encoded = self.trained(latents, batch["pixels"] if self.train_encoder else None)
            l1 = downsampled_l1(fake, real, cfg.downsample)
            g_loss = self.generator_loss(fake)
            enc = F.mse_loss(encoded, batch["latents"]) if self.train_encoder else torch.zeros((), device=self.device)
            loss = l1 + cfg.gan_weight * g_loss + cfg.encoder_weight * enc
        logs = {"l1_down": l1.item(), "g_loss": g_loss.item(), "encoder_mse": enc.item(), "loss": loss.item()}
        return loss, (real.float(), fake.detach().float(), logs)

    # ---- the two kinds of update and the loop ----------------------------------------------------------

    def decoder_step(self, phase: int = 0) -> tuple[dict, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One optimiser step of the tiny autoencoder; returns the micro-batches' mean logs and their (real, fake)
        pixels for ``discriminator_step``."""
        judged = self.run.accumulated_step(self.trained, self.opt, self.sched, phase, self.decoder_loss)
        return mean_logs([logs for _, _, logs in judged]), [(real, fake) for real, fake, _ in judged]

    def discriminator_step(self, judged: list[tuple[torch.Tensor, torch.Tensor]], phase: int = 1) -> dict:
        """One optimiser step of the discriminator on ``judged``, one (real, fake) pair of pixels (B, 3, H, W) in
        [-1, 1] per micro-batch: hinge loss, teacher decodes real, tiny decodes fake."""

        def micro_loss(draws: StepDraws, micro: int):
            real, fake = judged[micro]
            self.disc_plain.train(micro == 0)  # one power iteration per step, whatever the number of micro-batches
            with self.run.accelerator.autocast():
                logits = self.disc(torch.cat([real, fake]))  # one forward: one DDP reduction
                d_loss = hinge_discriminator_loss(*logits.chunk(2))
            return d_loss, d_loss.item()

        d_losses = self.run.accumulated_step(self.disc, self.opt_d, None, phase, micro_loss)
        self.disc_plain.train()
        return {"d_loss": sum(d_losses) / self.cfg.grad_accum}

    def step(self) -> dict:
        logs, judged = self.decoder_step()
        if self.use_gan():
            logs.update(self.discriminator_step(judged))
        return logs

    @torch.no_grad()
    def validate(self) -> torch.Tensor:
        """The pool's first latents decoded, (2N, 3, H, W) in [0, 1]: top the teacher's decodes, bottom the tiny's."""
        latents = self.pool[: self.cfg.num_validation].to(self.device)
        tiny_px = ((self.tiny.decode(latents).sample.float() + 1) / 2).clamp(0, 1)
        return torch.cat([decode_unet_samples(self.vae, latents), tiny_px])

    def train(self) -> Runner:
        self.run.run(self.step, self.validate, models={"vae": self.tiny})
        return self.run


def main(argv=None) -> Runner:
    cfg = parse_args(DistillDecoderConfig, argv, __doc__)
    check_config(cfg)
    return DecoderTrainer(cfg, Runner(cfg, "distill_decoder")).train()


if __name__ == "__main__":
    main()
