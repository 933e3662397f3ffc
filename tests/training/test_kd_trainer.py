"""``KDTrainer``'s pieces and its step, one at a time, on the toy teacher (stage 1's UNet student, stage 3's ControlNet
student): the step moves the trained module and only it, the loss is the config's weighted sum of its terms, feature
KD pairs the stages the paper names, and a student identical to its teacher has nothing to learn."""

import pytest
import torch

from training.config import from_dict
from training.draws import StepDraws
from training.mini.models import RECIPE_DICT
from training.runner import Runner
from training.stages.distill_controlnet import ControlNetKD, DistillControlNetConfig
from training.stages.distill_unet import DistillUNetConfig, UNetKD
from training.stages.kd import KDTrainer

WEIGHTS = dict(out_kd_weight=0.5, feat_kd_weight=2.0, denoise_weight=0.25)


def _trainer(toy, tmp_path, kind: str, **extra) -> KDTrainer:
    values = dict(
        output_dir=str(tmp_path), teacher=str(toy.teacher), recipe=RECIPE_DICT, data=toy.data_cfg(), batch_size=2,
        max_steps=2, lr=1e-3, num_validation=2, validation_steps=2, progress=False,
    )  # fmt: skip
    if kind == "controlnet":
        values.update(teacher_controlnet=str(toy.teacher_controlnet), embedding_channels=[16, 32, 64],
                      control_kind="sobel")  # fmt: skip
    config, student = (DistillUNetConfig, UNetKD) if kind == "unet" else (DistillControlNetConfig, ControlNetKD)
    cfg = from_dict(config, {**values, **extra})
    return KDTrainer(cfg, Runner(cfg, "kd"), student)


@pytest.fixture(scope="module", params=["unet", "controlnet"])
def trainer(request, toy, tmp_path_factory) -> KDTrainer:
    return _trainer(toy, tmp_path_factory.mktemp("kd"), request.param, **WEIGHTS)


def _snapshot(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _moved(module, before) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before))


def test_kd_step_moves_the_trained_module_and_nothing_else(trainer):
    frozen = [trainer.teachers.unet] + ([trainer.teachers.controlnet] if trainer.teachers.controlnet else [])
    if trainer.student.unet is not trainer.student.trained:
        frozen.append(trainer.student.unet)  # stage 3: the student UNet stays as stage 1 left it
    before, trained = [_snapshot(m) for m in frozen], _snapshot(trainer.trained)
    logs = trainer.kd_step()
    assert _moved(trainer.trained, trained) and not any(_moved(m, b) for m, b in zip(frozen, before))
    assert set(logs) == {"out_kd", "feat_kd", "denoise", "loss"} and min(logs.values()) > 0
    expected = sum(WEIGHTS[f"{term}_weight"] * logs[term] for term in ("out_kd", "feat_kd", "denoise"))
    assert logs["loss"] == pytest.approx(expected, rel=1e-6)


def test_feature_kd_pairs_every_kept_stage_in_stage_1_and_the_up_stages_in_stage_3(trainer):
    stages = trainer.student.stages
    up = [(f"up.{t}", f"up.{s}") for t, s in stages.up.items()]
    down = [(f"down.{t}", f"down.{s}") for t, s in stages.down.items()]
    assert trainer.pairs == (down + up if trainer.student.name == "unet" else up)
    trainer.kd_losses(trainer.inputs(StepDraws(0, 2).start(0)))  # the recorders saw these stages, popped by the loss
    assert not trainer.t_rec.features and not trainer.s_rec.features


def test_inputs_share_one_noisy_batch_and_stage_3_adds_its_controls(trainer):
    inputs = trainer.inputs(StepDraws(0, 2).start(0))
    assert inputs["x_t"].shape == inputs["noise"].shape == (2, 4, 8, 8) and inputs["t"].shape == (2,)
    if trainer.student.name == "unet":
        assert inputs["control"] is None
    else:  # Sobel edges of the data's pixels, white on black
        assert inputs["control"].shape == (2, 3, 32, 32) and set(inputs["control"].unique().tolist()) <= {0.0, 1.0}


def test_validate_samples_from_the_in_memory_student(trainer):
    images = trainer.validate()
    rows = 2 if trainer.student.name == "unet" else 4  # stage 3: the controls above the samples
    assert images.shape == (rows, 3, 32, 32) and 0 <= float(images.min()) <= float(images.max()) <= 1
    assert trainer.run.unwrap(trainer.trained).training  # back to training mode


@pytest.mark.parametrize("kind", ["unet", "controlnet"])
def test_a_student_identical_to_its_teacher_has_zero_output_and_feature_kd(toy, tmp_path, kind):
    """Teacher and student see the same noisy latents, timesteps, prompts and controls, and feature KD pairs stage i
    with stage i: a student that is its teacher (stage 3: the teacher's UNet and a copy of its ControlNet, made
    non-trivial so the control matters) has zero KD losses while the denoising loss is not zero."""
    from training.models import load_controlnet

    same = dict(student=str(toy.teacher / "unet"), recipe={"drop_lowest_stage": False}, uncond_prob=0.5)
    if kind == "controlnet":
        controlnet = load_controlnet(str(toy.teacher_controlnet))
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        for conv in [*zero_convs, controlnet.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(conv.weight, std=0.1)
        controlnet.save_pretrained(tmp_path / "controlnet")
        same.update(teacher_controlnet=str(tmp_path / "controlnet"), student_controlnet=str(tmp_path / "controlnet"))
    trainer = _trainer(toy, tmp_path / "run", kind, **same)
    inputs = trainer.inputs(StepDraws(0, 4).start(0))
    losses = trainer.kd_losses(inputs)
    assert losses["out_kd"].item() == 0 and losses["feat_kd"].item() == 0 and losses["denoise"].item() > 0
    if kind == "controlnet":  # the control reaches the teacher's prediction
        plain = dict(inputs, control=torch.zeros_like(inputs["control"]))
        assert not torch.allclose(trainer.teacher_output(inputs), trainer.teacher_output(plain))
