"""Config files with command-line overrides."""

import pytest

from training.config import DataConfig, load_config, parse_args, save_config
from training.stages.onestep import OneStepConfig


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nmax_steps: 10\ndata:\n  path: /a\n  resolution: 64\nadam_betas: [0.5, 0.9]\n")
    cfg = load_config(OneStepConfig, path, ["max_steps=20", "data.path=/b", "ema_decay=0.99", "segment_alpha=0.25"])
    assert cfg.lr == 1e-4 and cfg.max_steps == 20 and cfg.ema_decay == 0.99 and cfg.segment_alpha == 0.25
    assert isinstance(cfg.data, DataConfig) and cfg.data.path == "/b" and cfg.data.resolution == 64
    assert cfg.adam_betas == (0.5, 0.9)


def test_json_and_round_trip(tmp_path):
    cfg = parse_args(OneStepConfig, ["--set", "warmup_steps=3", "--set", "score_on=all"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(OneStepConfig, tmp_path / "c.yaml")
    assert again == cfg
    (tmp_path / "c.json").write_text('{"fake_updates": 7}')
    assert load_config(OneStepConfig, tmp_path / "c.json").fake_updates == 7


def test_unknown_keys_raise(tmp_path):
    with pytest.raises(KeyError):
        load_config(OneStepConfig, None, ["lerning_rate=1"])
    with pytest.raises(KeyError):
        load_config(OneStepConfig, None, ["data.resolutoin=1"])
    with pytest.raises(ValueError):
        load_config(OneStepConfig, None, ["max_steps"])


def test_wrongly_typed_values_raise_while_parsing_and_numbers_in_strings_convert():
    for assignment, field in (("lr=fast", "lr"), ("max_steps=1e3", "max_steps"), ("data.resolution=big", "resolution")):
        with pytest.raises(ValueError, match=rf"\.{field} = "):
            load_config(OneStepConfig, None, [assignment])
    cfg = load_config(OneStepConfig, None, ["lr=1e-4", "max_steps=1000.0"])  # YAML reads 1e-4 as a string
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float) and cfg.max_steps == 1000 and isinstance(cfg.max_steps, int)


def test_a_stage_refuses_a_bad_override_before_loading_anything():
    from training.stages import onestep

    # a stage that got as far as loading would fail on the missing teacher instead
    with pytest.raises(ValueError, match="lr = 'fast'"):
        onestep.main(["--set", "lr=fast", "--set", "teacher=/nonexistent"])


def test_the_collective_timeout_reaches_accelerate(tmp_path):
    from datetime import timedelta

    from training.config import TrainConfig
    from training.runner import Runner

    cfg = load_config(TrainConfig, None, [f"output_dir={tmp_path}", "collective_timeout_s=90", "progress=false"])
    assert Runner(cfg, "t").accelerator.init_handler.timeout == timedelta(seconds=90)


def test_stage1_follows_the_paper_without_the_denoising_loss_and_refuses_an_empty_loss():
    from training.stages import distill_unet

    assert load_config(distill_unet.DistillUNetConfig).denoise_weight == 0.0  # the paper, section 3.1
    with pytest.raises(ValueError, match="every loss weight is 0"):
        distill_unet.main(["--set", "out_kd_weight=0", "--set", "feat_kd_weight=0", "--set", "teacher=/nonexistent"])
