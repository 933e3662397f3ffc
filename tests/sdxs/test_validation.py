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
    assert "IDKiro/sdxs-512-dreamshaper" in message and "model=" in message and "tiny" in message


def test_the_default_setup_names_every_repo_it_needs_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as error:
        SDXSPipeline.from_pretrained("IDKiro/sdxs-512-dreamshaper", controlnet="auto",
                                     adapters={"anime": "IDKiro/sdxs-512-dreamshaper-anime"})
    message = str(error.value)
    for repo in ("IDKiro/sdxs-512-dreamshaper", "IDKiro/sdxs-512-dreamshaper-sketch",
                 "IDKiro/sdxs-512-dreamshaper-anime"):
        assert f"hf download {repo}" in message
    assert 'model="mini"' in message and "--model" not in message  # the library speaks of its own arguments


def test_encoded_image_bytes_are_accepted_at_the_library_edge(pipe):
    import io

    from PIL import Image

    picture = np.random.default_rng(3).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(picture).save(png, "PNG")
    params = GenerationParams(mode="image", seed=4)
    from_bytes, from_array = pipe([GenerationRequest(params, png.getvalue()), GenerationRequest(params, picture)],
                                  output_type="np")
    assert np.array_equal(from_bytes, from_array)
    with pytest.raises(InvalidRequest) as error:
        pipe([GenerationRequest(params, b"not an image")])
    assert error.value.field == "image"


def test_missing_local_folder_is_a_clear_error():
    with pytest.raises(ValueError, match="no such folder"):
        SDXSPipeline.from_pretrained("./does/not/exist")
