"""Training data: image-text folders, Hugging Face ``datasets`` or prompts alone (the teacher draws the images),
cached as latents + prompt embeddings.

The cache is one ``.pt`` file per (data, VAE, text encoder, resolution) holding ``latents`` (N, 4, h, w) float32 in the
UNet's space (the VAE posterior mean times ``scaling_factor``), ``embeds`` (N, L, D) float32, ``captions`` (N,) and,
when asked, ``pixels`` (N, 3, H, W) float16 in [-1, 1].  Batches are drawn with an explicit ``torch.Generator`` held
in the checkpointed train state, so a resumed run draws exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from training.config import DataConfig
from training.sampling import ddim_sample

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def iter_folder(path: str | Path) -> Iterator[tuple[Image.Image, str]]:
    """(image, caption) for every image file with a same-stem ``.txt`` caption (missing caption: empty prompt)."""
    for file in sorted(Path(path).rglob("*")):
        if file.suffix.lower() in IMAGE_SUFFIXES:
            caption = file.with_suffix(".txt")
            yield Image.open(file), caption.read_text().strip() if caption.exists() else ""


def iter_hf(cfg: DataConfig) -> Iterator[tuple[Image.Image, str]]:
    """(image, caption) from a Hugging Face dataset (name or local folder; needs the ``datasets`` package)."""
    import datasets  # optional dependency, imported only for this data kind

    ds = datasets.load_dataset(cfg.path, split=cfg.split)
    for row in ds:
        yield row[cfg.image_column], str(row[cfg.caption_column])


def to_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """(3, R, R) float32 in [-1, 1]: RGB, centre crop, bicubic resize."""
    image = ImageOps.fit(image.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def read_prompts(path: str | Path) -> list[str]:
    """The non-empty lines of a prompts file."""
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"data.path {path}: no prompts")
    return prompts


@torch.no_grad()
def teacher_rows(cfg: DataConfig, vae, text_encoder, teacher, keep_pixels: bool, batch_size: int = 32) -> dict:
    """Data-free rows: ``teacher`` = (unet, scheduler config, empty-prompt embeddings (1, L, D)) samples one image per
    prompt (``prompt_steps`` DDIM steps, guidance ``prompt_guidance``, noise from ``prompt_seed``); latents are its
    x0 in UNet space, pixels (when kept) their decodes."""
    unet, scheduler_config, uncond = teacher
    prompts = read_prompts(cfg.path)[: cfg.max_samples or None]
    side = cfg.resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    device = next(unet.parameters()).device
    gen = torch.Generator().manual_seed(cfg.prompt_seed)
    latents, embeds, pixels = [], [], []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        e = text_encoder(chunk)
        noise = torch.randn((len(chunk), unet.config.in_channels, side, side), generator=gen).to(device)
        x0 = ddim_sample(unet, scheduler_config, noise, e, uncond, cfg.prompt_steps, cfg.prompt_guidance).float()
        latents.append(x0.cpu())
        embeds.append(e.cpu())
        if keep_pixels:
            decoded = vae.decode((x0 / vae.config.scaling_factor).to(next(vae.parameters()).dtype)).sample
            pixels.append(decoded.clamp(-1, 1).half().cpu())
    out = dict(latents=torch.cat(latents), embeds=torch.cat(embeds), captions=prompts)
    if keep_pixels:
        out["pixels"] = torch.cat(pixels)
    return out


def _cache_path(cfg: DataConfig, default_dir: Path, vae, text_encoder, teacher=None) -> Path:
    key = json.dumps(
        [
            cfg.kind,
            str(Path(cfg.path).resolve()) if cfg.kind != "hf" else cfg.path,
            cfg.split,
            cfg.resolution,
            cfg.max_samples,
            *([cfg.embeds_dtype] if cfg.embeds_dtype != "float32" else []),  # earlier caches keep their names
            *(
                [cfg.prompt_steps, cfg.prompt_guidance, cfg.prompt_seed, dict(teacher[0].config)]
                if cfg.kind == "prompts"
                else []
            ),
            dict(vae.config),
            text_encoder.model.config.to_dict(),
        ],
        sort_keys=True,
        default=str,
    )
    name = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(cfg.cache_dir or default_dir) / f"latents-{name}.pt"


@torch.no_grad()
def build_cache(
    cfg: DataConfig, vae, text_encoder, path: Path, batch_size: int = 32, keep_pixels: bool = True, teacher=None
) -> None:
    """Encode every (image, caption) once (or, for ``prompts``, let the teacher draw them) and write the cache."""
    if cfg.kind == "prompts":
        out = teacher_rows(cfg, vae, text_encoder, teacher, keep_pixels, batch_size)
        out["embeds"] = out["embeds"].to(EMBEDS_DTYPES[cfg.embeds_dtype])
        _save(out, path)
        return
    rows = iter_hf(cfg) if cfg.kind == "hf" else iter_folder(cfg.path)
    pixels, captions = [], []
    for image, caption in rows:
        pixels.append(to_pixels(image, cfg.resolution))
        captions.append(caption)
        if cfg.max_samples and len(pixels) >= cfg.max_samples:
            break
    if not pixels:
        raise ValueError(f"no images found for data {cfg}")
    device = next(vae.parameters()).device
    latents, embeds = [], []
    for i in range(0, len(pixels), batch_size):
        batch = torch.stack(pixels[i : i + batch_size]).to(device, next(vae.parameters()).dtype)
        latents.append((vae.encode(batch).latent_dist.mean * vae.config.scaling_factor).float().cpu())
        embeds.append(text_encoder(captions[i : i + batch_size]).cpu())
    out = dict(
        latents=torch.cat(latents), embeds=torch.cat(embeds).to(EMBEDS_DTYPES[cfg.embeds_dtype]), captions=captions
    )
    if keep_pixels:
        out["pixels"] = torch.stack(pixels).half()
    _save(out, path)


def _save(out: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")  # one per process: concurrent builders do not collide
    torch.save(out, tmp)
    os.replace(tmp, path)


EMBEDS_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class Bank:
    """Tensors with a common first dimension, sampled with replacement by an explicit generator."""

    tensors: dict[str, torch.Tensor]
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def sample(self, batch_size: int, generator: torch.Generator, device=None) -> dict[str, torch.Tensor]:
        index = torch.randint(len(self), (batch_size,), generator=generator)
        return {
            k: v[index].to(device).float() if v.is_floating_point() else v[index].to(device)
            for k, v in self.tensors.items()
        }


def load_bank(
    cfg: DataConfig, vae, text_encoder, accelerator, default_dir: Path, keep_pixels: bool = True, teacher=None
) -> Bank:
    """The cached latents/embeddings of ``cfg`` (built on the main process on first use, then memory-mapped by
    every process: the page cache holds one copy per machine).  Batches come out as float32 (``Bank.sample``).
    ``teacher`` (unet, scheduler config, empty-prompt embeddings) draws the images of ``kind: prompts``."""
    if cfg.embeds_dtype not in EMBEDS_DTYPES:
        raise ValueError(f"data.embeds_dtype {cfg.embeds_dtype!r}: expected one of {tuple(EMBEDS_DTYPES)}")
    if cfg.kind == "prompts" and teacher is None:
        raise ValueError("data kind prompts needs the teacher to draw its images: stages 1, 3, 4 and 5 have one")
    if cfg.kind == "cached":
        path = Path(cfg.path)
    else:
        path = _cache_path(cfg, default_dir, vae, text_encoder, teacher)
        if accelerator.is_main_process and not path.exists():
            build_cache(cfg, vae, text_encoder, path, keep_pixels=keep_pixels, teacher=teacher)
        accelerator.wait_for_everyone()
    data = torch.load(path, weights_only=False, mmap=True)  # pages are read as batches touch them
    tensors = {k: v for k, v in data.items() if torch.is_tensor(v)}
    return Bank(tensors, {"captions": data.get("captions", []), "path": str(path)})
