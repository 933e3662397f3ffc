"""Style adapters (PEFT LoRA folders, as the released anime style) chosen per request, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from sdxs import GenerationParams, GenerationRequest, SDXSPipeline
from sdxs.cli import main


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        init_lora_weights=False)
    folder = tmp_path_factory.mktemp("lora") / "style"
    get_peft_model(unet, config).save_pretrained(folder)
    return folder


def test_style_adapters_are_chosen_per_request(tiny_model_dir, lora_dir, pipe):
    styled = SDXSPipeline.from_pretrained(str(tiny_model_dir), adapters={"ink": str(lora_dir)}, device="cpu",
                                          dtype="float32")
    plain_req = GenerationRequest(GenerationParams(prompt="a cat", mode="text", seed=4))
    ink_req = GenerationRequest(GenerationParams(prompt="a cat", mode="text", seed=4, style="ink"))
    plain, ink, plain_again = styled([plain_req, ink_req, plain_req], output_type="np")
    reference = pipe([plain_req], output_type="np")[0]
    assert np.abs(plain.astype(int) - reference).max() <= 1, "no style: the base model's image"
    assert np.array_equal(plain, plain_again)
    assert np.abs(ink.astype(int) - plain).max() > 2, "the style changes the image"
    assert styled.describe()["styles"] == ["ink"]


def test_cli_generate_writes_what_diffusers_gives(tiny_model_dir, tmp_path):
    out = tmp_path / "out.png"
    assert main(["generate", "--prompt", "a lighthouse", "--model", str(tiny_model_dir), "--seed", "11",
                 "--mode", "text", "--dtype", "float32", "--out", str(out)]) == 0
    ref = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    ref.set_progress_bar_config(disable=True)
    expected = ref("a lighthouse", num_inference_steps=1, guidance_scale=0,
                   generator=torch.Generator().manual_seed(11)).images[0]
    with Image.open(out) as written:
        assert np.abs(np.asarray(written).astype(int) - np.asarray(expected).astype(int)).max() <= 1


def test_cli_reports_bad_input_without_a_traceback(tiny_model_dir, tmp_path, capsys):
    code = main(["generate", "--prompt", "x", "--model", str(tiny_model_dir), "--strength", "3",
                 "--out", str(tmp_path / "o.png")])
    assert code == 2 and "strength" in capsys.readouterr().err


def test_cli_info_prints_counts(capsys):
    assert main(["info", "sdxs-512-dreamshaper"]) == 0
    assert "315,746,244" in capsys.readouterr().out


def test_cli_checks_its_arguments_before_loading_the_model(tmp_path, monkeypatch, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(SDXSPipeline, "from_pretrained", no_loading)
    assert main(["generate", "--prompt", "x", "--mode", "image", "--out", str(tmp_path / "o.png")]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--image", str(tmp_path / "missing.png"),
                 "--out", str(tmp_path / "o.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_every_cli_option_has_help_text():
    from sdxs.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"`python -m sdxs {name}` option {action.dest!r} has no help text"


def test_a_style_change_fades_in_over_the_transition_frames(tiny_model_dir, lora_dir):
    """Live video (issue 23): a style change blends from the stream's last picture, then lands on the style's."""
    from sdxs.temporal import TemporalState

    styled = SDXSPipeline.from_pretrained(str(tiny_model_dir), adapters={"ink": str(lora_dir)}, device="cpu",
                                          dtype="float32")
    params = [GenerationParams(prompt="a cat", mode="text", seed=4, transition_frames=3,
                               style=None if t < 2 else "ink") for t in range(5)]
    state = TemporalState()
    out = [styled([GenerationRequest(p, None, state)], output_type="np")[0].astype(int) for p in params]
    ink = styled([GenerationRequest(params[-1])], output_type="np")[0].astype(int)
    distance = [np.abs(o - ink).mean() for o in out]
    assert distance[1] > distance[2] > distance[3] > distance[4] == 0, distance
