"""Every paper-scale example config in ``training/configs`` parses into its stage's config (unknown keys raise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import parse_args
from training.stages.distill_controlnet import DistillControlNetConfig
from training.stages.distill_decoder import DistillDecoderConfig
from training.stages.distill_unet import DistillUNetConfig
from training.stages.export import ExportConfig
from training.stages.lora_gan import LoRAGANConfig
from training.stages.onestep import OneStepConfig

CONFIGS = Path(__file__).parents[2] / "training" / "configs"
STAGE_CONFIGS = {
    "distill_unet": DistillUNetConfig,
    "distill_decoder": DistillDecoderConfig,
    "distill_decoder_onestep": DistillDecoderConfig,
    "distill_controlnet": DistillControlNetConfig,
    "onestep": OneStepConfig,
    "onestep_controlnet": OneStepConfig,
    "lora_gan": LoRAGANConfig,
    "export": ExportConfig,
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_config_parses_into_its_stage_config(path):
    stage = path.stem.removesuffix("_sd15").removesuffix("_sd21")
    assert stage in STAGE_CONFIGS, f"{path.name}: no stage config known for {stage!r}"
    cfg = parse_args(STAGE_CONFIGS[stage], ["--config", str(path)])
    assert cfg.output_dir


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*_sd21.yaml")), ids=lambda p: p.stem)
def test_sd21_configs_build_the_papers_sdxs_512(path):
    """The SD 2.1-base configs name the paper's SDXS-512 recipe and write under runs/sd21, apart from the SD1.5 runs."""
    from training.models import recipe_from

    cfg = parse_args(STAGE_CONFIGS[path.stem.removesuffix("_sd21")], ["--config", str(path)])
    assert cfg.output_dir.startswith("runs/sd21/")
    if hasattr(cfg, "recipe"):
        assert cfg.recipe == "sdxs-512" and recipe_from(cfg.recipe) is not None
