"""Teacher-to-student weight copy, stage maps and the feature hooks used by feature KD."""

import pytest
import torch
from torch import nn

from sdxs.student import derive_student, stage_map
from training.hooks import FeatureRecorder, kd_pairs, unet_stage_paths
from training.losses import feature_kd_loss
from training.mini import models
from training.models import student_controlnet


@pytest.fixture(scope="module")
def pair():
    teacher = models.teacher_unet((16, 32, 32), text_dim=32, seed=0).eval()
    return teacher, derive_student(teacher, models.RECIPE)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_kept_blocks_are_copied_from_the_teacher(pair):
    teacher, student = pair
    assert student.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D")
    assert student.mid_block is None
    assert _same(student.down_blocks[1].attentions[0], teacher.down_blocks[1].attentions[0])
    assert _same(student.down_blocks[0].resnets[0], teacher.down_blocks[0].resnets[0])
    # keep_up=(0, 2): student up stage i, resnet 1 <- teacher up stage i + 1, resnet 2
    assert _same(student.up_blocks[0].resnets[1], teacher.up_blocks[1].resnets[2])
    assert _same(student.up_blocks[1].resnets[0], teacher.up_blocks[2].resnets[0])
    assert _same(student.conv_out, teacher.conv_out) and _same(student.time_embedding, teacher.time_embedding)


def test_stage_map_pairs_have_equal_shapes_and_finite_kd(pair):
    teacher, student = pair
    stages = stage_map(models.RECIPE, len(student.config.block_out_channels))
    assert stages.down == {0: 0, 1: 1} and stages.up == {1: 0, 2: 1}
    t_rec = FeatureRecorder(teacher, unet_stage_paths(stages.down, stages.up))
    s_rec = FeatureRecorder(student, unet_stage_paths(stages.down.values(), stages.up.values()))
    x, t, e = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 32, 32)
    with torch.no_grad():
        teacher(x, t, e)
    student(x, t, e).sample.mean().backward()
    pairs = kd_pairs(stages)
    assert len(pairs) == 4
    for tn, sn in pairs:
        assert t_rec.features[tn].shape == s_rec.features[sn].shape, (tn, sn)
    loss = feature_kd_loss(s_rec.features, t_rec.features, pairs)
    assert torch.isfinite(loss)


def test_hooks_fire_through_wrappers_and_gradient_checkpointing(pair):
    _, student = pair
    student = derive_student(models.teacher_unet((16, 32, 32), text_dim=32, seed=0), models.RECIPE)
    student.enable_gradient_checkpointing()
    student.train()

    class Wrapper(nn.Module):  # stands in for DDP / compile wrappers: hooks sit on the unwrapped module
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, *a):
            return self.module(*a)

    rec = FeatureRecorder(student, unet_stage_paths(down=[0], up=[1]))
    x, t, e = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 32, 32)
    Wrapper(student)(x, t, e)
    feats = rec.pop()
    assert set(feats) == {"down.0", "up.1"}
    feats["up.1"].pow(2).mean().backward()
    assert student.conv_in.weight.grad is not None
    rec.remove()
    Wrapper(student)(x, t, e)
    assert rec.features == {}


def test_student_controlnet_mirrors_the_student_and_fits_its_residuals(pair):
    _, student = pair
    cn = student_controlnet(student, embedding_channels=(16, 32, 64))
    assert _same(cn.down_blocks, student.down_blocks) and _same(cn.conv_in, student.conv_in)
    x, t, e = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 32, 32)
    down, mid = cn(x, t, encoder_hidden_states=e, controlnet_cond=torch.rand(2, 3, 32, 32), return_dict=False)
    out = student(x, t, e, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert out.shape == x.shape
    # zero-initialised output convs: a fresh ControlNet does not change the student
    assert torch.allclose(out, student(x, t, e).sample, atol=1e-6)
