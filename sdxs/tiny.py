"""Small models in the released folder layout, for tests, CI, offline development and benchmarks.

``write_tiny_model`` writes a complete, small SDXS-shaped model with random weights (text encoder and tokenizer built
locally, no download) that loads through exactly the code path of the released weights.  ``write_random_variant``
writes a variant at its real shapes with random weights (the cost of a forward does not depend on the values).

The tiny model's random weights are scaled so that its images are neither constant nor saturated, so equivalence
tests compare images with real structure, and its noise schedule is gentler than SD's (``alphas_cumprod[999]``
about 0.3 instead of 0.005) because a random UNet is no denoiser.  The code path is the same as for real weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdxs.configs import TEACHERS, VARIANTS
from sdxs.controlnet import build_student_controlnet
from sdxs.decoder import build_tiny_autoencoder
from sdxs.student import student_config

TINY_SIZE = 128  # pixels; latents are 16x16
TINY_TEXT_DIM = 32
MARKER = "sdxs_random_weights.json"  # present in every folder this module writes: the app labels such models


def char_level_tokenizer(
    max_length: int = 77, chars: Sequence[str] | None = None, specials_first: bool = True
) -> CLIPTokenizer:
    """A CLIP tokenizer without merges: every prompt character is one token (the tiny models' and the miniature's).

    The vocabulary holds each of ``chars`` (default: the 256 byte-level symbols, so any text encodes) and the same
    character ending a word (``c + "</w>"``), with CLIP's two specials (start, end = padding) before them or, with
    ``specials_first=False``, after them: token ids are the rows of a text encoder's embedding table, so an order
    once trained is kept."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = [token for ch in (sorted(ByteLevel.alphabet()) if chars is None else chars) for token in (ch, ch + "</w>")]
    tokens = specials + tokens if specials_first else tokens + specials
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=max_length)


def tiny_text_encoder(vocab_size: int, hidden: int = TINY_TEXT_DIM) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def tiny_unet_config() -> dict:
    """The dreamshaper student's topology (no mid block, no attention at the top stage) at toy width."""
    teacher = dict(TEACHERS["sd15"])
    teacher.update(block_out_channels=(32, 64, 64, 64), cross_attention_dim=TINY_TEXT_DIM, attention_head_dim=4,
                   norm_num_groups=8, sample_size=TINY_SIZE // 8)
    return student_config(teacher, VARIANTS["sdxs-512-dreamshaper"].recipe)


def tiny_scheduler() -> DDPMScheduler:
    # trailing spacing: one step runs at t=999, as the released models do
    return DDPMScheduler(beta_schedule="linear", beta_start=0.0002, beta_end=0.0022, clip_sample=False,
                         timestep_spacing="trailing", prediction_type="epsilon", steps_offset=1)


@torch.no_grad()
def _scale_(module: torch.nn.Module, factor: float) -> None:
    for p in module.parameters():
        p.mul_(factor)


@torch.no_grad()
def _randomize_zero_convs_(controlnet: ControlNetModel, std: float = 1.0) -> None:
    """ControlNet's zero convs start at 0 (no effect); give them weights so the control image matters."""
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                 controlnet.controlnet_cond_embedding.conv_out]:
        conv.weight.normal_(0, std / conv.weight[0].numel() ** 0.5)
    for conv in controlnet.controlnet_cond_embedding.modules():  # keep the control signal alive through the SiLUs
        if isinstance(conv, torch.nn.Conv2d):
            conv.weight.mul_(3.0)


def _write_model_index(root: Path) -> None:
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderTiny"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2))


def write_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write a complete small model: pipeline folder (``vae/`` tiny, ``vae_large/`` full) and ``controlnet/``.

    Deterministic for a given ``seed``.  Returns the folder.  Takes about a second.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = char_level_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    tiny_text_encoder(len(tokenizer)).save_pretrained(root / "text_encoder")
    unet = UNet2DConditionModel.from_config(tiny_unet_config())
    _scale_(unet.conv_out, 0.3)  # eps of moderate size: x0 stays in the decoder's useful range
    for name, module in unet.named_modules():  # sharper, stronger cross-attention: prompts visibly matter
        if name.endswith(("attn2.to_q", "attn2.to_k")):
            _scale_(module, 4.0)
        elif name.endswith("attn2.to_out.0"):
            _scale_(module, 10.0)
    unet.save_pretrained(root / "unet")
    vae = build_tiny_autoencoder(encoder_block_out_channels=(16,) * 4, decoder_block_out_channels=(16,) * 4,
                                 num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4)
    with torch.no_grad():
        for conv in vae.encoder.modules():  # He-like gain: the ReLU chain neither dies nor ignores its input
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.mul_(2.5)
        vae.encoder.layers[-1].weight.mul_(0.5)  # latents of about unit scale
        last = vae.decoder.layers[-1]
        last.weight.mul_(4.0)
        last.bias.fill_(0.5)  # mid-grey plus structure, rather than a clipped image
    vae.save_pretrained(root / "vae")
    AutoencoderKL(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  sample_size=TINY_SIZE).save_pretrained(root / "vae_large")
    tiny_scheduler().save_pretrained(root / "scheduler")
    controlnet = build_student_controlnet(unet)
    _randomize_zero_convs_(controlnet)
    controlnet.save_pretrained(root / "controlnet")
    _write_model_index(root)
    (root / MARKER).write_text(json.dumps({"kind": "tiny", "seed": seed}))
    return root


def write_random_variant(directory: str | Path, variant: str = "sdxs-512-dreamshaper", seed: int = 0) -> Path:
    """Write ``variant`` at its real shapes with random weights (fp16 files; benchmarks only: the images are noise).

    SD-family variants get the full pipeline layout (text encoder of the family, tiny and full VAE, ControlNet);
    ``sdxs-1024`` (SDXL layout, never released) gets its ``unet/`` only.
    """
    from sdxs.inventory import text_encoder_config, unet_config

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    half = dict(safe_serialization=True)
    unet = UNet2DConditionModel.from_config(unet_config(variant))
    unet.to(torch.float16).save_pretrained(root / "unet", **half)
    if VARIANTS[variant].teacher != "sdxl":
        tokenizer = char_level_tokenizer()
        tokenizer.save_pretrained(root / "tokenizer")
        CLIPTextModel(text_encoder_config(unet.config.cross_attention_dim)).to(torch.float16).save_pretrained(
            root / "text_encoder")
        build_tiny_autoencoder().to(torch.float16).save_pretrained(root / "vae")
        AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                      sample_size=512).to(torch.float16).save_pretrained(root / "vae_large")
        DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      timestep_spacing="trailing", steps_offset=1).save_pretrained(root / "scheduler")
        build_student_controlnet(unet.float()).to(torch.float16).save_pretrained(root / "controlnet")
        _write_model_index(root)
    (root / MARKER).write_text(json.dumps({"kind": "random", "variant": variant, "seed": seed}))
    return root
