"""Stage 2's latent pool: the latents both decoders decode, made once per run and shared out over the processes.

The data's encoded images, then ``teacher_samples`` latents sampled by the teacher UNet (DDIM) and ``onestep_samples``
latents from a one-step UNet (``onestep_unet``, a share of them with ``onestep_controlnet`` on controls extracted
from the data's images).  Samples are made in chunks of 64: rank ``rank`` of ``world`` makes chunks ``rank``,
``rank + world``, ... but draws every chunk's random numbers, so the ranks' chunks put together (``merge_chunks``)
equal one process's.  All latents are in the UNet's space, (N, 4, h, w) float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from training.control import extract_control
from training.data import Bank
from training.models import freeze, load_controlnet, load_part, student_unet
from training.sampling import ddim_sample, onestep_sample
from training.shards import make_once
from training.stages.common import alphas_cumprod

CHUNK = 64


def latent_pool(cfg: Any, run, bank: Bank, text) -> torch.Tensor:
    """(N, 4, h, w) float32: the data's latents, then the teacher's and the one-step model's samples (each made once
    per run, under ``cache/``: a resume reuses them)."""
    pool = [bank.tensors["latents"]]
    if cfg.teacher_samples:
        pool.append(_cached(run, "teacher_latents.pt", lambda r, w: teacher_latents(cfg, run, bank, text, r, w)))
    if cfg.onestep_samples:
        pool.append(_cached(run, "onestep_latents.pt", lambda r, w: onestep_latents(cfg, run, bank, r, w)))
    return torch.cat([p.float() for p in pool])


def _chunks(total: int, bank: Bank, gen: torch.Generator, device, rank: int, world: int) -> Iterator[tuple]:
    """(chunk, first row, bank rows (n,), noise (n, 4, h, w) on ``device``) for this rank's chunks of ``total`` rows;
    every chunk's rows and noise are drawn from ``gen``, this rank's or not."""
    for chunk, first in enumerate(range(0, total, CHUNK)):
        n = min(CHUNK, total - first)
        index = torch.randint(len(bank), (n,), generator=gen)
        noise = torch.randn((n, *bank.tensors["latents"].shape[1:]), generator=gen).to(device)
        if chunk % world == rank:
            yield chunk, first, index, noise


@torch.no_grad()
def teacher_latents(cfg: Any, run, bank: Bank, text, rank: int = 0, world: int = 1) -> list[tuple[int, torch.Tensor]]:
    """``teacher_samples`` latents sampled by the teacher UNet (``sample_steps`` DDIM steps, ``sample_guidance``)
    for prompts of the data: (chunk, latents (n, 4, h, w)) for this rank's chunks."""
    unet = freeze(load_part(cfg.teacher, "unet")).to(run.device)
    scheduler = load_part(cfg.teacher, "scheduler")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    out, uncond = [], text([""])
    for chunk, _, index, noise in _chunks(cfg.teacher_samples, bank, gen, run.device, rank, world):
        embeds = bank.tensors["embeds"][index].to(run.device).float()
        sample = ddim_sample(unet, scheduler.config, noise, embeds, uncond, cfg.sample_steps, cfg.sample_guidance)
        out.append((chunk, sample.cpu()))
    return out


@torch.no_grad()
def onestep_latents(cfg: Any, run, bank: Bank, rank: int = 0, world: int = 1) -> list[tuple[int, torch.Tensor]]:
    """``onestep_samples`` latents from the one-step UNet at ``onestep_timestep`` for prompts of the data, from fresh
    noise: the first ``onestep_control_share`` of them with the ControlNet, on controls of the data's images [-1, 1],
    the rest without.  (chunk, latents (n, 4, h, w)) for this rank's chunks."""
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
    for chunk, first, index, noise in _chunks(cfg.onestep_samples, bank, gen, run.device, rank, world):
        n = len(index)
        embeds = bank.tensors["embeds"][index].to(run.device).float()
        k = max(0, min(n, with_control - first))  # this chunk's first k rows take the ControlNet
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
