"""Our one-step pipeline against diffusers' own pipelines with the same weights, seed and settings (fp32, CPU).

Both get the same model input: the frame as our pipeline squares it (``pipe.square``) and the control image it makes
(``pipe.control_image``); how a frame is squared and its control image extracted is pinned in test_frames.py and
test_control.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)

from sdxs import GenerationParams, GenerationRequest, Mode
from sdxs.frames import to_pil


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    ref = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    return ref


def ours(pipe, **params) -> np.ndarray:
    image = params.pop("image", None)
    return pipe([GenerationRequest(GenerationParams(**params), image)], output_type="np")[0].astype(int)


def as_int(image) -> np.ndarray:
    return np.asarray(image).astype(int)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


@pytest.mark.parametrize("prompt, seed", [("a red fox in the snow", 0), ("a castle at dusk, oil painting", 7)])
def test_text_mode_equals_stable_diffusion_pipeline(pipe, reference, prompt, seed):
    expected = reference(prompt, num_inference_steps=1, guidance_scale=0.0, generator=seeded(seed)).images[0]
    got = ours(pipe, prompt=prompt, seed=seed, mode="text")
    assert np.abs(got - as_int(expected)).max() <= 1


@pytest.mark.parametrize("strength, steps", [(0.5, 2), (0.25, 4), (1.0, 1)])
def test_image_mode_equals_img2img_at_the_same_single_timestep(pipe, reference, photo, strength, steps):
    """strength s runs one step at t = 1000 s - 1: diffusers' img2img with round(1/s) trailing steps does the same."""
    img2img = StableDiffusionImg2ImgPipeline(**reference.components)
    img2img.set_progress_bar_config(disable=True)
    square = to_pil(pipe.square([photo])[0])
    expected = img2img("a watercolor landscape", image=square, strength=strength, num_inference_steps=steps,
                       guidance_scale=0.0, generator=seeded(3)).images[0]
    got = ours(pipe, prompt="a watercolor landscape", seed=3, mode="image", strength=strength, image=photo)
    assert np.abs(got - as_int(expected)).max() <= 1


@pytest.mark.parametrize("mode", ["sketch", "edges"])
def test_control_modes_equal_controlnet_pipeline(pipe, reference, tiny_model_dir, photo, sketch, mode):
    controlnet = ControlNetModel.from_pretrained(tiny_model_dir / "controlnet")
    cn_pipe = StableDiffusionControlNetPipeline(**reference.components, controlnet=controlnet)
    cn_pipe.set_progress_bar_config(disable=True)
    source = sketch if mode == "sketch" else photo
    control = pipe.control_image(GenerationRequest(GenerationParams(mode=mode), source))
    expected = cn_pipe("a house by a lake", image=control, num_inference_steps=1, guidance_scale=0.0,
                       controlnet_conditioning_scale=0.6, generator=seeded(5)).images[0]
    got = ours(pipe, prompt="a house by a lake", seed=5, mode=mode, control_scale=0.6, image=source)
    assert np.abs(got - as_int(expected)).max() <= 1


def test_outputs_vary_with_prompt_seed_and_input(pipe, photo, sketch):
    text = ours(pipe, prompt="a cat", seed=1, mode="text")
    assert np.abs(text - ours(pipe, prompt="a dog on a boat", seed=1, mode="text")).max() > 2
    assert np.abs(text - ours(pipe, prompt="a cat", seed=2, mode="text")).max() > 2
    base = ours(pipe, prompt="a cat", seed=1, mode="image", image=photo)
    assert base.std() > 5, "the tiny model must give structured images, not a constant one"
    assert 0.01 < (base > 0).mean() and (base == 255).mean() < 0.2, "not saturated"
    assert np.abs(base - ours(pipe, prompt="a cat", seed=2, mode="image", image=photo)).max() > 2
    assert np.abs(base - ours(pipe, prompt="a cat", seed=1, mode="image", image=sketch)).max() > 2
    edges = ours(pipe, prompt="a cat", seed=1, mode="edges", image=photo)
    assert np.abs(edges - ours(pipe, prompt="a cat", seed=1, mode="edges", image=sketch)).max() > 2


def test_control_image_is_white_strokes_on_black(pipe, sketch):
    control = np.asarray(pipe.control_image(GenerationRequest(GenerationParams(mode=Mode.sketch), sketch)))
    assert control.shape == (pipe.size, pipe.size, 3)
    assert (control == 0).mean() > 0.8 and control.max() == 255
