"""Test harness: real uvicorn servers on loopback (in-process threads) around the tiny random-weight model."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: app.py, server/, sdxs/

from app import create_app, uvicorn_options  # noqa: E402
from server.config import ServerConfig  # noqa: E402


class FaultyPipe:
    """Test hook wrapping the real pipeline: a batch with prompt "FAIL" raises, one with "SLOW" takes 0.6 s longer."""

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.calls: list[int] = []  # batch sizes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, requests, output_type: str = "pil"):
        prompts = {r.params.prompt for r in requests}
        if "FAIL" in prompts:
            raise RuntimeError("injected failure")
        if "SLOW" in prompts:
            time.sleep(0.6)
        self.calls.append(len(requests))
        return self.pipe(requests, output_type=output_type)


class RunningServer:
    def __init__(self, config: ServerConfig, wrap: Callable[[Any], Any] | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = create_app(config, wrap)
        self.state = self.app.state.sdxs
        options = {**uvicorn_options(config), "host": "127.0.0.1", "port": self.port, "log_level": "warning"}
        self.server = uvicorn.Server(uvicorn.Config(self.app, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.http = f"http://127.0.0.1:{self.port}"

    def start(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def wait_ready(self, timeout: float = 60) -> RunningServer:
        assert self.state.wait_ready(timeout), self.state.loading
        return self

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.http + path, timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def tiny_config(model_dir, **overrides) -> ServerConfig:
    base = dict(model=str(model_dir), device="cpu", dtype="float32", host="127.0.0.1", port=0, gradio=False,
                max_sessions=8, max_queue=4, max_sessions_per_client=64, max_message_bytes=256 * 1024,
                idle_timeout_s=30, session_time_limit_s=0, log_level="warning")
    return ServerConfig(**{**base, **overrides})


def noise_image(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
