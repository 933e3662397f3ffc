"""Bad input is converted or refused with an error naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from sdxs import GenerationParams, GenerationRequest, InvalidRequest, SDXSPipeline, WeightsUnavailable
from sdxs.params import MAX_PROMPT_CHARS


@pytest.mark.parametrize(
    "field, value",
    [("prompt", ""), ("prompt", "   "), ("prompt", "x" * (MAX_PROMPT_CHARS + 1)), ("strength", 1.5),
     ("strength", math.nan), ("control_scale", -0.1), ("control_scale", math.inf), ("seed", -1), ("mode", "video"),
     ("seed", "abc"), ("negative_prompt", "blurry"), ("guidance_scale", 7.5)],
)
def test_parameters_refuse_bad_values_naming_the_field(field, value):
    with pytest.raises(ValidationError) as error:
        GenerationParams(**{field: value})
    assert error.value.errors()[0]["loc"][0] == field


def test_parameters_schema_drives_controls():
    schema = GenerationParams.model_json_schema()
    assert schema["properties"]["strength"]["maximum"] == 1.0
    assert "negative_prompt" not in schema["properties"]


def test_wrong_size_images_are_converted(pipe):
    for shape in [(300, 90, 3), (64, 64, 3), (40, 700)]:
        out = pipe([GenerationRequest(GenerationParams(mode="image"), np.full(shape, 128, np.uint8))])[0]
        assert out.size == (pipe.size, pipe.size)


@pytest.mark.parametrize(
    "params, image, field",
    [
        (dict(mode="image"), None, "image"),
        (dict(mode="image"), np.zeros((1, 1, 3), np.uint8), "image"),
        (dict(mode="image"), np.zeros((64, 64, 3), np.float32), "image"),
        (dict(mode="sketch"), "not an image", "image"),
        (dict(style="anime"), np.zeros((64, 64, 3), np.uint8), "style"),
    ],
)
def test_requests_the_pipeline_cannot_run_name_the_field(pipe, params, image, field):
    with pytest.raises(InvalidRequest) as error:
        pipe([GenerationRequest(GenerationParams(**params), image)])
    assert error.value.field == field


def test_control_modes_need_a_controlnet(tiny_model_dir):
    pipe = SDXSPipeline.from_pretrained(str(tiny_model_dir), controlnet=None, device="cpu", dtype="float32")
    with pytest.raises(InvalidRequest, match="ControlNet") as error:
        pipe([GenerationRequest(GenerationParams(mode="sketch"), np.zeros((64, 64, 3), np.uint8))])
    assert error.value.field == "mode"


def test_unreachable_hub_weights_explain_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as error:
        from sdxs.loading import _download

        _download("IDKiro/sdxs-512-dreamshaper")
    message = str(error.value)
    assert "IDKiro/sdxs-512-dreamshaper" in message and "--model" in message and "tiny" in message


def test_missing_local_folder_is_a_clear_error():
    with pytest.raises(ValueError, match="no such folder"):
        SDXSPipeline.from_pretrained("./does/not/exist")
