"""Loading the frozen teacher parts and building the trainable students from config values.

A teacher is a diffusers ``StableDiffusionPipeline`` folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``); each part loads on its own so a stage pays only for what it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel

from sdxs.configs import VARIANTS, RemovalRecipe
from sdxs.controlnet import build_student_controlnet
from sdxs.student import derive_student

# the modules sdxs.controlnet copies from the UNet (its ControlNet-paper init)

_LOADERS = {
    "unet": UNet2DConditionModel,
    "vae": AutoencoderKL,
    "text_encoder": CLIPTextModel,
    "scheduler": DDPMScheduler,
}


def load_part(root: str | Path, part: str):
    """One component of a pipeline folder (``tokenizer`` via ``AutoTokenizer``, the scheduler as DDPM config)."""
    if part == "tokenizer":
        return AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
    return _LOADERS[part].from_pretrained(root, subfolder=part)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    return module.eval()


@dataclass
class TextEncoder:
    """Tokenizer + frozen text encoder: prompts -> hidden states (B, L, D) float32."""

    tokenizer: Any
    model: CLIPTextModel

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids.to(self.model.device)
        return self.model(ids)[0].float()


def load_text_encoder(root: str | Path, device) -> TextEncoder:
    return TextEncoder(load_part(root, "tokenizer"), freeze(load_part(root, "text_encoder")).to(device))


def recipe_from(value: str | dict | None) -> RemovalRecipe:
    """A removal recipe from a variant name (``sdxs-512-dreamshaper``) or a dict of ``RemovalRecipe`` fields."""
    if value is None or value == "":
        return RemovalRecipe()
    if isinstance(value, str):
        return VARIANTS[value].recipe
    return RemovalRecipe(**{k: _tuples(v) for k, v in value.items()})


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def student_unet(teacher: UNet2DConditionModel, path: str, recipe: RemovalRecipe) -> UNet2DConditionModel:
    """The student: loaded from ``path`` if given, else cut from the teacher by ``recipe`` with copied weights."""
    if path:
        return UNet2DConditionModel.from_pretrained(path, subfolder="unet" if (Path(path) / "unet").is_dir() else None)
    return derive_student(teacher, recipe)


def student_controlnet(unet, path: str = "", embedding_channels: tuple[int, ...] | None = None) -> ControlNetModel:
    """A student ControlNet from ``path`` or mirrored from ``unet`` (``sdxs.controlnet``).

    ``embedding_channels`` overrides the conditioning embedding (its length - 1 is the number of 2x downsamplings, so
    (16, 32, 96, 256) matches an 8x VAE and (16, 32, 64) a 4x one).
    """
    if path:
        return ControlNetModel.from_pretrained(
            path, subfolder="controlnet" if (Path(path) / "controlnet").is_dir() else None
        )
    overrides = {} if embedding_channels is None else {"conditioning_embedding_out_channels": tuple(embedding_channels)}
    return build_student_controlnet(unet, **overrides)


def load_controlnet(path: str) -> ControlNetModel:
    return ControlNetModel.from_pretrained(path)


def load_tiny_vae(path: str) -> AutoencoderTiny:
    return AutoencoderTiny.from_pretrained(path, subfolder="vae" if (Path(path) / "vae").is_dir() else None)
