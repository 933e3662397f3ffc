"""The Gradio UI and API, mounted on the same server (docs/protocol.md section 10).

Contract with server/routes.py (building is cheap and touches no model; the pool is looked up on every call):

    from server.gradio_ui import build_gradio
    blocks = build_gradio(app_state)                 # app_state: server.state.AppState
    app = gr.mount_gradio_app(app, blocks, path="/gradio")

`app_state` (a server.state.AppState) offers `ready`, `loading`, `model_info` (dict or None, with `size`, `modes`,
`is_random`), `engine` and `pool` (None until ready; `await pool.submit_one(params, image, live=None)` with image
uint8 RGB (H, W, 3) or None, returning uint8 RGB (size, size, 3), or None for a frame the skip filter skipped), and
`config`: the webcam stream takes its `max_sessions` as concurrency limit and `session_time_limit_s` as time limit.
Every request goes through the pool's workers, so batching, limits and `/metrics` cover Gradio too.

The webcam tab is a live stream as the page's (docs/protocol.md section 5a): Stability (`steady`), Skip still frames
(on) and Smooth changes start at the schema's live defaults; each viewer's `server.worker.LiveStream` (its history and
skip filter) lives in a `gr.State`, released when Gradio drops the state (the viewer left, or its time ran out).

Named endpoints for `gradio_client` (images come back as file paths):

    from gradio_client import Client, handle_file
    c = Client("http://127.0.0.1:7860/gradio/")
    c.predict("a cat", 0, api_name="/text_to_image")
    c.predict(handle_file("photo.png"), "a cat", 0, 0.5, api_name="/image_to_image")
    c.predict(handle_file("sketch.png"), "a cat", 0, 0.8, api_name="/sketch_to_image")  # dark lines on light
    c.predict({"background": None, "layers": [], "composite": handle_file("sketch.png")}, "a cat", 0, 0.8,
              api_name="/sketchpad_to_image")                                          # the sketchpad's own value

These four are the whole API: each works from gradio_client (tests/server/test_gradio_api.py calls every endpoint the
API info lists). The webcam tab's streaming event is private (`api_visibility="private"`): gradio_client 2.7 cannot
consume streaming events (it fails with KeyError 'process_streaming'), so it is not offered; the tab itself still
streams. Single frames from scripts go to `/image_to_image`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image
from pydantic import ValidationError

from sdxs.errors import InvalidRequest
from sdxs.params import (
    LIVE_STABILITY,
    MODE_INPUTS,
    STABILITY_PRESETS,
    GenerationParams,
    GenerationRequest,
    Mode,
    live_defaults,
)
from server import codec, zerogpu
from server.engine import Engine
from server.worker import InferenceError, LiveStream, NotReady

if TYPE_CHECKING:
    from server.state import AppState

DEFAULT_PROMPT = GenerationParams.model_fields["prompt"].default
STREAM_EVERY_S = 0.2
WEBCAM_MODES = [m for m, kind in MODE_INPUTS.items() if kind in ("photo", "picture")]  # what a webcam can feed
LIVE = live_defaults()  # what the webcam tab starts with: stability and the skip filter on (as the page)


# ---- one request through the shared worker ----------------------------------------------------------------------

def _params(**fields: Any) -> GenerationParams:
    try:
        return GenerationParams(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "parameters"
        raise gr.Error(f"{field}: {first['msg']}") from None


def _model_input(image: np.ndarray | Image.Image | None, size: int) -> np.ndarray | None:
    """Any RGB(A)/L picture -> uint8 RGB (size, size, 3): transparency composited on white paper, then squared as the
    pipeline squares every frame (as the server keeps PNG frames, server/codec.py)."""
    if image is None:
        return None
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    return codec.squared(np.asarray(codec.to_rgb(pil)), size)


def _run_engine(engine: Engine | None, params: GenerationParams, image: np.ndarray | None) -> np.ndarray:
    """One request straight through the engine (ZeroGPU, inside the GPU lent for the call): uint8 RGB (size, size,
    3). Raises NotReady, InvalidRequest, or InferenceError for any other failure."""
    if engine is None:
        raise NotReady("the model is not loaded")
    try:
        return np.asarray(engine([GenerationRequest(params, image)], output_type="np")[0])
    except InvalidRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to this visitor as a failed request
        raise InferenceError(f"{type(exc).__name__}: {exc}") from exc


async def _generate(app_state: AppState, params: GenerationParams, image: Any = None,
                    direct: Callable[[GenerationParams, np.ndarray | None], np.ndarray] | None = None,
                    live: LiveStream | None = None) -> np.ndarray | None:
    """Submit one request to the pool, or with `direct` (ZeroGPU) run it through that function on a thread; turn
    every failure into a message the visitor understands.  `live`: a webcam viewer's stream (history, skip filter);
    None comes back for a frame the skip filter skipped."""
    pool = app_state.pool
    if pool is None or app_state.model_info is None:
        progress = round(100 * float(app_state.loading.get("progress") or 0))
        raise gr.Error(f"The model is still loading ({progress}%). Try again in a moment.")
    size = int(app_state.model_info["size"])
    if params.uses_image and image is None:
        raise gr.Error("This mode needs an input picture.")
    model_input = _model_input(image, size) if params.uses_image else None
    try:
        if direct is not None:
            return await asyncio.to_thread(direct, params, model_input)
        return await pool.submit_one(params, model_input, live)
    except InvalidRequest as err:
        raise gr.Error(f"{err.field}: {err.message}") from None
    except NotReady:
        raise gr.Error("The model is still loading. Try again in a moment.") from None
    except InferenceError as err:
        raise gr.Error(f"The model failed on this request: {err}") from None


def _sketch_composite(value: dict | None) -> Image.Image | None:
    """The sketchpad's flattened picture (or None for an untouched pad)."""
    if not value or value.get("composite") is None:
        return None
    composite = value["composite"]
    return composite if isinstance(composite, Image.Image) else Image.fromarray(np.asarray(composite))


# ---- the UI ----------------------------------------------------------------------------------------------------


def _status(app_state: AppState) -> str:
    if not app_state.ready:
        loading = app_state.loading
        percent = round(100 * float(loading.get("progress") or 0))
        return f"**Loading the model** ({loading.get('stage')}, {percent}%). Reload the page when it is ready."
    info = app_state.model_info or {}
    size, modes = info.get("size"), ", ".join(info.get("modes", []))
    text = f"Model **{info.get('id', '?')}**, {size}x{size}, modes: {modes}."
    if info.get("is_random"):
        text += "  \n⚠️ **Development model with random weights: the pictures are noise on purpose.**"
    return text


def _limits(app_state: AppState) -> tuple[int, int | None, int]:
    """(webcam streams at once, seconds per stream or None, concurrent one-shot requests per endpoint)."""
    config = getattr(app_state, "config", None)
    sessions = int(getattr(config, "max_sessions", 4) or 4)
    time_limit = getattr(config, "session_time_limit_s", 600) or None
    # Handlers only await the worker, so letting several run at once is cheap and lets the worker batch them.
    concurrency = int(getattr(config, "max_batch", 8) or 8)
    return sessions, int(time_limit) if time_limit else None, concurrency


def _webcam_modes(app_state: AppState) -> gr.Radio:
    """The loaded modes a webcam's photos can feed (the schema's `mode` inputs: a photo or any picture)."""
    loaded = (app_state.model_info or {}).get("modes", [Mode.image.value])
    modes = [m.value for m in WEBCAM_MODES if m.value in loaded]
    return gr.Radio(choices=modes or [Mode.image.value], value=Mode.image.value)


def _slider(name: str, step: float) -> gr.Slider:
    """A slider for parameter `name`: the schema's range, title and description, at its live default if it has one."""
    prop = GenerationParams.model_json_schema()["properties"][name]
    return gr.Slider(prop["minimum"], prop["maximum"], prop.get("live_default", prop["default"]), step=step,
                     label=prop["title"], info=prop["description"])


def _release(live: LiveStream | None) -> None:
    """A webcam viewer left (gr.State's delete callback): free its stream's history now."""
    if live is not None:
        live.release()


class _Handlers:
    """The Gradio events' functions, over one app state: every request through the pool (or, on ZeroGPU, straight
    through the engine under `@spaces.GPU`)."""

    def __init__(self, app_state: AppState):
        self.app_state = app_state
        self.zero_gpu = bool(getattr(app_state, "zero_gpu", False))

        @zerogpu.gpu(enabled=self.zero_gpu)
        def on_gpu(params: GenerationParams, image: np.ndarray | None) -> np.ndarray:
            return _run_engine(app_state.engine, params, image)

        self.direct = on_gpu if self.zero_gpu else None

    async def picture(self, params: GenerationParams, image: np.ndarray | None = None) -> np.ndarray:
        out = await _generate(self.app_state, params, image, direct=self.direct)
        assert out is not None  # no live stream, no skip filter: every request is generated
        return out

    async def text_to_image(self, prompt: str, seed: int) -> np.ndarray:
        return await self.picture(_params(prompt=prompt, mode="text", seed=int(seed)))

    async def image_to_image(self, image: np.ndarray, prompt: str, seed: int, strength: float) -> np.ndarray:
        return await self.picture(_params(prompt=prompt, mode="image", seed=int(seed), strength=strength), image)

    async def sketch_to_image(self, sketch: np.ndarray, prompt: str, seed: int, control_scale: float) -> np.ndarray:
        modes = (self.app_state.model_info or {}).get("modes", [])
        mode = "sketch" if "sketch" in modes else "image"  # without a ControlNet: image-to-image on the drawing
        params = _params(prompt=prompt, mode=mode, seed=int(seed), control_scale=control_scale)
        return await self.picture(params, sketch)

    async def sketchpad_to_image(self, pad: dict | None, prompt: str, seed: int, control_scale: float) -> np.ndarray:
        sketch = _sketch_composite(pad)
        if sketch is None:
            raise gr.Error("Draw something first.")
        return await self.sketch_to_image(np.asarray(sketch), prompt, seed, control_scale)

    async def webcam_frame(self, frame: np.ndarray | None, prompt: str, seed: int, strength: float, mode: str,
                           stability: str, skip: bool, smooth: int, live: LiveStream | None):
        """One webcam frame of a viewer's stream; `live` is the viewer's own (gr.State), made on the first frame."""
        if frame is None:
            return gr.skip(), live
        live = live or LiveStream()
        video = {**STABILITY_PRESETS.get(stability, STABILITY_PRESETS["off"]),
                 "skip_threshold": LIVE["skip_threshold"] if skip else 0.0}
        params = _params(prompt=prompt, mode=mode, seed=int(seed), strength=strength, transition_frames=int(smooth),
                         skip_max=LIVE["skip_max"], **video)
        image = await _generate(self.app_state, params, frame, live=live)
        return (gr.skip() if image is None else image), live  # skipped: the picture shown stands


def build_gradio(app_state: AppState) -> gr.Blocks:
    """Build the Blocks app; no model access here (the worker may not exist yet).  On ZeroGPU (server/zerogpu.py)
    the text, sketch and image endpoints run the pipeline under `@spaces.GPU` and the webcam tab explains why there
    is no live stream."""
    h = _Handlers(app_state)
    sessions, time_limit, concurrency = _limits(app_state)
    # Gradio keeps its own uploads and results as files; delete them after a few minutes (docs/hosting.md).
    with gr.Blocks(title="SDXS", delete_cache=(60, 300)) as demo:
        gr.Markdown("# SDXS: one-step image generation\n" + (zerogpu.NO_LIVE_REASON if h.zero_gpu else
                                                                "The real-time page is at [`../`](../)."))
        status = gr.Markdown()
        demo.load(lambda: _status(app_state), None, status, api_visibility="private")
        with gr.Row():
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", max_length=1000, scale=4)
            low, high, default = GenerationParams.field_range("seed")
            seed = gr.Number(default, label="Seed", precision=0, minimum=low, maximum=high, scale=1)
        _text_tab(h, prompt, seed)
        _sketch_tab(h, prompt, seed)
        _image_tab(h, prompt, seed)
        with gr.Tab("Webcam (live)", visible=not h.zero_gpu):
            _webcam_tab(demo, h, prompt, seed, sessions, time_limit)
    demo.queue(default_concurrency_limit=concurrency)
    return demo


def _text_tab(h: _Handlers, prompt: gr.Textbox, seed: gr.Number) -> None:
    with gr.Tab("Text to image"):
        button = gr.Button("Generate", variant="primary")
        out = gr.Image(label="Result", format="png", height=420)
        button.click(h.text_to_image, [prompt, seed], out, api_name="text_to_image")
        prompt.submit(h.text_to_image, [prompt, seed], out, api_visibility="private")


def _sketch_tab(h: _Handlers, prompt: gr.Textbox, seed: gr.Number) -> None:
    with gr.Tab("Sketch to image"):
        with gr.Row():
            pad = gr.Sketchpad(
                label="Sketch: pick the brush on the left, then draw", type="pil", image_mode="RGBA",
                canvas_size=(512, 512),
                brush=gr.Brush(colors=["#000000"], color_mode="fixed", default_size=6),
            )
            out = gr.Image(label="Result", format="png", height=420)
        scale = _slider("control_scale", step=0.05)
        button = gr.Button("Generate", variant="primary")
        button.click(h.sketchpad_to_image, [pad, prompt, seed, scale], out, api_name="sketchpad_to_image")
        pad.change(h.sketchpad_to_image, [pad, prompt, seed, scale], out, api_visibility="private",
                   trigger_mode="always_last", show_progress="hidden")
        plain = gr.Image(visible=False, label="Sketch")
        gr.Button(visible=False).click(h.sketch_to_image, [plain, prompt, seed, scale], out, api_name="sketch_to_image")


def _image_tab(h: _Handlers, prompt: gr.Textbox, seed: gr.Number) -> None:
    with gr.Tab("Image to image"):
        with gr.Row():
            source = gr.Image(label="Input", sources=["upload", "clipboard", "webcam"])
            out = gr.Image(label="Result", format="png", height=420)
        strength = _slider("strength", step=0.02)
        button = gr.Button("Generate", variant="primary")
        button.click(h.image_to_image, [source, prompt, seed, strength], out, api_name="image_to_image")


def _webcam_tab(demo: gr.Blocks, h: _Handlers, prompt: gr.Textbox, seed: gr.Number, sessions: int,
                time_limit: int | None) -> None:
    gr.Markdown(f"Streams a frame every {STREAM_EVERY_S} s; at most {sessions} viewers at once"
                + (f", {time_limit} s each." if time_limit else "."))
    with gr.Row():
        camera = gr.Image(label="Webcam", sources=["webcam"], streaming=True)
        out = gr.Image(label="Result", format="jpeg", streaming=True, height=420)
    with gr.Row():
        strength = _slider("strength", step=0.02)
        mode = gr.Radio([m.value for m in WEBCAM_MODES], value=Mode.image.value, label="Mode")
    with gr.Row():
        stability = gr.Radio(list(STABILITY_PRESETS), value=LIVE_STABILITY, label="Stability",
                             info="How much each picture holds on to the ones before (less flicker)")
        skip = gr.Checkbox(bool(LIVE["skip_threshold"]), label="Skip still frames",
                           info="A frame nearly the same as the last generated one keeps its picture")
        smooth = _slider("transition_frames", step=1)
    live = gr.State(None, time_to_live=time_limit, delete_callback=_release)  # the viewer's own stream
    demo.load(lambda: _webcam_modes(h.app_state), None, mode, api_visibility="private")
    camera.stream(h.webcam_frame, [camera, prompt, seed, strength, mode, stability, skip, smooth, live], [out, live],
                  api_visibility="private", stream_every=STREAM_EVERY_S, time_limit=time_limit,
                  concurrency_limit=sessions)
