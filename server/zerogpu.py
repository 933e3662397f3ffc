"""ZeroGPU Spaces: a GPU is attached only for the length of a call decorated with `@spaces.GPU`.

That suits the Gradio request/response endpoints (text, sketch and image to image: server/gradio_ui.py runs them
under `gpu(...)`) and not a live stream, whose worker thread would need the GPU all the time: on ZeroGPU the real-time
page is told so (`live` in /config.json, docs/protocol.md section 1) and offers the Gradio tabs instead.

ZeroGPU is detected when the `spaces` package is importable and `SPACES_ZERO_GPU` is set to true (Hugging Face sets
it on ZeroGPU hardware; the `spaces` package reads the same variable). Everywhere else `gpu(...)` is a no-op and
importing this module imports nothing heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

F = TypeVar("F", bound=Callable)

GPU_DURATION_S = 20  # one request on a ZeroGPU slice (a one-step model needs well under a second; the first call
# also moves the weights to the GPU). Short durations queue ahead of long ones.
NO_LIVE_REASON = (
    "This Space runs on ZeroGPU, which lends a GPU per request: a live stream needs dedicated GPU "
    "hardware. Use the Gradio tabs (text, sketch and image to image) instead."
)


def detect(env: Mapping[str, str] | None = None) -> bool:
    """True on a ZeroGPU Space: `spaces` importable and SPACES_ZERO_GPU true."""
    env = os.environ if env is None else env
    if env.get("SPACES_ZERO_GPU", "").strip().lower() not in ("1", "true", "yes"):
        return False
    try:
        return importlib.util.find_spec("spaces") is not None
    except (ImportError, ValueError):  # a broken or half-installed package: not ZeroGPU
        return False


def import_spaces() -> None:
    """Import `spaces` now: on ZeroGPU it must come before anything initialises CUDA (the model load does)."""
    importlib.import_module("spaces")


def gpu(duration: int = GPU_DURATION_S, enabled: bool | None = None) -> Callable[[F], F]:
    """`@spaces.GPU(duration=duration)` on ZeroGPU (`enabled`: default `detect()`), else a decorator that changes
    nothing."""
    if not (detect() if enabled is None else enabled):
        return lambda fn: fn
    spaces = importlib.import_module("spaces")
    return spaces.GPU(duration=duration)
