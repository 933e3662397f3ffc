"""Stage 6: write the released folder layout (the layout of the released Hub repos, e.g. IDKiro/sdxs-512-dreamshaper).

``<output_dir>/`` is a ``StableDiffusionPipeline`` folder whose ``vae/`` is the tiny ``AutoencoderTiny``, with the
teacher's ``AutoencoderKL`` in ``vae_large/`` (not listed in ``model_index.json``), the student ControlNet in
``controlnet/``, and a one-step scheduler config (DDIM, ``trailing`` spacing so one step runs at t=999, ending at x0).
diffusers' ``StableDiffusionPipeline.from_pretrained`` and ``sdxs.SDXSPipeline.from_pretrained`` both load it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from training.config import parse_args, save_config
from training.models import load_controlnet, load_part, load_tiny_vae


@dataclass
class ExportConfig:
    output_dir: str = "runs/export"
    teacher: str = ""  # text encoder, tokenizer, scheduler schedule and vae_large come from here
    unet: str = ""  # the one-step student UNet folder (stage 4 final/unet)
    tiny_vae: str = ""  # stage 2 final/vae
    controlnet: str = ""  # stage 5 final/controlnet (optional)
    vae_large: str = ""  # default: the teacher's vae


def one_step_scheduler(teacher_scheduler_config) -> DDIMScheduler:
    """The teacher's training schedule as a DDIM scheduler whose single step runs at t=999 and returns x0."""
    return DDIMScheduler.from_config(
        teacher_scheduler_config, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0
    )


def main(argv=None) -> Path:
    cfg = parse_args(ExportConfig, argv, __doc__)
    out = Path(cfg.output_dir)
    unet = UNet2DConditionModel.from_pretrained(cfg.unet)
    pipe = StableDiffusionPipeline(
        vae=load_tiny_vae(cfg.tiny_vae),
        text_encoder=load_part(cfg.teacher, "text_encoder"),
        tokenizer=load_part(cfg.teacher, "tokenizer"),
        unet=unet,
        scheduler=one_step_scheduler(load_part(cfg.teacher, "scheduler").config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    vae_large = AutoencoderKL.from_pretrained(cfg.vae_large) if cfg.vae_large else load_part(cfg.teacher, "vae")
    vae_large.save_pretrained(out / "vae_large")
    if cfg.controlnet:
        load_controlnet(cfg.controlnet).save_pretrained(out / "controlnet")
    save_config(cfg, out / "training_export.yaml")
    (out / "README.md").write_text(_card(cfg, unet))
    print(json.dumps({"exported": str(out)}))
    return out


def _card(cfg: ExportConfig, unet) -> str:
    params = sum(p.numel() for p in unet.parameters())
    return (
        "# SDXS-style one-step model (exported by training.stages.export)\n\n"
        f"UNet parameters: {params:,}. One step at t=999, guidance 0; `vae/` tiny decoder, `vae_large/` full VAE"
        f"{', `controlnet/` student ControlNet' if cfg.controlnet else ''}.\n"
    )


if __name__ == "__main__":
    main()
