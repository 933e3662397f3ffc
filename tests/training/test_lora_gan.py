"""Stage 4c: the very-low-rank LoRA + Projected-GAN fine-tune of the one-step UNet (paper section 4)."""

from pathlib import Path

import pytest
import torch
import yaml
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from training.lora import add_lora, merged_state_dict
from training.mini.models import RECIPE, RECIPE_DICT
from training.models import load_part, student_unet
from training.projected_gan import ProjectedDiscriminator
from training.stages import lora_gan


@pytest.fixture(scope="module")
def student(toy, tmp_path_factory) -> Path:
    """A one-step student stand-in: the toy teacher's block-removed student, saved as a diffusers folder."""
    path = tmp_path_factory.mktemp("lora") / "student"
    student_unet(load_part(toy.teacher, "unet"), "", RECIPE).save_pretrained(path)
    return path


def _inputs(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, 8, 8, generator=g)
    return x, torch.tensor([999, 500]), torch.randn(2, 5, unet.config.cross_attention_dim, generator=g)


def test_the_merged_lora_unet_gives_the_adapters_outputs_with_low_rank_changes(student):
    unet = UNet2DConditionModel.from_pretrained(student)
    x, t, c = _inputs(unet)
    before = unet(x, t, c).sample
    params = add_lora(unet, rank=2)
    assert torch.equal(unet(x, t, c).sample, before)  # B starts at zero
    assert all(p.requires_grad for p in params) and not any(
        p.requires_grad for n, p in unet.named_parameters() if "lora_" not in n
    )
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.1)
    adapted = unet(x, t, c).sample
    plain = UNet2DConditionModel.from_pretrained(student)
    original = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.load_state_dict(merged_state_dict(unet))  # strict: exactly the plain model's keys
    assert torch.allclose(plain(x, t, c).sample, adapted, atol=1e-5) and not torch.allclose(adapted, before)
    changed = [k for k in original if not torch.equal(original[k], plain.state_dict()[k])]
    assert changed and all(k.split(".")[-2] in ("to_q", "to_k", "to_v", "0") for k in changed)
    assert all(torch.linalg.matrix_rank(plain.state_dict()[k] - original[k]) <= 2 for k in changed)
    with pytest.raises(ValueError, match="lora_targets"):
        add_lora(UNet2DConditionModel.from_pretrained(student), 2, targets=["no_such_layer"])


def test_projected_discriminator_heads_judge_every_map_and_follow_the_prompt():
    disc = ProjectedDiscriminator([4, 8], embed_dim=6, hidden=8)
    maps = [torch.randn(3, 4, 8, 8), torch.randn(3, 8, 4, 4)]
    embeds = torch.randn(3, 5, 6)
    logits = disc(maps, embeds)
    assert logits.shape == (3,)
    assert not torch.allclose(disc(maps, embeds.flip(0)), logits)  # conditioned on the prompt
    logits.sum().backward()
    assert all(p.grad is not None for head in disc.heads for p in head.parameters() if p.requires_grad)


def test_lora_gan_stage_trains_only_the_lora_and_exports_a_plain_unet(toy, student, tmp_path):
    out = tmp_path / "lora_gan"
    cfg = dict(
        output_dir=str(out), teacher=str(toy.teacher), student=str(student), recipe=RECIPE_DICT, data=toy.data_cfg(),
        num_pairs=4, ode_steps=2, max_steps=2, batch_size=2, lora_rank=2, lr=1e-2, disc_hidden=8, real="teacher",
        num_validation=2, progress=False, log_every=1,
    )  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    lora_gan.main(["--config", str(tmp_path / "c.yaml")])
    trained = UNet2DConditionModel.from_pretrained(out / "final" / "unet").state_dict()
    base = UNet2DConditionModel.from_pretrained(student).state_dict()
    changed = [k for k in base if not torch.equal(base[k], trained[k])]
    assert changed and all(".attn" in k and k.endswith("weight") for k in changed)
    assert all(torch.linalg.matrix_rank(trained[k] - base[k]) <= 2 for k in changed)
    adapter = load_file(out / "final" / "lora" / "adapter_model.safetensors")
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    rows = [yaml.safe_load(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert {"gan_g", "fm", "d_loss", "d_real"} <= set(rows[-1]) and rows[-1]["step"] == 2
    with pytest.raises(ValueError, match="real 'fake'"):
        lora_gan.main(["--config", str(tmp_path / "c.yaml"), "--set", "real=fake"])
