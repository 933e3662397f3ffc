"""Every paper-scale example config in ``training/configs`` parses into its stage's config (unknown keys raise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import parse_args
from training.stages.distill_controlnet import DistillControlNetConfig
from training.stages.distill_decoder import DistillDecoderConfig
from training.stages.distill_unet import DistillUNetConfig
from training.stages.export import ExportConfig
from training.stages.onestep import OneStepConfig

CONFIGS = Path(__file__).parents[2] / "training" / "configs"
STAGE_CONFIGS = {
    "distill_unet": DistillUNetConfig,
    "distill_decoder": DistillDecoderConfig,
    "distill_decoder_onestep": DistillDecoderConfig,
    "distill_controlnet": DistillControlNetConfig,
    "onestep": OneStepConfig,
    "onestep_controlnet": OneStepConfig,
    "export": ExportConfig,
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_config_parses_into_its_stage_config(path):
    stage = path.stem.removesuffix("_sd15")
    assert stage in STAGE_CONFIGS, f"{path.name}: no stage config known for {stage!r}"
    cfg = parse_args(STAGE_CONFIGS[stage], ["--config", str(path)])
    assert cfg.output_dir
