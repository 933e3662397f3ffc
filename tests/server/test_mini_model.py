"""The shipped miniature model (`--model mini`) through the real server: pictures a classifier can check.

Random weights cannot tell a right picture from a wrong one; the miniature (models/sdxs-mini, trained by
training/mini) draws digits, so these tests catch channel order, value range, latent scale and decoder mix-ups
anywhere between a client's bytes and the client's bytes.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from digit_strokes import render
from safetensors.torch import load_file
from server_harness import RunningServer, reference, tiny_config

from sdxs.loading import MINI_DIR, model_notes
from server.client import Client, decode_image, encode_image
from server.protocol import ImageFormat
from training.mini import data as mdata
from training.mini.metrics import DigitClassifier, edge_f1

SEEDS = range(10)


@pytest.fixture(scope="module")
def mini_server():
    server = RunningServer(tiny_config("mini", max_batch=16)).start().wait_ready(120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    model = DigitClassifier()
    model.load_state_dict(load_file(str(MINI_DIR / "digit_classifier.safetensors")))
    return model.eval()


def classify(classifier: DigitClassifier, images: list[np.ndarray]) -> np.ndarray:
    """Digit classes of uint8 RGB pictures (N x (S, S, 3))."""
    unit = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return classifier(unit)[1].argmax(1).numpy()


async def frames(url: str, jobs: list[tuple[dict, bytes | None]]) -> list[np.ndarray]:
    """One session: for each (params, PNG bytes or None) set the parameters, send the frame, decode the answer."""
    client = await Client.open(url, {"output_format": "png"})
    out = []
    for params, payload in jobs:
        await client.send_json({"type": "params", "params": params})
        await client.expect("params_ok")
        fmt = ImageFormat.NONE if payload is None else ImageFormat.PNG
        frame_id = await client.send_frame(payload or b"", fmt)
        out.append(decode_image((await client.expect_output(frame_id, timeout=30)).payload))
    await client.close()
    return out


def test_the_page_is_told_what_the_miniature_is(mini_server):
    model = mini_server.get("/config.json").json()["model"]
    assert model["id"] == "mini" and model["size"] == 32 and not model["is_random"]
    assert "Miniature" in model["notice"] and model["modes"] == ["text", "image", "sketch", "edges"]
    assert model["example_prompts"][7] == mdata.PROMPT.format(7)
    assert model["sketch"] == model_notes(MINI_DIR)["sketch"] and model["sketch"]["pen_width"] > 0
    assert model["display"] == {"upscale": "pixelated"}


def test_text_prompts_draw_their_digit(mini_server, classifier):
    jobs = [({"prompt": mdata.PROMPT.format(k), "mode": "text", "seed": s}, None) for k in range(10) for s in SEEDS]
    pictures = asyncio.run(frames(mini_server.url, jobs))
    predicted = classify(classifier, pictures).reshape(10, len(SEEDS))
    right = (predicted == np.arange(10)[:, None]).sum(1)
    assert (right >= 8).all(), f"right out of {len(SEEDS)} per digit 0-9: {right.tolist()}"


def test_a_sketched_digit_comes_back_as_that_digit(mini_server, classifier):
    """Drawn as the page draws it: the model's default pen, and its sketch prompt (one that names no digit) and
    control scale where its notes give them; a model without them (the shipped one, trained before the stroke
    controls) takes each digit's own prompt, as its example prompts say, and the schema's scale."""
    notes = model_notes(MINI_DIR)["sketch"]
    jobs = [({"prompt": notes.get("prompt", mdata.PROMPT.format(k)), "mode": "sketch", "seed": k,
              "control_scale": notes.get("control_scale", 0.8)},
             encode_image(render(k, width=notes["pen_width"]))) for k in range(10)]
    predicted = classify(classifier, asyncio.run(frames(mini_server.url, jobs)))
    assert (predicted == np.arange(10)).sum() >= 8, f"sketched 0-9 came back as {predicted.tolist()}"


def test_edges_mode_keeps_a_digit_photos_edges(mini_server):
    digits = mdata.digits(32, split_seed=0)
    photos = ((digits.test[:40] + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    labels = digits.test_labels[:40].tolist()
    prompts = [{"prompt": mdata.PROMPT.format(k), "seed": i} for i, k in enumerate(labels)]
    jobs = [({**p, "mode": "edges"}, encode_image(photo)) for p, photo in zip(prompts, photos)]
    jobs += [({**p, "mode": "text"}, None) for p in prompts]
    pictures = asyncio.run(frames(mini_server.url, jobs))
    unit = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255.0
    control = torch.from_numpy(np.stack([np.asarray(mini_server.state.engine.control_image(
        _request("edges", photo))) for photo in photos])).permute(0, 3, 1, 2).float() / 255.0
    with_control, without = edge_f1(unit[:40], control), edge_f1(unit[40:], control)
    assert with_control >= 1.5 * without and with_control > 0.35, (with_control, without)


def test_server_frames_equal_the_pipelines(mini_server):
    from sdxs import GenerationParams, GenerationRequest

    sketch = render(4, size=32)  # at the served size: no resize, whose filter differs (PIL's vs the pipeline's)
    cases = [({"prompt": mdata.PROMPT.format(4), "mode": mode, "seed": 3}, None if mode == "text" else sketch)
             for mode in ("text", "image", "sketch", "edges")]
    served = asyncio.run(frames(mini_server.url, [(p, None if im is None else encode_image(im)) for p, im in cases]))
    for (params, image), got in zip(cases, served):  # the session sends one frame at a time: batches of one
        want = reference(mini_server, [GenerationRequest(GenerationParams(**params), image)])[0]
        assert np.array_equal(got, want), params["mode"]


def _request(mode: str, image: np.ndarray):
    from sdxs import GenerationParams, GenerationRequest

    return GenerationRequest(GenerationParams(mode=mode), image)
