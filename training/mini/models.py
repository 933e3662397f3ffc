"""Toy-scale models built locally from configs (no Hub): a char-level CLIP text encoder, a 4x KL VAE, a 3-stage
teacher UNet shaped like SD1.5's (cross-attention at the top stages, plain lowest stage), its ControlNet, and the
SDXS-style removal recipe that cuts the student from it (drop the lowest stage and the mid block, one resnet per down
stage, no attention at the highest-resolution stage).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdxs.configs import RemovalRecipe
from sdxs.tiny import char_level_tokenizer

CHARS = string.ascii_lowercase + string.digits + ".,'-"
MAX_TOKENS = 32

RECIPE = RemovalRecipe(keep_down=((0,), (0,)), keep_up=((0, 2), (0, 2)), no_attention_stages=(0,))
RECIPE_DICT = {"keep_down": [[0], [0]], "keep_up": [[0, 2], [0, 2]], "no_attention_stages": [0]}


def write_char_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """The miniature's character-level CLIP tokenizer (``sdxs.tiny.char_level_tokenizer`` over ``CHARS``, the two
    specials last, ``MAX_TOKENS`` long), saved to ``directory``."""
    tokenizer = char_level_tokenizer(MAX_TOKENS, CHARS, specials_first=False)
    tokenizer.save_pretrained(directory)
    return tokenizer


def text_encoder(vocab_size: int, width: int = 32, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=width,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config).eval()


def vae(channels: tuple[int, ...] = (16, 32, 32), seed: int = 0) -> AutoencoderKL:
    """4x KL autoencoder (two downsamplings), 4 latent channels."""
    torch.manual_seed(seed)
    n = len(channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        norm_num_groups=16,
        sample_size=32,
    )


# the two lowest stages share a width, as SD1.5 (1280, 1280): the student's first up stage then matches the teacher's
def teacher_unet(channels: tuple[int, ...] = (32, 32, 32), text_dim: int = 32, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_dim,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def teacher_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """A ControlNet from the teacher with a 4x conditioning embedding (the VAE is 4x)."""
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))


def scheduler() -> DDPMScheduler:
    """SD's training schedule: scaled_linear betas 0.00085..0.012, 1000 steps, epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )


TINY_DECODER = dict(
    encoder_block_out_channels=(32, 32, 32),
    decoder_block_out_channels=(32, 32, 32),
    num_encoder_blocks=(1, 2, 2),
    num_decoder_blocks=(2, 2, 1),
)
"""A 4x AutoencoderTiny (TAESD shape with one stage fewer) for the 4x toy VAE."""


def write_random_teacher(directory: str | Path, seed: int = 0, small: bool = True) -> tuple[Path, Path]:
    """An untrained toy teacher folder and ControlNet (for fast tests): returns (teacher dir, controlnet dir)."""
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    tokenizer = write_char_tokenizer(directory / "tokenizer_src")
    unet = teacher_unet((16, 32, 32), seed=seed) if small else teacher_unet(seed=seed)
    model = vae((16, 16, 16) if small else (16, 32, 32), seed=seed)
    model.register_to_config(scaling_factor=1.0)
    StableDiffusionPipeline(
        vae=model,
        text_encoder=text_encoder(len(tokenizer.get_vocab()), seed=seed),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(directory / "teacher")
    teacher_controlnet(unet).save_pretrained(directory / "teacher_controlnet")
    return directory / "teacher", directory / "teacher_controlnet"
