"""Test harness: real uvicorn servers on loopback (in-process threads) around the tiny random-weight model."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: app.py, server/, sdxs/

from websockets.asyncio.client import connect  # noqa: E402

from server.client import Client  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.routes import create_app, make_server, uvicorn_options  # noqa: E402


class FaultyPipe:
    """Test hook wrapping the real engine (server.engine.Engine, by delegation): a batch with prompt "FAIL" raises,
    one with "SLOW" takes 0.6 s longer (in `run`, the model phase the worker calls, and in a whole call); with
    `broken` set every batch raises (a persistent device fault)."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.calls: list[int] = []  # batch sizes
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def _faults(self, params) -> None:
        prompts = {p.prompt for p in params}
        if self.broken:
            raise RuntimeError("injected device fault")
        if "FAIL" in prompts:
            raise RuntimeError("injected failure")
        if "SLOW" in prompts:
            time.sleep(0.6)
        self.calls.append(len(params))

    def run(self, staged):
        self._faults(staged.params)
        return self.engine.run(staged)

    def __call__(self, requests, output_type: str = "pil"):
        self._faults([r.params for r in requests])
        return self.engine(requests, output_type=output_type)


class RunningServer:
    def __init__(self, config: ServerConfig, wrap: Callable[[Any], Any] | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = create_app(config, wrap)
        self.state = self.app.state.sdxs
        options = {**uvicorn_options(config), "host": "127.0.0.1", "port": self.port, "log_level": "warning"}
        self.server = make_server(self.app, **options)
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
        # the loader and worker threads too: one still inside torch when pytest exits aborts the process
        assert self.state.join(60), "the model loader or the worker thread did not end"


def reference(server: RunningServer, requests: list) -> list[np.ndarray]:
    """`server`'s pipeline called directly, with the torch thread count its model thread runs with (convolution sums
    round by how they are split across threads): what the server must send, exactly."""
    import torch

    from server.loading import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads(server.state.config))
    try:
        return server.state.engine(requests, output_type="np")
    finally:
        torch.set_num_threads(before)


def tiny_config(model_dir, **overrides) -> ServerConfig:
    base = dict(model=str(model_dir), device="cpu", dtype="float32", host="127.0.0.1", port=0, gradio=False,
                max_sessions=8, max_queue=4, max_sessions_per_client=64, max_message_bytes=256 * 1024,
                idle_timeout_s=30, session_time_limit_s=0, log_level="warning")
    return ServerConfig(**{**base, **overrides})


def closed_because(caplog, clients: list[Client] | None = None) -> list[str]:
    """Why each session ended, in order, as its last log line says: "session 1a2b3c4d closed: WHY (violations=N)"
    (capture with caplog.at_level(logging.INFO, logger="sdxs")); only those of `clients` (welcomed ones) if given:
    a session of an earlier test may end while this one runs."""
    ids = None if clients is None else {c.welcome["session_id"][:8] for c in clients}
    lines = (r.getMessage() for r in caplog.records if r.name == "sdxs.session")
    matches = (re.fullmatch(r"session (\w+) closed: (.*) \(violations=\d+\)", line) for line in lines)
    return [m.group(2) for m in matches if m and (ids is None or m.group(1) in ids)]


def noise_image(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# --- hostile clients ----------------------------------------------------------------------------------------------

async def goodbye(client: Client, timeout: float = 10.0) -> tuple[dict | None, int | None]:
    """Read until the server closes: (its last goodbye message or None, the close code or None on timeout)."""
    code = await client.closed(timeout)
    byes = [m for m in client.messages if m["type"] == "goodbye"]
    return (byes[-1] if byes else None), code


async def non_reading_client(url: str, hello: bool = True) -> Client:
    """A client that stops reading: its websockets library pauses after one queued message, and its socket has a
    tiny receive window, so what it does not read soon blocks the server's writes."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    client = Client(await connect(url, sock=sock, max_queue=1, max_size=None, compression=None))
    if hello:
        await client.send_json({"type": "hello", "version": 1})
        client.welcome = await client.expect("welcome")
    return client


async def flood_params(client: Client, count: int, on_every_50=None) -> None:
    """`count` params messages of about 1 KB, each answered by a params_ok of about 1.2 KB."""
    for i in range(count):
        await client.send_json({"type": "params", "params": {"prompt": "p" * 900, "seed": i}})
        if on_every_50 is not None and i % 50 == 0:
            on_every_50()
            await asyncio.sleep(0)
