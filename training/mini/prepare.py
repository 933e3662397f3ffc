"""The miniature's givens, trained here because no pretrained toy models exist: the teacher VAE, the teacher latent
diffusion model (SD's ``scaled_linear`` schedule, epsilon prediction, 10% empty prompts for CFG) and the teacher
ControlNet (edges of the digit).  Writes the teacher as a ``StableDiffusionPipeline`` folder plus ``controlnet/``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline

from sdxs.controlnet import control_residuals
from sdxs.onestep import add_noise
from training.control import extract_control
from training.mini import models
from training.stages.common import sample_timesteps

# the ControlNets' controls, row by row in turn: the ink redrawn as the page's pen strokes (sketch mode) and Canny
# edges (edges mode), each as the server makes it (``training.control``), so the one shipped ControlNet serves both
CONTROL_KIND = "strokes+canny"


def log(msg: str) -> None:
    print(f"[mini {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_vae(pixels: torch.Tensor, steps: int, batch: int = 32, kl_weight: float = 1e-6, seed: int = 0, device="cpu"):
    """L1 reconstruction + a small KL; returns the VAE with its ``scaling_factor`` set to 1 / std(latents).  Batches
    and posterior noise are drawn on the CPU (the same draws on every device), the VAE trains on ``device``."""
    vae = models.vae(seed=seed).to(device)
    opt = torch.optim.AdamW(vae.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = pixels[torch.randint(len(pixels), (batch,), generator=gen)].to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample  # a CPU generator: diffusers draws on the CPU and moves
        loss = F.l1_loss(recon, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        std = torch.cat([vae.encode(c.to(device)).latent_dist.mean for c in pixels[:512].split(128)]).std()
    vae.register_to_config(scaling_factor=float(1 / std))
    return vae.eval().requires_grad_(False), losses


def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (N, 3, S, S) in [-1, 1] -> UNet-space latents (posterior mean times ``scaling_factor``), on the VAE's
    device."""
    with torch.no_grad():
        chunks = [vae.encode(c.to(vae.device)).latent_dist.mean for c in pixels.split(128)]
        return torch.cat(chunks) * vae.config.scaling_factor


def train_teacher(latents, embeds, uncond, steps: int, batch: int = 64, lr: float = 2e-3, seed: int = 0):
    """Plain denoising loss on the digit latents, prompts dropped to the empty prompt 10% of the time.  Trains on
    the latents' device; every draw is made on the CPU (the same draws on every device)."""
    device = latents.device
    unet = models.teacher_unet(text_dim=embeds.shape[-1], seed=seed).to(device)
    sched = models.scheduler()
    ac = sched.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=gen)
        e = torch.where((torch.rand(batch, generator=gen) < 0.1).view(-1, 1, 1).to(device), uncond, embeds[idx])
        noise = torch.randn(latents[idx].shape, generator=gen).to(device)
        t = torch.randint(1000, (batch,), generator=gen).to(device)
        loss = F.mse_loss(unet(add_noise(latents[idx], noise, ac[t]), t, e).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        losses.append(loss.item())
    return unet.eval().requires_grad_(False), sched, losses


def train_teacher_controlnet(
    unet, latents, embeds, controls, uncond, steps: int, batch: int = 64, seed: int = 0, timesteps: str = "cubic"
):
    """ControlNet training (frozen teacher UNet, denoising loss), control = edges of the training digit, timesteps
    drawn mostly noisy (``cubic``: edge F1 at 25 steps 0.516 vs 0.507 ``uniform`` after 400 steps, 0.577 after 800;
    ``python -m training.mini.teacher_controlnet`` compares them)."""
    device = latents.device
    controlnet = models.teacher_controlnet(unet).to(device).train()
    ac = models.scheduler().alphas_cumprod.to(device)
    opt = torch.optim.AdamW(controlnet.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=gen)
        e = torch.where((torch.rand(batch, generator=gen) < 0.1).view(-1, 1, 1).to(device), uncond, embeds[idx])
        noise = torch.randn(latents[idx].shape, generator=gen).to(device)
        t = sample_timesteps(1000, batch, gen, device, timesteps)
        x_t = add_noise(latents[idx], noise, ac[t])
        pred = unet(x_t, t, e, **control_residuals(controlnet, x_t, t, e, controls[idx])).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return controlnet.eval().requires_grad_(False), losses


def build_teacher(work: Path, rows, control_rows, vae_pixels, steps: dict, seed: int = 0, device="cpu") -> dict:
    """Train VAE, teacher UNet and teacher ControlNet on ``device``; write ``work/teacher`` and
    ``work/teacher_controlnet``.  ``rows`` (pixels (N, 3, S, S) in [-1, 1], captions) train the teacher UNet,
    ``control_rows`` (the same) its ControlNet, ``vae_pixels`` the VAE."""
    tokenizer = models.write_char_tokenizer(work / "tokenizer_src")
    text_encoder = models.text_encoder(len(tokenizer.get_vocab()), seed=seed)
    log(f"VAE: {steps['vae']} steps")
    vae, vae_losses = train_vae(vae_pixels, steps["vae"], seed=seed, device=device)

    def embed(captions: list[str]) -> torch.Tensor:
        with torch.no_grad():
            ids = tokenizer(
                captions, padding="max_length", max_length=models.MAX_TOKENS, truncation=True, return_tensors="pt"
            ).input_ids
            return text_encoder(ids)[0].to(device)

    uncond = embed([""])
    log(f"teacher UNet: {steps['teacher']} steps")
    unet, scheduler, unet_losses = train_teacher(encode(vae, rows[0]), embed(rows[1]), uncond, steps["teacher"],
                                                 seed=seed)  # fmt: skip
    control_pixels, control_captions = control_rows
    controls = extract_control(control_pixels, CONTROL_KIND).to(device)
    log(f"teacher ControlNet: {steps['teacher_controlnet']} steps")
    controlnet, cn_losses = train_teacher_controlnet(
        unet, encode(vae, control_pixels), embed(control_captions), controls, uncond, steps["teacher_controlnet"],
        seed=seed,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae.cpu(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.cpu(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(work / "teacher")
    controlnet.cpu().save_pretrained(work / "teacher_controlnet")
    losses = {"vae": vae_losses, "teacher_unet": unet_losses, "teacher_controlnet": cn_losses}
    (work / "prepare_losses.json").write_text(json.dumps(losses))
    return losses


def rebuild_teacher_controlnet(work: Path, control_rows, steps: int, seed: int = 0, device="cpu") -> list[float]:
    """Train ``work``'s teacher ControlNet anew on ``control_rows`` (pixels (N, 3, S, S) in [-1, 1], captions) for
    ``steps``, keeping its VAE, teacher UNet and text encoder: after a change to the ControlNet's own settings, the
    givens need not be rebuilt (half an hour of CPU).  Replaces ``work/teacher_controlnet`` and its losses in
    ``prepare_losses.json``; returns them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from training.models import load_text_encoder

    teacher = work / "teacher"
    vae = AutoencoderKL.from_pretrained(teacher / "vae").to(device).eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(teacher / "unet").to(device).eval().requires_grad_(False)
    text = load_text_encoder(teacher, device)
    pixels, captions = control_rows
    log(f"teacher ControlNet, anew: {steps} steps")
    controlnet, losses = train_teacher_controlnet(
        unet, encode(vae, pixels), text(captions), extract_control(pixels, CONTROL_KIND).to(device), text([""]),
        steps, seed=seed,
    )  # fmt: skip
    fresh = work / "teacher_controlnet.new"
    controlnet.cpu().save_pretrained(fresh)
    old = work / "teacher_controlnet.old"
    (work / "teacher_controlnet").rename(old)
    fresh.rename(work / "teacher_controlnet")
    shutil.rmtree(old)
    record = json.loads((work / "prepare_losses.json").read_text())
    record["teacher_controlnet"] = losses
    (work / "prepare_losses.json").write_text(json.dumps(record))
    return losses
