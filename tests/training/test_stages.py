"""Smoke tests of every stage entry point (a few steps on an untrained toy teacher), resume included, and the export
loaded back by diffusers' own pipeline.  The stages run once per module, in the order the paper chains them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from diffusers import AutoencoderTiny, ControlNetModel, UNet2DConditionModel

from training.mini.models import RECIPE_DICT
from training.stages import distill_controlnet, distill_decoder, distill_unet, export, onestep, onestep_controlnet
from training.stages.common import sample_timesteps

FAST = dict(batch_size=4, log_every=1, num_validation=2, progress=False, checkpoint_limit=2)


def _run(module, out: Path, **config):
    path = out.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"output_dir": str(out), **FAST, **config}))
    return module.main(["--config", str(path)])


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(next(path.glob("*.safetensors")))


def _losses(out: Path) -> list[dict]:
    """A run's ``losses.jsonl`` rows."""
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def _onestep_config(toy, root: Path, **extra) -> dict:
    """A tiny stage-4 config from the module run's stage-1 student (4 pairs of 2 ODE steps unless ``extra`` says)."""
    return dict(
        teacher=str(toy.teacher),
        recipe=RECIPE_DICT,
        data=toy.data_cfg(),
        student=str(root / "unet" / "final" / "unet"),
        **{"num_pairs": 4, "ode_steps": 2, **extra},
    )


@pytest.fixture(scope="module")
def runs(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    base = dict(teacher=str(toy.teacher), recipe=RECIPE_DICT, data=toy.data_cfg())
    unet_cfg = dict(**base, max_steps=4, checkpoint_every=2, ema_decay=0.9, validation_steps=2, lr=1e-3,
                    snapshot_every=3)
    _run(distill_unet, root / "unet", **unet_cfg)
    # the same run interrupted after 2 steps, then resumed from its latest checkpoint
    _run(distill_unet, root / "unet_resumed", **{**unet_cfg, "max_steps": 2})
    resumed = _run(distill_unet, root / "unet_resumed", **unet_cfg)
    student = str(root / "unet" / "final" / "unet")
    _run(
        distill_decoder,
        root / "decoder",
        teacher=str(toy.teacher),
        data=toy.data_cfg(),
        max_steps=3,
        checkpoint_every=2,
        gan_start=1,
        teacher_samples=4,
        sample_steps=2,
        disc_channels=[8, 16],
        downsample=4,
        tiny_overrides={
            "encoder_block_out_channels": [8, 8, 8],
            "decoder_block_out_channels": [8, 8, 8],
            "num_encoder_blocks": [1, 1, 1],
            "num_decoder_blocks": [1, 1, 1],
        },
    )
    _run(
        distill_controlnet,
        root / "controlnet",
        **base,
        student=student,
        max_steps=2,
        checkpoint_every=2,
        teacher_controlnet=str(toy.teacher_controlnet),
        embedding_channels=[16, 32, 64],
        control_kind="sobel",
        timestep_sampling="cubic",
        validation_steps=2,
    )
    one = dict(
        **base,
        student=student,
        num_pairs=8,
        ode_steps=2,
        guidance=2.0,
        real_guidance=2.0,
        fake_updates=2,
        warmup_steps=1,
        gan_weight=0.1,
        switch_teacher_at=2,
        feature_net="vae_encoder",
        checkpoint_every=1,
    )
    _run(onestep, root / "onestep", **one, max_steps=3)
    _run(onestep, root / "onestep_resumed", **one, max_steps=2)
    _run(onestep, root / "onestep_resumed", **one, max_steps=3)
    _run(
        onestep_controlnet,
        root / "onestep_cn",
        **{
            **one,  # the GAN head's real rows take controls extracted from the real images
            "switch_teacher_at": 0,
            "max_steps": 2,
            "student": str(root / "onestep" / "final" / "unet"),
            "teacher_controlnet": str(toy.teacher_controlnet),
            "student_controlnet": str(root / "controlnet" / "final" / "controlnet"),
            "control_kind": "sobel",
            "embedding_channels": [16, 32, 64],
        },
    )
    export.main(
        [
            "--set",
            f"output_dir={root / 'export'}",
            "--set",
            f"teacher={toy.teacher}",
            "--set",
            f"unet={root / 'onestep' / 'final' / 'unet'}",
            "--set",
            f"tiny_vae={root / 'decoder' / 'final' / 'vae'}",
            "--set",
            f"controlnet={root / 'onestep_cn' / 'final' / 'controlnet'}",
        ]
    )
    return root, resumed


def test_distill_unet_writes_the_student_logs_and_samples(runs):
    root, _ = runs
    unet = UNet2DConditionModel.from_pretrained(root / "unet" / "final" / "unet")
    assert unet.mid_block is None and len(unet.down_blocks) == 2
    rows = _losses(root / "unet")
    assert {"denoise", "out_kd", "feat_kd", "loss"} <= set(rows[-1]) and rows[-1]["step"] == 4
    assert list((root / "unet" / "samples").glob("*.png"))
    assert list((root / "unet" / "logs").rglob("events.out.tfevents*"))
    assert [p.name for p in sorted((root / "unet" / "checkpoints").iterdir())] == ["step_0000002", "step_0000004"]


def test_snapshots_along_a_stage_hold_its_ema_weights(runs):
    root, _ = runs
    assert [p.name for p in (root / "unet" / "snapshots").iterdir()] == ["step_0000003"]  # the final goes to final/
    snapshot, final = _weights(root / "unet" / "snapshots" / "step_0000003" / "unet"), _weights(
        root / "unet" / "final" / "unet")
    assert snapshot.keys() == final.keys() and any(not torch.equal(snapshot[k], final[k]) for k in final)


def test_distill_unet_resume_is_bit_exact(runs):
    root, resumed = runs
    assert resumed.state.step == 4
    a, b = _weights(root / "unet" / "final" / "unet"), _weights(root / "unet_resumed" / "final" / "unet")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_onestep_resume_is_bit_exact(runs):
    root, _ = runs
    a, b = _weights(root / "onestep" / "final" / "unet"), _weights(root / "onestep_resumed" / "final" / "unet")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = _losses(root / "onestep")
    assert "sd" not in rows[0] and {"sd", "fm", "fake_loss", "gan_g", "score_fraction"} <= set(rows[-1])


def test_onestep_latent_term_adds_the_weighted_latent_mse_to_feature_matching(runs, toy, tmp_path):
    """``latent_weight``: the warm-up loss is fm_weight * (feature distance + latent_weight * latent MSE), and both
    parts are logged (the latent MSE shows the latents' drift that decoded features hide)."""
    root, _ = runs
    config = _onestep_config(
        toy,
        root,
        num_pairs=8,
        warmup_steps=2,
        max_steps=2,
        fm_weight=3.0,
        latent_weight=0.5,
        checkpoint_every=2,
    )
    _run(onestep, tmp_path / "run", **config)
    rows = _losses(tmp_path / "run")
    assert len(rows) == 2 and all(r["latent_mse"] > 0 for r in rows)
    for r in rows:
        assert r["loss"] == pytest.approx(3.0 * (r["fm"] + 0.5 * r["latent_mse"]), rel=1e-5)


def test_resume_into_a_different_model_set_names_the_mismatch(runs, toy, tmp_path):
    """A checkpoint saved with a GAN head cannot silently resume a run without one (or the reverse)."""
    import shutil

    root, _ = runs
    saved = sorted((root / "onestep" / "checkpoints").iterdir())[-1]
    shutil.copytree(saved, tmp_path / "run" / "checkpoints" / saved.name)
    config = _onestep_config(
        toy,
        root,
        num_pairs=8,
        warmup_steps=1,
        max_steps=5,
        gan_weight=0.0,
    )
    with pytest.raises(RuntimeError, match="GAN head"):
        _run(onestep, tmp_path / "run", **config)


def test_decoder_and_controlnet_stages_export_their_models(runs):
    root, _ = runs
    tiny = AutoencoderTiny.from_pretrained(root / "decoder" / "final" / "vae")
    assert tiny.decode(torch.randn(1, 4, 8, 8)).sample.shape == (1, 3, 32, 32)
    rows = _losses(root / "decoder")
    assert "d_loss" in rows[-1]
    for name in ("controlnet", "onestep_cn"):
        assert tuple(
            ControlNetModel.from_pretrained(
                root / name / "final" / "controlnet"
            ).config.conditioning_embedding_out_channels
        ) == (16, 32, 64)


def test_decoder_fine_tune_adds_the_one_step_models_samples_to_the_latent_pool(runs, toy, tmp_path):
    """``onestep_samples``: the pool gains the one-step UNet's x0 at ``onestep_timestep``, the first
    ``onestep_control_share`` with the ControlNet on controls extracted from the data's images, the rest without; the
    fine-tune continues from stage 2's decoder."""
    from training.config import DataConfig
    from training.control import extract_control
    from training.data import load_bank
    from training.models import load_part, load_text_encoder
    from training.sampling import onestep_sample

    root, _ = runs
    unet_dir, cn_dir = root / "onestep" / "final" / "unet", root / "onestep_cn" / "final" / "controlnet"
    start = root / "decoder" / "final" / "vae"
    _run(
        distill_decoder,
        tmp_path / "fine_tune",
        teacher=str(toy.teacher),
        data=toy.data_cfg(),
        max_steps=2,
        tiny_vae=str(start),
        onestep_samples=4,
        onestep_unet=str(unet_dir),
        onestep_controlnet=str(cn_dir),
        onestep_control_share=0.5,
        control_kind="sobel",
        gan_weight=0.0,
        downsample=4,
    )
    cached = torch.load(tmp_path / "fine_tune" / "cache" / "onestep_latents.pt")
    assert cached.shape == (4, 4, 8, 8)

    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    vae, text = load_part(toy.teacher, "vae"), load_text_encoder(toy.teacher, "cpu")
    bank = load_bank(DataConfig(**toy.data_cfg()), vae, text, accelerator, tmp_path)  # the stage's cached bank
    gen = torch.Generator().manual_seed(0 + 2)  # the stage's seed + 2
    index = torch.randint(len(bank), (4,), generator=gen)
    noise = torch.randn((4, 4, 8, 8), generator=gen)
    embeds, scheduler = bank.tensors["embeds"][index], load_part(toy.teacher, "scheduler")
    unet, controlnet = UNet2DConditionModel.from_pretrained(unet_dir), ControlNetModel.from_pretrained(cn_dir)
    control = extract_control(bank.tensors["pixels"][index[:2]].float(), "sobel")
    args = (scheduler.alphas_cumprod, 999, scheduler.config.prediction_type)
    with torch.no_grad():
        expected = torch.cat(
            [
                onestep_sample(unet, noise[:2], embeds[:2], *args, controlnet, control),
                onestep_sample(unet, noise[2:], embeds[2:], *args),
            ]
        )
        assert not torch.allclose(expected[:2], onestep_sample(unet, noise[:2], embeds[:2], *args))  # it conditions
    torch.testing.assert_close(cached, expected.float())
    before, after = _weights(start), _weights(tmp_path / "fine_tune" / "final" / "vae")
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)


def test_decoder_stage_asks_for_the_one_step_unet_its_samples_need(tmp_path):
    with pytest.raises(ValueError, match="onestep_samples needs onestep_unet"):
        _run(distill_decoder, tmp_path / "dec", teacher="/nonexistent", onestep_samples=4)


def test_export_layout_loads_in_diffusers(runs):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    root, _ = runs
    out = root / "export"
    assert {"unet", "vae", "vae_large", "text_encoder", "tokenizer", "scheduler", "controlnet", "model_index.json"} <= {
        p.name for p in out.iterdir()
    }
    index = json.loads((out / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderTiny"]
    assert AutoencoderKL.from_pretrained(out / "vae_large").config.scaling_factor == 1.0
    pipe = StableDiffusionPipeline.from_pretrained(out)
    image = pipe(
        "a photo of the digit 1", num_inference_steps=1, guidance_scale=0.0, height=32, width=32, output_type="np"
    ).images[0]
    assert image.shape == (32, 32, 3)
    pipe.scheduler.set_timesteps(1)
    assert pipe.scheduler.timesteps.tolist() == [999]


def test_export_layout_loads_in_sdxs(runs):
    root, _ = runs
    import sdxs

    pipe = sdxs.SDXSPipeline.from_pretrained(str(root / "export"), controlnet="auto", device="cpu", dtype="float32")
    assert {m.value for m in pipe.modes} >= {"text", "image", "sketch"}
    params = sdxs.GenerationParams(prompt="a photo of the digit 1", mode="text", seed=0)
    images = pipe([sdxs.GenerationRequest(params=params, image=None)], output_type="np")
    assert images[0].shape == (pipe.size, pipe.size, 3)  # the VAE factor (4x here) sets both


@pytest.mark.parametrize("stage", ["distill_unet", "onestep"])
def test_bf16_mixed_precision_smoke(toy, tmp_path, stage):
    """Frozen models cast to bf16, trained ones kept in fp32 under autocast (CPU autocast supports bf16)."""
    module = {"distill_unet": distill_unet, "onestep": onestep}[stage]
    extra = dict(num_pairs=4, ode_steps=2, warmup_steps=1, fake_updates=1) if stage == "onestep" else {}
    extra = extra or dict(validation_steps=2)
    _run(
        module,
        tmp_path / stage,
        teacher=str(toy.teacher),
        recipe=RECIPE_DICT,
        data=toy.data_cfg(),
        max_steps=2,
        batch_size=2,
        mixed_precision="bf16",
        checkpoint_every=0,
        **extra,
    )
    rows = _losses(tmp_path / stage)
    assert rows[-1]["step"] == 2 and all(math.isfinite(v) for v in rows[-1].values())


def test_cubic_timestep_sampling_draws_mostly_noisy_timesteps():
    g = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(1000, 20000, g, "cpu")
    cubic = sample_timesteps(1000, 20000, g, "cpu", "cubic")
    assert cubic.dtype == torch.int64 and 0 <= int(cubic.min()) and int(cubic.max()) <= 999
    assert abs(float((uniform >= 500).float().mean()) - 0.5) < 0.02
    assert abs(float((cubic >= 500).float().mean()) - 0.5 ** (1 / 3)) < 0.02  # P(u^3 <= 1/2)
    with pytest.raises(ValueError, match="cosine"):
        sample_timesteps(1000, 4, g, "cpu", "cosine")


def test_controlnet_stage_names_an_unknown_timestep_sampling_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="timestep_sampling 'cosine'"):
        _run(distill_controlnet, tmp_path / "cn", teacher="/nonexistent", timestep_sampling="cosine")


@pytest.fixture(scope="module")
def data_pairs(toy):
    """``make_pairs`` over a 6-image bank with controls from the data (``control_source: data``, Sobel edges):
    ``make(**config)`` returns the pairs, ``row(prompt)`` the bank index a pair's prompt embedding came from."""
    from training.data import Bank
    from training.models import load_controlnet, load_part, load_text_encoder
    from training.stages.onestep import OneStepConfig
    from training.stages.onestep_pairs import make_pairs

    vae, text = load_part(toy.teacher, "vae"), load_text_encoder(toy.teacher, torch.device("cpu"))
    latents = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds = text([f"{k}: a photo of the digit {k}" for k in range(6)])
    bank = Bank({"latents": latents, "embeds": embeds})
    models = (load_part(toy.teacher, "unet"), load_controlnet(str(toy.teacher_controlnet)))
    scheduler, uncond = load_part(toy.teacher, "scheduler"), text([""])

    def make(**config):
        cfg = OneStepConfig(num_pairs=5, ode_steps=2, control_source="data", control_kind="sobel", **config)
        return make_pairs(cfg, bank, *models, scheduler, vae, uncond, "cpu")

    def row(prompt):
        return next(i for i in range(6) if torch.equal(prompt, embeds[i]))

    return SimpleNamespace(make=make, row=row, vae=vae, latents=latents)


def test_stage5_pairs_take_each_control_from_the_prompts_own_image_with_control_source_data(data_pairs):
    from training.control import extract_control
    from training.stages.common import decode_unet_samples

    pairs = data_pairs.make()
    own = extract_control(decode_unet_samples(data_pairs.vae, data_pairs.latents) * 2 - 1, "sobel").half()
    assert pairs["control"].shape == (5, 3, 32, 32) and pairs["target"].shape == (5, 4, 8, 8)
    for control, prompt in zip(pairs["control"], pairs["embeds"]):
        assert torch.equal(control, own[data_pairs.row(prompt)])


def test_onestep_stage_names_an_unknown_control_source_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="control_source 'web'"):
        _run(onestep_controlnet, tmp_path / "cn", teacher="/nonexistent", control_source="web")


def test_stage5_source_targets_are_the_images_the_controls_were_extracted_from(data_pairs):
    """``control_target: source``: each pair's target is the dataset latent its control came from (not an ODE solve
    from the pair's noise), so the target's own edges are the control and the noise cannot predict them."""
    from training.control import extract_control
    from training.stages.common import decode_unet_samples

    source, ode = data_pairs.make(control_target="source"), data_pairs.make(control_target="ode")
    for target, prompt in zip(source["target"], source["embeds"]):
        assert torch.equal(target, data_pairs.latents[data_pairs.row(prompt)])
    again = extract_control(decode_unet_samples(data_pairs.vae, source["target"]) * 2 - 1, "sobel").half()
    assert torch.equal(again, source["control"])
    assert torch.equal(ode["noise"], source["noise"]) and torch.equal(ode["control"], source["control"])
    assert not torch.allclose(ode["target"], source["target"])


def test_onestep_stage_names_an_unknown_control_target_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="control_target 'noise'"):
        _run(onestep_controlnet, tmp_path / "cn", teacher="/nonexistent", control_target="noise")


def test_onestep_stage_names_an_unknown_latent_distance_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="latent_distance 'l1'"):
        _run(onestep, tmp_path / "one", teacher="/nonexistent", latent_distance="l1")


def test_a_shared_pairs_file_made_with_other_settings_stops_the_stage_with_the_differences(tmp_path):
    """Stages share teacher pairs through ``pairs_path``; a file made for another control target (or count, guidance,
    ...) must not be reused silently."""
    from training.stages.onestep import OneStepConfig
    from training.stages.onestep_pairs import check_pair_settings, pair_settings

    path = tmp_path / "pairs.pt"
    made = pair_settings(OneStepConfig(teacher="t", control_target="ode"), controlnet_mode=True)
    check_pair_settings(path, made)  # nothing there yet: fine
    torch.save({"noise": torch.zeros(1)}, path)
    check_pair_settings(path, {"num_pairs": 3})  # a file from before settings were recorded: trusted
    path.with_suffix(".json").write_text(json.dumps(made))
    check_pair_settings(path, made)
    now = pair_settings(OneStepConfig(teacher="t", control_target="source", num_pairs=64), controlnet_mode=True)
    with pytest.raises(ValueError, match="control_target: 'ode' there, 'source' here") as err:
        check_pair_settings(path, now)
    assert "num_pairs: 1024 there, 64 here" in str(err.value) and "own pairs_path" in str(err.value)
    assert "control_target" not in pair_settings(OneStepConfig(), controlnet_mode=False)
    assert pair_settings(OneStepConfig(teacher=tmp_path), controlnet_mode=False)["teacher"] == str(tmp_path)


def test_pairs_come_from_pairs_teacher_when_one_is_given(runs, toy, tmp_path):
    """``pairs_teacher``: the ODE pairs are solved by that UNet (the paper's straightened teacher), the real score
    stays ``teacher``'s; the pairs record names it, so a file from the plain teacher is not reused."""
    from diffusers import UNet2DConditionModel

    from training.stages.onestep import OneStepConfig
    from training.stages.onestep_pairs import pair_settings

    root, _ = runs
    other = tmp_path / "other_teacher"
    unet = UNet2DConditionModel.from_pretrained(toy.teacher / "unet")
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(1.25)
    unet.save_pretrained(other / "unet")
    config = _onestep_config(
        toy,
        root,
        warmup_steps=1,
        max_steps=1,
        checkpoint_every=1,
    )
    _run(onestep, tmp_path / "plain", **config)
    _run(onestep, tmp_path / "same", **config, pairs_teacher=str(toy.teacher))
    _run(onestep, tmp_path / "other", **config, pairs_teacher=str(other))
    pairs = {name: torch.load(tmp_path / name / "cache" / "pairs.pt") for name in ("plain", "same", "other")}
    assert torch.equal(pairs["plain"]["noise"], pairs["other"]["noise"])
    assert torch.equal(pairs["plain"]["target"], pairs["same"]["target"])
    assert not torch.allclose(pairs["plain"]["target"], pairs["other"]["target"])
    assert "pairs_teacher" not in pair_settings(OneStepConfig(teacher="t"), controlnet_mode=False)
    recorded = json.loads((tmp_path / "other" / "cache" / "pairs.json").read_text())
    assert recorded["pairs_teacher"] == str(other)


def test_segment_alpha_is_lowered_during_diff_instruct_when_asked(runs, toy, tmp_path):
    """The paper starts phase (b) with alpha near 1 and lowers it; ``segment_alpha_end`` gives that schedule (alpha
    is logged), independent of the feature-matching weight's own schedule."""
    from training.stages.onestep import OneStepConfig, segment_alpha_at

    root, _ = runs
    config = _onestep_config(
        toy,
        root,
        warmup_steps=1,
        max_steps=4,
        checkpoint_every=4,
        fake_updates=1,
        segment_alpha=1.0,
        segment_alpha_end=0.25,
        fm_weight=2.0,
        fm_weight_end=2.0,
        fm_decay="constant",
    )
    _run(onestep, tmp_path / "run", **config)
    rows = _losses(tmp_path / "run")
    alphas = [r["alpha"] for r in rows if "alpha" in r]
    assert len(alphas) == 3 and alphas == sorted(alphas, reverse=True) and alphas[0] == 1.0 and alphas[-1] < 0.6
    assert {r["fm_weight"] for r in rows if "fm_weight" in r} == {2.0}
    fixed = OneStepConfig(segment_alpha=0.5)
    assert segment_alpha_at(fixed, 0.0) == segment_alpha_at(fixed, 1.0) == 0.5
    with pytest.raises(ValueError, match="segment_alpha_end"):
        onestep.main(["--set", "segment_alpha_end=1.5", "--set", "teacher=/nonexistent"])


def test_the_diffusion_unets_encoder_is_a_feature_network(runs, toy, tmp_path):
    """``feature_net: unet_encoder`` (the paper's third option, offline): the teacher UNet's down and mid features,
    differentiable in the latents, and a warm-up run trains with it."""
    from training.features import feature_network
    from training.models import load_part, load_text_encoder

    unet = load_part(toy.teacher, "unet")
    uncond = load_text_encoder(toy.teacher, torch.device("cpu"))([""])
    net = feature_network("unet_encoder", unet=unet, uncond=uncond)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    features = net(latents)
    assert len(features) == len(unet.down_blocks) + 1 and all(f.shape[0] == 2 for f in features)
    sum(f.square().mean() for f in features).backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in unet.parameters())
    with pytest.raises(ValueError, match="unet_encoder needs"):
        feature_network("unet_encoder")

    root, _ = runs
    config = _onestep_config(
        toy,
        root,
        warmup_steps=2,
        max_steps=2,
        checkpoint_every=2,
        feature_net="unet_encoder",
        feature_distance="mse",
    )
    _run(onestep, tmp_path / "run", **config)
    rows = _losses(tmp_path / "run")
    assert len(rows) == 2 and all(r["fm"] > 0 for r in rows)


def test_dinov2_features_from_a_local_folder_and_a_clear_error_without_weights(toy, tmp_path, monkeypatch):
    """``feature_net: dinov2`` takes DINOv2 from the Hub or a folder (here a small random one in the same format);
    without weights it says what to do."""
    from transformers import Dinov2Config, Dinov2Model

    from training.features import feature_network
    from training.models import load_part

    folder = tmp_path / "dinov2"
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    Dinov2Model(config).save_pretrained(folder)
    net = feature_network("dinov2", vae=load_part(toy.teacher, "vae"), model=str(folder))
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    features = net(latents)
    assert len(features) == 1 and features[0].shape[:2] == (2, 16) and features[0].shape[-1] == features[0].shape[-2]
    features[0].square().mean().backward()
    assert latents.grad.abs().sum() > 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="feature_model to a local folder"):
        feature_network("dinov2", vae=load_part(toy.teacher, "vae"), model="nobody/no-such-dinov2")


def test_a_fraction_of_the_noise_is_reinitialised_when_asked():
    """``fresh_noise_fraction``: the paper re-initialises a portion of the noise; 1 keeps every row fresh without a
    draw, 0 keeps the pairs' noise."""
    from training.draws import StepDraws
    from training.stages.onestep import fresh_noise_rows

    draws = StepDraws(0, 1000)
    rows = torch.arange(1000) % 2 == 0
    assert fresh_noise_rows(draws, rows, 1.0, "cpu").equal(rows) and draws.count == 0
    assert fresh_noise_rows(draws, None, 1.0, "cpu").all() and draws.count == 0
    assert not fresh_noise_rows(draws, rows, 0.0, "cpu").any()
    some = fresh_noise_rows(draws, rows, 0.3, "cpu")
    assert not (some & ~rows).any() and 100 < int(some.sum()) < 200  # about 0.3 of the 500 rows
    with pytest.raises(ValueError, match="fresh_noise_fraction"):
        onestep.main(["--set", "fresh_noise_fraction=2", "--set", "teacher=/nonexistent"])


@pytest.mark.parametrize("controlnet", [False, True])
def test_pairs_solved_in_shards_by_several_ranks_equal_one_process(toy, tmp_path, controlnet):
    """Each rank solves every world-th chunk of 64 pairs but draws every chunk's random numbers, so the merged shards
    are exactly one process's pairs (with a ControlNet, teacher-sample controls draw a second noise per chunk)."""
    from accelerate import Accelerator

    from training.config import DataConfig
    from training.data import load_bank
    from training.models import load_controlnet, load_part, load_text_encoder
    from training.stages.onestep import OneStepConfig
    from training.stages.onestep_pairs import make_pairs, merge_pair_shards

    vae, scheduler = load_part(toy.teacher, "vae"), load_part(toy.teacher, "scheduler")
    unet, text = load_part(toy.teacher, "unet"), load_text_encoder(toy.teacher, torch.device("cpu"))
    uncond = text([""])
    data = DataConfig(**toy.data_cfg())
    bank = load_bank(data, vae, text, Accelerator(cpu=True), tmp_path, keep_pixels=False)
    cn = load_controlnet(str(toy.teacher_controlnet)) if controlnet else None
    cfg = OneStepConfig(
        num_pairs=150, ode_steps=1, control_source="teacher", control_target="ode", control_kind="sobel"
    )
    args = (cfg, bank, unet, cn, scheduler, vae, uncond, "cpu")
    one = make_pairs(*args)
    shards = [make_pairs(*args, rank=r, world=2) for r in range(2)]
    assert [len(s["noise"]) for s in shards] == [64 + 22, 64]
    merged = merge_pair_shards(shards)
    assert merged.keys() == one.keys() and ("control" in one) == controlnet
    assert all(torch.equal(merged[k], one[k]) for k in one)


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


@pytest.mark.parametrize("gan_weight", [0.0, 0.1])
def test_onestep_two_accumulated_micro_batches_take_the_step_of_one_batch_of_two(runs, toy, tmp_path, gan_weight):
    """Both models (student, fake score with fake updates, + the GAN head), EMA: batch 2 = batch 1 x grad_accum 2,
    since each micro-batch draws its rows of the global batch (``training.draws``); batch 1 alone is another run.
    SGD with momentum, so that a difference in gradients shows (Adam's normalised steps turn the float noise of
    near-zero gradients into lr-sized steps)."""
    root, _ = runs
    common = _onestep_config(
        toy, root, warmup_steps=1, max_steps=3, fake_updates=2, gan_weight=gan_weight, ema_decay=0.9,
        pairs_path=str(tmp_path / "pairs.pt"), optimizer="sgd", lr=0.01, fake_lr=0.01,
    )  # fmt: skip
    _run(onestep, tmp_path / "whole", **common, batch_size=2)
    _run(onestep, tmp_path / "parts", **common, batch_size=1, grad_accum=2)
    _run(onestep, tmp_path / "half", **common, batch_size=1)
    final = Path("final") / "unet"
    same, other = (_max_difference(tmp_path / "whole" / final, tmp_path / run / final) for run in ("parts", "half"))
    assert same < 1e-6 and other > 1e-5  # measured: 0.4e-7 to 2.4e-7 and 0.7e-4 to 5e-4


@pytest.mark.parametrize("stage", ["distill_unet", "distill_decoder"])
def test_stages_one_and_two_accumulate_micro_batches_to_the_step_of_the_whole_batch(runs, toy, tmp_path, stage):
    """As for the one-step stage (SGD with momentum); the decoder's discriminator steps on the same micro-batches."""
    root, _ = runs
    if stage == "distill_unet":
        module, name = distill_unet, "unet"
        common = dict(teacher=str(toy.teacher), recipe=RECIPE_DICT, data=toy.data_cfg(), max_steps=2, lr=0.01,
                      denoise_weight=1.0, optimizer="sgd")  # fmt: skip
    else:  # with its discriminator from the first step (a second optimiser over the same micro-batches)
        module, name = distill_decoder, "vae"
        common = dict(
            teacher=str(toy.teacher), data=toy.data_cfg(), max_steps=2, gan_start=0, disc_channels=[8, 16],
            downsample=4, tiny_vae=str(root / "decoder" / "final" / "vae"), optimizer="sgd", lr=0.01,
        )  # fmt: skip
    _run(module, tmp_path / "whole", **common, batch_size=4)
    _run(module, tmp_path / "parts", **common, batch_size=2, grad_accum=2)
    _run(module, tmp_path / "half", **common, batch_size=2)
    final = Path("final") / name
    same, other = (_max_difference(tmp_path / "whole" / final, tmp_path / run / final) for run in ("parts", "half"))
    assert same < 1e-6 and other > 1e-5  # measured: 0.4e-7 to 2.4e-7 and 0.7e-4 to 5e-4


def test_decoder_stage_with_a_projected_gan_trains_heads_over_the_frozen_teacher_encoder(runs, toy, tmp_path):
    """``discriminator: projected`` (paper section 4): heads over the teacher VAE encoder's maps of the pixels; the
    frozen encoder is neither trained nor checkpointed; the GAN term reaches the tiny decoder."""
    from safetensors.torch import load_file

    root, _ = runs
    out = tmp_path / "projected"
    _run(
        distill_decoder, out, teacher=str(toy.teacher), data=toy.data_cfg(), max_steps=2, gan_start=0, downsample=4,
        tiny_vae=str(root / "decoder" / "final" / "vae"), discriminator="projected", disc_hidden=8,
        checkpoint_every=2, gan_weight=1.0,
    )  # fmt: skip
    rows = _losses(out)
    assert all(row["g_loss"] != 0 and "d_loss" in row for row in rows)
    disc = load_file(out / "checkpoints" / "step_0000002" / "model_1.safetensors")
    assert disc and all(k.startswith("heads.") for k in disc)  # only the heads
    with pytest.raises(ValueError, match="discriminator 'style'"):
        _run(distill_decoder, tmp_path / "bad", teacher="/nonexistent", discriminator="style")


def test_decoder_samples_made_in_shards_by_several_ranks_equal_one_process(runs, toy):
    """The teacher's and the one-step model's samples for the decoder's latent pool: each rank makes every world-th
    chunk of 64 (drawing every chunk's random numbers), and the merged chunks are one process's samples."""
    from types import SimpleNamespace

    from training.config import from_dict
    from training.data import Bank
    from training.models import load_text_encoder
    from training.stages.decoder_latents import merge_chunks, onestep_latents, teacher_latents
    from training.stages.distill_decoder import DistillDecoderConfig

    root, _ = runs
    text = load_text_encoder(toy.teacher, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    bank = Bank({"latents": torch.randn(6, 4, 8, 8, generator=g), "embeds": text([str(k) for k in range(6)]),
                 "pixels": torch.rand(6, 3, 32, 32, generator=g) * 2 - 1})  # fmt: skip
    cfg = from_dict(DistillDecoderConfig, dict(
        teacher=str(toy.teacher), teacher_samples=130, sample_steps=2, onestep_samples=130, control_kind="sobel",
        onestep_unet=str(root / "onestep" / "final" / "unet"), onestep_control_share=0.6,
        onestep_controlnet=str(root / "onestep_cn" / "final" / "controlnet"),
    ))  # fmt: skip
    run = SimpleNamespace(device=torch.device("cpu"))
    def teacher(rank, world):
        return teacher_latents(cfg, run, bank, text, rank, world)

    def one_step(rank, world):
        return onestep_latents(cfg, run, bank, rank, world)

    for make in (teacher, one_step):
        one = merge_chunks([make(0, 1)])
        shards = [make(r, 2) for r in range(2)]
        assert [c for c, _ in shards[0]] == [0, 2] and [c for c, _ in shards[1]] == [1]
        assert one.shape == (130, 4, 8, 8) and torch.equal(merge_chunks(shards), one)
