"""The Gradio API (issue 14, item 13): every endpoint the API info lists ("Use via API") answers from gradio_client,
and nothing that cannot is listed. A server with Gradio mounted still stops promptly."""

from __future__ import annotations

import logging
import os
import time

import pytest
from PIL import Image, ImageDraw
from server_harness import RunningServer, tiny_config

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio_client would phone home from a thread
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    server = RunningServer(tiny_config(tiny_model_dir, gradio=True)).start().wait_ready()
    yield server
    server.stop()


@pytest.fixture
def client(server, tmp_path):
    from gradio_client import Client

    client = Client(server.http + "/gradio/", verbose=False, download_files=str(tmp_path))
    yield client
    client.close()


@pytest.fixture
def sketch(tmp_path) -> str:
    image = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(image).line([(20, 20), (280, 180)], fill="black", width=6)
    image.save(tmp_path / "sketch.png")
    return str(tmp_path / "sketch.png")


def _calls(sketch: str) -> dict[str, tuple]:
    """How to call each endpoint the API offers (arguments in the API info's order)."""
    from gradio_client import handle_file

    return {
        "/text_to_image": ("a cat", 1),
        "/image_to_image": (handle_file(sketch), "a cat", 2, 0.5),
        "/sketch_to_image": (handle_file(sketch), "a cat", 3, 0.8),
        "/sketchpad_to_image": ({"background": None, "layers": [], "composite": handle_file(sketch)}, "a cat", 4, 0.8),
    }


def test_every_listed_endpoint_answers_through_gradio_client(server, client, sketch):
    info = client.view_api(return_format="dict", print_info=False)
    calls = _calls(sketch)
    assert set(info["named_endpoints"]) == set(calls), "an endpoint is listed without a test calling it (or gone)"
    assert info["unnamed_endpoints"] == {}
    before = _inferences(server)
    for api_name, args in calls.items():
        path = client.predict(*args, api_name=api_name)
        with Image.open(path) as image:
            assert image.size == (128, 128), api_name
    assert _inferences(server) >= before + len(calls), "Gradio requests bypassed the shared worker"


def test_the_streaming_webcam_event_is_not_offered(client):
    """gradio_client cannot consume it (KeyError 'process_streaming'), so it must not be listed, nor callable."""
    assert "/webcam_frame" not in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    with pytest.raises(ValueError, match="webcam_frame"):
        client.predict(None, "a cat", 0, 0.5, "image", api_name="/webcam_frame")


def test_an_invalid_request_is_a_clear_error(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="prompt"):
        client.predict("", 1, api_name="/text_to_image")


def test_a_server_with_gradio_stops_promptly(tiny_model_dir, tmp_path, sketch, caplog):
    from gradio_client import Client

    server = RunningServer(tiny_config(tiny_model_dir, gradio=True)).start().wait_ready()
    client = Client(server.http + "/gradio/", verbose=False, download_files=str(tmp_path))
    client.predict(*_calls(sketch)["/text_to_image"], api_name="/text_to_image")
    uvicorn_log = logging.getLogger("uvicorn.error")  # it does not propagate to the root logger caplog watches
    uvicorn_log.addHandler(caplog.handler)
    start = time.monotonic()
    try:
        with caplog.at_level(logging.INFO):
            server.stop()
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    stopped_s = time.monotonic() - start
    client.close()
    assert not server.thread.is_alive() and stopped_s < 5.0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def _inferences(server: RunningServer) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith("sdxs_inference_seconds_count"):
            return float(line.split()[-1])
    return 0.0


def test_the_webcam_tab_streams_with_the_pages_live_defaults_and_frees_a_viewer(server):
    """The webcam handler (private: its event streams) through the same worker: stability steady and the skip filter
    on by default; a still camera's frames after the history settles are skipped (the picture shown stands), and a
    viewer's history is freed when Gradio drops its state."""
    import asyncio

    import gradio as gr
    import numpy as np

    from server.gradio_ui import _release, build_gradio

    demo = build_gradio(server.state)
    webcam = next(f for f in demo.fns.values() if f.name == "webcam_frame")
    defaults = {c.label: c.value for c in demo.blocks.values() if getattr(c, "label", None) in (
        "Stability", "Skip still frames")}
    assert defaults == {"Stability": "steady", "Skip still frames": True}
    rng = np.random.default_rng(0)
    scene = np.tile(np.linspace(0, 255, 256, dtype=np.float32), (256, 1))[..., None].repeat(3, 2)

    async def stream(frames: int):
        live, shown = None, []
        for _ in range(frames):
            frame = np.clip(scene + rng.normal(0, 3, scene.shape), 0, 255).astype(np.uint8)
            image, live = await webcam.fn(frame, "a cat", 0, 0.5, "image", "steady", True, 8, live)
            shown.append(image)
        return live, shown

    live, shown = asyncio.run(stream(9))
    skipped = [isinstance(image, type(gr.skip())) for image in shown]
    assert skipped == [False] * 7 + [True] * 2, skipped  # 6 still frames settle feedback 0.5, then skips
    assert live.temporal.nbytes > 0
    _release(live)
    assert live.temporal.closed and live.temporal.nbytes == 0
