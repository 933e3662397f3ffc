"""Loading a model folder's components (released layout: ``vae/`` tiny, ``vae_large/`` full, ControlNet apart)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import diffusers
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel

log = logging.getLogger(__name__)


def _diffusers_class(folder: Path, fallback: str):
    config = folder / ("scheduler_config.json" if folder.name == "scheduler" else "config.json")
    name = json.loads(config.read_text()).get("_class_name", fallback) if config.exists() else fallback
    return getattr(diffusers, name)


def load_folder(folder: Path, dtype: torch.dtype, decoder: str = "tiny") -> dict:
    """Tokenizer, text encoder, UNet, tiny VAE, scheduler (and the full VAE as ``decoder`` when asked)."""
    if not (folder / "unet").is_dir():
        raise ValueError(f"{folder} is not a diffusers pipeline folder (no unet/ subfolder)")
    parts = {
        "tokenizer": AutoTokenizer.from_pretrained(folder / "tokenizer"),
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype),
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype),
        "vae": _diffusers_class(folder / "vae", "AutoencoderTiny").from_pretrained(folder / "vae", torch_dtype=dtype),
        "scheduler": _diffusers_class(folder / "scheduler", "DDPMScheduler").from_pretrained(folder / "scheduler"),
    }
    if decoder == "large":
        if not (folder / "vae_large").is_dir():
            raise ValueError(f"decoder='large' needs {folder / 'vae_large'}")
        parts["decoder"] = diffusers.AutoencoderKL.from_pretrained(folder / "vae_large", torch_dtype=dtype)
    elif decoder != "tiny":
        raise ValueError(f"decoder must be 'tiny' or 'large', got {decoder!r}")
    return parts


def load_controlnet(folder: Path, dtype: torch.dtype) -> ControlNetModel:
    return ControlNetModel.from_pretrained(folder, torch_dtype=dtype)


def load_lora(unet: UNet2DConditionModel, folder: Path, name: str) -> None:
    """Attach a PEFT LoRA folder (``adapter_config.json`` + weights, as the released anime style) as ``name``."""
    from peft import LoraConfig, set_peft_model_state_dict

    config = LoraConfig.from_pretrained(str(folder))
    weights = folder / "adapter_model.safetensors"
    if weights.exists():
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    unet.add_adapter(config, adapter_name=name)
    result = set_peft_model_state_dict(unet, state, adapter_name=name)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"LoRA {folder} does not fit this UNet: {result.unexpected_keys[:3]}")


def set_attention(pipe, attention: str) -> None:
    """xformers on CUDA when installed (``auto``) or asked for; PyTorch's scaled-dot-product attention otherwise."""
    if attention not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"attention must be auto, sdpa or xformers, got {attention!r}")
    if attention == "sdpa" or pipe.device.type != "cuda":
        if attention == "xformers":
            raise ValueError("xformers needs a CUDA device")
        return
    try:
        import xformers  # noqa: F401
    except ImportError:
        if attention == "xformers":
            raise ValueError("attention='xformers' but xformers is not installed (pip install xformers)") from None
        return
    for net in filter(None, [pipe.unet, pipe.controlnet, pipe.decoder_vae]):
        net.enable_xformers_memory_efficient_attention()
    log.info("using xformers attention")
