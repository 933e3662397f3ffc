"""Training data: image-text folders, WebDataset tar shards, Hugging Face ``datasets`` (optionally streamed) or
prompts alone (the teacher draws the images), cached as latents + prompt embeddings.

The cache is one ``.pt`` file per (data, VAE, text encoder, resolution) holding ``latents`` (N, 4, h, w) float32 in the
UNet's space (the VAE posterior mean times ``scaling_factor``), ``embeds`` (N, L, D) float32 (or float16),
``captions`` (N,) and, when asked, ``pixels`` (N, 3, H, W) float16 in [-1, 1].  The stages draw rows from it with
``training.draws.StepDraws`` (``Bank.take``), keyed by the step, so a resumed run draws exactly the batches the
uninterrupted run would have.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from sdxs import frames
from training.config import DataConfig
from training.sampling import ddim_sample
from training.shards import make_once

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def iter_folder(path: str | Path) -> Iterator[tuple[Image.Image, str]]:
    """(image, caption) for every image file with a same-stem ``.txt`` caption (missing caption: empty prompt)."""
    for file in sorted(Path(path).rglob("*")):
        if file.suffix.lower() in IMAGE_SUFFIXES:
            caption = file.with_suffix(".txt")
            with Image.open(file) as image:
                image.load()  # the pixels read, the file closed
            yield image, caption.read_text().strip() if caption.exists() else ""


def iter_hf(cfg: DataConfig) -> Iterator[tuple[Image.Image, str]]:
    """(image, caption) from a Hugging Face dataset (name or local folder; needs the ``datasets`` package).  With
    ``streaming`` the rows are read as they arrive: the raw images never land on disk, only the latent cache does."""
    import datasets  # optional dependency, imported only for this data kind

    ds = datasets.load_dataset(cfg.path, split=cfg.split, streaming=cfg.streaming)
    for row in ds:
        yield row[cfg.image_column], str(row[cfg.caption_column])


def shard_paths(pattern: str) -> list[Path]:
    """The tar shards of a WebDataset pattern: ``/data/{00000..00099}.tar`` (a numeric brace range, zero padding
    kept), a glob (``/data/*.tar``) or one file, in sorted order."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match:
        first, last = match.groups()
        numbers = [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
        paths = [Path(pattern[: match.start()] + n + pattern[match.end() :]) for n in numbers]
    else:
        paths = sorted(Path(p) for p in glob.glob(pattern))
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        detail = f" (missing: {missing[:3]})" if missing else ""
        raise ValueError(f"data.path {pattern!r}: no tar shards there{detail}")
    return paths


def iter_webdataset(pattern: str) -> Iterator[tuple[Image.Image, str]]:
    """(image, caption) from WebDataset tar shards, read as streams (one pass, no index, no unpacking to disk): the
    members of a sample share a key (``000123.jpg`` with ``000123.txt``; png, webp and json ``caption`` too) and are
    stored next to each other, as WebDataset writes them."""
    for path in shard_paths(pattern):
        with tarfile.open(path, "r|*") as tar:
            key, image, caption = None, None, ""
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, suffix = member.name.rpartition(".")
                if stem != key:
                    if image is not None:
                        yield image, caption
                    key, image, caption = stem, None, ""
                data = tar.extractfile(member).read()
                if "." + suffix.lower() in IMAGE_SUFFIXES:
                    image = Image.open(io.BytesIO(data))
                elif suffix == "txt":
                    caption = data.decode("utf-8").strip()
                elif suffix == "json":
                    caption = str(json.loads(data).get("caption", caption))
            if image is not None:
                yield image, caption


def to_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """(3, R, R) float32 in [-1, 1]: the image squared as the server squares a frame (``sdxs.frames.square``: RGB,
    centre crop to the short side, one antialiased bilinear resize), so the models train on the pixels they serve."""
    return frames.square([image], resolution)[0].float().div(127.5).sub(1).contiguous()


def read_prompts(path: str | Path) -> list[str]:
    """The non-empty lines of a prompts file."""
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"data.path {path}: no prompts")
    return prompts


@torch.no_grad()
def teacher_rows(
    cfg: DataConfig, vae, text_encoder, teacher, keep_pixels: bool, batch_size: int = 32, rank: int = 0, world: int = 1
) -> dict:
    """Data-free rows: ``teacher`` = (unet, scheduler config, empty-prompt embeddings (1, L, D)) samples one image per
    prompt (``prompt_steps`` DDIM steps, guidance ``prompt_guidance``, noise from ``prompt_seed``); latents are its
    x0 in UNet space, pixels (when kept) their decodes.  ``rank`` of ``world`` samples only its chunks (see
    ``build_rows``) but draws every chunk's noise, so the merged shards equal one process's rows."""
    unet, scheduler_config, uncond = teacher
    prompts = read_prompts(cfg.path)[: cfg.max_samples or None]
    side = cfg.resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    device = next(unet.parameters()).device
    gen = torch.Generator().manual_seed(cfg.prompt_seed)
    rows = _Rows()
    for chunk, i in enumerate(range(0, len(prompts), batch_size)):
        captions = prompts[i : i + batch_size]
        noise = torch.randn((len(captions), unet.config.in_channels, side, side), generator=gen).to(device)
        if chunk % world != rank:
            continue
        e = text_encoder(captions)
        x0 = ddim_sample(unet, scheduler_config, noise, e, uncond, cfg.prompt_steps, cfg.prompt_guidance).float()
        pixels = None
        if keep_pixels:
            pixels = vae.decode((x0 / vae.config.scaling_factor).to(next(vae.parameters()).dtype)).sample
            pixels = pixels.clamp(-1, 1).half().cpu()
        rows.add(range(i, i + len(captions)), x0.cpu(), e.cpu(), captions, pixels)
    return rows.result(cfg)


class _Rows:
    """Rows of a cache as they are made, with their global row numbers (to merge the ranks' shards)."""

    def __init__(self):
        self.index, self.latents, self.embeds, self.captions, self.pixels = [], [], [], [], []

    def add(self, index, latents, embeds, captions, pixels=None) -> None:
        self.index.extend(index)
        self.latents.append(latents)
        self.embeds.append(embeds)
        self.captions.extend(captions)
        if pixels is not None:
            self.pixels.append(pixels)

    def result(self, cfg: DataConfig) -> dict:
        """The cache dict: ``latents``, ``embeds`` (in ``embeds_dtype``), ``captions``, ``row`` and maybe ``pixels``."""
        if not self.index:
            return {"row": torch.zeros(0, dtype=torch.long), "captions": []}
        out = dict(
            latents=torch.cat(self.latents),
            embeds=torch.cat(self.embeds).to(EMBEDS_DTYPES[cfg.embeds_dtype]),
            captions=self.captions,
            row=torch.tensor(self.index),
        )
        if self.pixels:
            out["pixels"] = torch.cat(self.pixels)
        return out


def merge_shards(shards: list[dict]) -> dict:
    """The ranks' ``build_rows`` results as one cache, rows in their global order (``row`` dropped)."""
    shards = [s for s in shards if len(s["row"])]
    if not shards:
        raise ValueError("no rows in any shard")
    rows = torch.cat([s["row"] for s in shards])
    order = torch.sort(rows).indices
    captions = [c for s in shards for c in s["captions"]]
    merged = {k: torch.cat([s[k] for s in shards])[order] for k in shards[0] if k not in ("row", "captions")}
    return {**merged, "captions": [captions[i] for i in order.tolist()]}


def _cache_path(cfg: DataConfig, default_dir: Path, vae, text_encoder, teacher=None) -> Path:
    key = json.dumps(
        [
            cfg.kind,
            str(Path(cfg.path).resolve()) if cfg.kind not in ("hf", "webdataset") else cfg.path,
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
def build_rows(
    cfg: DataConfig,
    vae,
    text_encoder,
    batch_size: int = 32,
    keep_pixels: bool = True,
    teacher=None,
    rank: int = 0,
    world: int = 1,
) -> dict:
    """Encode every (image, caption) once (or, for ``prompts``, let the teacher draw them): the cache's rows as a
    dict.  ``rank`` of ``world`` processes makes only chunks ``rank``, ``rank + world``, ... of ``batch_size`` rows
    (``merge_shards`` puts the ranks' results together in row order)."""
    if cfg.kind == "prompts":
        return teacher_rows(cfg, vae, text_encoder, teacher, keep_pixels, batch_size, rank, world)
    sources = {"hf": iter_hf, "webdataset": lambda c: iter_webdataset(c.path), "folder": lambda c: iter_folder(c.path)}
    if cfg.kind not in sources:
        raise ValueError(f"data.kind {cfg.kind!r}: expected folder, hf, webdataset, prompts or cached")
    source = sources[cfg.kind](cfg)
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    rows, pending, total = _Rows(), [], 0

    def flush():
        pixels = torch.stack([p for _, p, _ in pending])
        latents = vae.encode(pixels.to(device, dtype)).latent_dist.mean * vae.config.scaling_factor
        captions = [c for _, _, c in pending]
        index = [j for j, _, _ in pending]
        rows.add(
            index, latents.float().cpu(), text_encoder(captions).cpu(), captions, pixels.half() if keep_pixels else None
        )
        pending.clear()

    for j, (image, caption) in enumerate(source):
        if cfg.max_samples and j >= cfg.max_samples:
            break
        total += 1
        if (j // batch_size) % world == rank:
            pending.append((j, to_pixels(image, cfg.resolution), caption))
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    if not total:
        raise ValueError(f"no images found for data {cfg}")
    return rows.result(cfg)


EMBEDS_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class Bank:
    """Tensors with a common first dimension: rows taken by index (``take``) or sampled with replacement by an explicit
    generator (``sample``)."""

    tensors: dict[str, torch.Tensor]
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def sample(self, batch_size: int, generator: torch.Generator, device=None) -> dict[str, torch.Tensor]:
        return self.take(torch.randint(len(self), (batch_size,), generator=generator), device)

    def take(self, index: torch.Tensor, device=None) -> dict[str, torch.Tensor]:
        """The rows ``index`` (B,) of every tensor, on ``device``; floating tensors as float32."""
        return {
            k: v[index].to(device).float() if v.is_floating_point() else v[index].to(device)
            for k, v in self.tensors.items()
        }


def load_bank(
    cfg: DataConfig, vae, text_encoder, accelerator, default_dir: Path, keep_pixels: bool = True, teacher=None
) -> Bank:
    """The cached latents/embeddings of ``cfg`` (built on first use, each process encoding its share of the rows,
    then memory-mapped by every process: the page cache holds one copy per machine).  Batches come out as float32
    (``Bank.sample``).  ``teacher`` (unet, scheduler config, empty-prompt embeddings) draws the images of
    ``kind: prompts``."""
    if cfg.embeds_dtype not in EMBEDS_DTYPES:
        raise ValueError(f"data.embeds_dtype {cfg.embeds_dtype!r}: expected one of {tuple(EMBEDS_DTYPES)}")
    if cfg.kind == "prompts" and teacher is None:
        raise ValueError("data kind prompts needs the teacher to draw its images: stages 1, 3, 4 and 5 have one")
    if cfg.kind == "cached":
        path = Path(cfg.path)
    else:
        path = _cache_path(cfg, default_dir, vae, text_encoder, teacher)
        # a cache made without pixels (by a stage that needs none) is made again, with them, for one that does
        missing = not path.exists() or keep_pixels and "pixels" not in torch.load(path, weights_only=False, mmap=True)

        def rows(rank: int, world: int) -> dict:  # each process encodes (or samples) its chunks of rows
            return build_rows(cfg, vae, text_encoder, keep_pixels=keep_pixels, teacher=teacher, rank=rank, world=world)

        make_once(accelerator, path, rows, merge_shards, missing)
    data = torch.load(path, weights_only=False, mmap=True)  # pages are read as batches touch them
    if keep_pixels and "pixels" not in data:
        raise ValueError(f"data.path {path}: this stage needs the images' pixels and the cache holds none")
    tensors = {k: v for k, v in data.items() if torch.is_tensor(v)}
    return Bank(tensors, {"captions": data.get("captions", []), "path": str(path)})
