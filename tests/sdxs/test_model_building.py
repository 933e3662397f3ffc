"""Parameter counts against the paper's table, and BK-SDM initialisation of students from teachers."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from sdxs.configs import TEACHERS, VARIANTS, RemovalRecipe
from sdxs.controlnet import build_student_controlnet, control_residuals
from sdxs.inventory import component_parameters, unet_parameters
from sdxs.student import derive_student, stage_map, student_config


@pytest.mark.parametrize(
    "name, expected", [("sd15", 859_520_964), ("sd21-base", 865_910_724), ("sdxl", 2_567_463_684)]
)
def test_teacher_unets_match_exactly(name, expected):
    assert unet_parameters(name) == expected


@pytest.mark.parametrize(
    "name, target, tolerance",
    [("sdxs-512", 0.32e9, 0.02), ("sdxs-1024", 0.74e9, 0.03), ("sdxs-512-dreamshaper", 315.7e6, 0.005)],
)
def test_student_unets_match_the_paper(name, target, tolerance):
    assert abs(unet_parameters(name) - target) / target <= tolerance


def test_tiny_decoder_is_one_point_two_million():
    assert abs(component_parameters("sdxs-512")["image_decoder"] - 1.2e6) / 1.2e6 <= 0.03


def test_every_variant_has_a_controlnet_or_is_sdxl():
    for name, variant in VARIANTS.items():
        assert ("controlnet" in component_parameters(name)) == (variant.teacher != "sdxl")


def _small(teacher: str) -> dict:
    cfg = dict(TEACHERS[teacher])
    stages = len(cfg["block_out_channels"])
    cfg.update(block_out_channels=(32, 64, 64, 64)[:stages], cross_attention_dim=32, norm_num_groups=8,
               sample_size=16, attention_head_dim=4)
    if teacher == "sdxl":
        cfg.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    return cfg


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_student_copies_kept_blocks_from_teacher(variant):
    torch.manual_seed(0)
    recipe = VARIANTS[variant].recipe
    teacher = UNet2DConditionModel.from_config(_small(VARIANTS[variant].teacher))
    student = derive_student(teacher, recipe)
    t, s = teacher.state_dict(), student.state_dict()
    offset = 1 if recipe.drop_lowest_stage else 0
    # the first resnet of each down stage and the last resnet of each up stage come from the teacher
    assert torch.equal(s["down_blocks.1.resnets.0.conv1.weight"], t["down_blocks.1.resnets.0.conv1.weight"])
    assert torch.equal(s["up_blocks.0.resnets.1.conv1.weight"], t[f"up_blocks.{offset}.resnets.2.conv1.weight"])
    assert torch.equal(s["conv_out.weight"], t["conv_out.weight"])
    assert student.mid_block is None
    assert len(student.down_blocks) == len(teacher.down_blocks) - offset


def test_only_cross_attention_takes_kv_from_the_teachers_cross_attention():
    teacher = UNet2DConditionModel.from_config(_small("sd21-base"))
    student = derive_student(teacher, RemovalRecipe(only_cross_attention_stages=(0,)))
    s, t = student.state_dict(), teacher.state_dict()
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"
    assert torch.equal(s[key], t[key.replace("attn1", "attn2")])


def test_stage_map_pairs_teacher_and_student_stages():
    m = stage_map(RemovalRecipe(), 3)
    assert m.down == {0: 0, 1: 1, 2: 2} and m.up == {1: 0, 2: 1, 3: 2}
    assert stage_map(RemovalRecipe(drop_lowest_stage=False), 3).up == {0: 0, 1: 1, 2: 2}


def test_bad_recipe_is_refused():
    with pytest.raises(ValueError, match="keep_up"):
        student_config(TEACHERS["sd15"], RemovalRecipe(keep_up=((0,), (0,), (0,))))


def test_student_controlnet_drives_a_unet_without_mid_block():
    torch.manual_seed(0)
    student = derive_student(UNet2DConditionModel.from_config(_small("sd15")), VARIANTS["sdxs-512-dreamshaper"].recipe)
    controlnet = build_student_controlnet(student)
    assert torch.equal(controlnet.conv_in.weight, student.conv_in.weight)
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([999, 500]), torch.randn(2, 7, 32)
    down, mid = controlnet(x, t, ctx, controlnet_cond=torch.rand(2, 3, 128, 128), return_dict=False)
    out = student(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert out.shape == x.shape
    # zero convolutions: a fresh ControlNet leaves the UNet unchanged
    assert torch.allclose(out, student(x, t, ctx).sample)


def test_loading_a_tiny_vae_that_diffusers_saved_warns_nothing_and_other_unexpected_keys_still_warn(tmp_path):
    """Issue 25, item 8: every `--model mini` load warned about `block_out_channels`, a key diffusers' own
    AutoencoderTiny writes into its config (sdxs/__init__.py drops exactly that warning)."""
    import json
    import logging

    from diffusers import AutoencoderTiny

    import sdxs  # noqa: F401 - installs the filter
    from sdxs.loading import MINI_DIR

    warned: list[str] = []
    catch = logging.Handler(logging.WARNING)
    catch.emit = lambda record: warned.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(catch)  # diffusers' loggers do not propagate past it
    try:
        AutoencoderTiny.from_pretrained(MINI_DIR / "vae")
        assert warned == []
        config = json.loads((MINI_DIR / "vae" / "config.json").read_text())
        assert "block_out_channels" in config  # the key is still there: the load above really met it
        (tmp_path / "config.json").write_text(json.dumps({**config, "colour": "red"}))
        (tmp_path / "diffusion_pytorch_model.safetensors").symlink_to(
            MINI_DIR / "vae" / "diffusion_pytorch_model.safetensors")
        AutoencoderTiny.from_pretrained(tmp_path)
        assert len(warned) == 1 and "'colour'" in warned[0], warned
    finally:
        logging.getLogger("diffusers").removeHandler(catch)


def test_control_residuals_scale_each_row_and_cast_to_the_unets_dtype():
    """The one home of a ControlNet's residuals (pipeline and training): UNet keyword arguments, scaled row by row,
    cast on request; none without a ControlNet."""
    torch.manual_seed(0)
    student = derive_student(UNet2DConditionModel.from_config(_small("sd15")), VARIANTS["sdxs-512-dreamshaper"].recipe)
    controlnet = build_student_controlnet(student)
    for conv in controlnet.controlnet_down_blocks:  # a trained ControlNet: not zero-initialised
        torch.nn.init.normal_(conv.weight, std=0.1)
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([999, 500]), torch.randn(2, 7, 32)
    cond, scale = torch.rand(2, 3, 128, 128), torch.tensor([0.0, 0.5]).view(-1, 1, 1, 1)
    with torch.no_grad():
        full = control_residuals(controlnet, x, t, ctx, cond)
        rows = control_residuals(controlnet, x, t, ctx, cond, scale, torch.bfloat16)
        out = student(x, t, ctx, **full).sample
    assert set(full) == {"down_block_additional_residuals", "mid_block_additional_residual"}
    assert not torch.allclose(out, student(x, t, ctx).sample)  # the residuals steer the UNet
    for whole, scaled in zip(full["down_block_additional_residuals"], rows["down_block_additional_residuals"]):
        assert scaled.dtype == torch.bfloat16 and not scaled[0].any() and whole[1].abs().sum() > 0
        torch.testing.assert_close(scaled[1].float(), 0.5 * whole[1], rtol=1e-2, atol=1e-2)
    assert control_residuals(None, x, t, ctx, cond) == {}
