"""Parameter counts of every variant's components, counted on the meta device (no memory, no weights)."""

from __future__ import annotations

from accelerate import init_empty_weights
from diffusers import AutoencoderTiny, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdxs.configs import TEACHERS, VARIANTS
from sdxs.controlnet import controlnet_config
from sdxs.student import student_config

# text encoders of each family, as transformers configs (counts match the paper's 0.12B / 0.33B / 0.80B)
TEXT_ENCODERS = {
    768: dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu"),
    1024: dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
               projection_dim=512, hidden_act="gelu"),
}


def _count(build) -> int:
    with init_empty_weights():
        return sum(p.numel() for p in build().parameters())


def unet_parameters(name: str) -> int:
    """Parameters of a variant's student UNet, or of a teacher UNet (``sd15``, ``sd21-base``, ``sdxl``)."""
    return _count(lambda: UNet2DConditionModel.from_config(unet_config(name)))


def unet_config(name: str) -> dict:
    if name in TEACHERS:
        return dict(TEACHERS[name])
    variant = VARIANTS[name]
    return student_config(TEACHERS[variant.teacher], variant.recipe)


def text_encoder_config(dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **TEXT_ENCODERS[dim])


def component_parameters(name: str) -> dict[str, int]:
    """Per-component counts for a variant (text encoder where its family's is known, UNet, tiny VAE, ControlNet)."""
    config = unet_config(name)
    counts = {"unet": unet_parameters(name)}
    dim = config["cross_attention_dim"]
    if dim in TEXT_ENCODERS:
        counts["text_encoder"] = _count(lambda: CLIPTextModel(text_encoder_config(dim)))
    vae = lambda: AutoencoderTiny()  # noqa: E731
    counts["image_decoder"] = _count(lambda: vae().decoder)
    counts["image_encoder"] = _count(lambda: vae().encoder)
    if name in VARIANTS and VARIANTS[name].teacher != "sdxl":
        counts["controlnet"] = _count(lambda: ControlNetModel.from_config(controlnet_config(config)))
    return counts
