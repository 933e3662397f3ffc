"""ZeroGPU (issue 18, item 3): with the `spaces` package present and ZeroGPU detected, the Gradio request/response
endpoints run under `@spaces.GPU`, the live stream is refused with a reason, and elsewhere the decorator is a no-op.
The `spaces` package is faked (a module in sys.modules); no real package is needed."""

from __future__ import annotations

import asyncio
import functools
import importlib.machinery
import sys
import types

import numpy as np
import pytest
from server_harness import RunningServer, noise_image, tiny_config

from sdxs import GenerationRequest
from sdxs.params import GenerationParams
from server import zerogpu
from server.client import Client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fake_spaces(monkeypatch):
    """A `spaces` module whose GPU(duration) decorator records (function name, duration) at every call."""
    calls = []
    module = types.ModuleType("spaces")
    module.__spec__ = importlib.machinery.ModuleSpec("spaces", None)

    def gpu(duration: int = 60):
        def decorate(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                calls.append((fn.__name__, duration))
                return fn(*args, **kwargs)

            return wrapper

        return decorate

    module.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", module)
    return calls


def test_zerogpu_needs_the_package_and_the_variable(fake_spaces, monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not zerogpu.detect()
    assert zerogpu.detect({"SPACES_ZERO_GPU": "true"}) and zerogpu.detect({"SPACES_ZERO_GPU": "1"})
    assert not zerogpu.detect({"SPACES_ZERO_GPU": "false"})
    monkeypatch.setitem(sys.modules, "spaces", None)  # not importable
    assert not zerogpu.detect({"SPACES_ZERO_GPU": "true"})


def test_elsewhere_the_decorator_changes_nothing(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def work():
        return 1

    assert zerogpu.gpu()(work) is work and zerogpu.gpu(enabled=False)(work) is work


def _endpoint(blocks, api_name: str):
    return next(f.fn for f in blocks.fns.values() if f.api_name == api_name)


def test_on_zerogpu_gradio_runs_under_spaces_gpu_and_the_live_stream_is_refused(
    fake_spaces, monkeypatch, tiny_model_dir
):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    server = RunningServer(tiny_config(tiny_model_dir)).start().wait_ready()
    try:
        assert server.state.zero_gpu
        live = server.get("/config.json").json()["live"]
        assert live["available"] is False and "dedicated GPU" in live["reason"]

        async def connect():
            client = await Client.open(server.url, hello=False)
            return client.messages, await client.closed(timeout=5)

        messages, code = asyncio.run(connect())
        assert messages[0]["code"] == "no_live_stream" and messages[0]["fatal"] is True
        assert messages[-1] == {"type": "goodbye", "reason": "no_live_stream", "close_code": 4003} and code == 4003

        from server.gradio_ui import build_gradio

        blocks = build_gradio(server.state)
        image = noise_image(128, 3)
        text = asyncio.run(_endpoint(blocks, "text_to_image")("a red house", 5))
        photo = asyncio.run(_endpoint(blocks, "image_to_image")(image, "a red house", 5, 0.5))
        asyncio.run(_endpoint(blocks, "sketch_to_image")(image, "a red house", 5, 0.8))
        assert fake_spaces == [("on_gpu", zerogpu.GPU_DURATION_S)] * 3
        pipe = server.state.engine
        expected = pipe(
            [
                GenerationRequest(GenerationParams(prompt="a red house", mode="text", seed=5), None),
                GenerationRequest(GenerationParams(prompt="a red house", mode="image", seed=5, strength=0.5), image),
            ],
            output_type="np",
        )
        np.testing.assert_array_equal(text, expected[0])
        np.testing.assert_allclose(photo.astype(int), expected[1].astype(int), atol=2)
        assert "sdxs_batch_size_count 0.0" in server.get("/metrics").text  # nothing went through the worker
    finally:
        server.stop()


def test_without_zerogpu_gradio_goes_through_the_worker(fake_spaces, monkeypatch, tiny_model_dir):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    server = RunningServer(tiny_config(tiny_model_dir)).start().wait_ready()
    try:
        assert server.get("/config.json").json()["live"] == {"available": True, "reason": None}
        from server.gradio_ui import build_gradio

        out = asyncio.run(_endpoint(build_gradio(server.state), "text_to_image")("a cat", 1))
        assert out.shape == (128, 128, 3) and fake_spaces == []
        assert "sdxs_batch_size_count 1.0" in server.get("/metrics").text
    finally:
        server.stop()
