"""SIGTERM on a real `python app.py --model tiny` (issue 14, item 2): every session hears `goodbye server_shutdown`
and close 1001 (docs/protocol.md section 7), and the process exits within 5 s from any state: sessions
mid-inference, queued, in the handshake, a client that reads nothing, a socket that never finished its HTTP upgrade."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from server_harness import flood_params, goodbye, noise_image, non_reading_client
from websockets.exceptions import ConnectionClosed

from server.client import Client, encode_image

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120  # importing torch, diffusers and gradio on a busy 2-core machine
SHUTDOWN = ({"type": "goodbye", "reason": "server_shutdown", "close_code": 1001}, 1001)


@pytest.fixture
def app_process(tmp_path):
    """`python app.py --model tiny` with one slot (so a second session queues); no Gradio, to start faster
    (tests/server/test_gradio_api.py stops a server with Gradio mounted)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDXS_CACHE": str(tmp_path / "cache"),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "app.log"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "app.py", "--model", "tiny", "--host", "127.0.0.1", "--port",
                                 str(port), "--max-sessions", "1", "--gradio", "false", "--log-level", "info"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, port, log)
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"app.py not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


async def _stream(client: Client, streaming: asyncio.Event) -> None:
    """A webcam: new frames, at most two in flight, so inference is running whenever the signal comes; until the
    server closes the connection."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            frame_id = await client.send_frame(encode_image(noise_image(128, client.next_id)))
            if frame_id > 1:
                await client.expect_output(frame_id - 1, timeout=30)
                streaming.set()


@pytest.mark.timeout(60, func_only=True)  # the fixture's start-up (imports) is bounded on its own
def test_sigterm_says_goodbye_to_every_session_and_exits_within_5_s(app_process):
    proc, port, log = app_process
    url = f"ws://127.0.0.1:{port}/ws"

    async def go():
        active = await Client.open(url)
        queued = await Client.open(url)
        assert (active.welcome["state"], queued.welcome["state"]) == ("active", "queued")
        handshake = await Client.open(url, hello=False)
        deaf = await non_reading_client(url)  # queued too, and it reads nothing of the answers to its flood
        await flood_params(deaf, 3000)
        upgrade = socket.create_connection(("127.0.0.1", port))  # a TCP connection that never sends its request
        streaming = asyncio.Event()
        webcam = asyncio.create_task(_stream(active, streaming))
        await asyncio.wait_for(streaming.wait(), 30)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(webcam, 10)
        said = await asyncio.gather(goodbye(active), goodbye(queued), goodbye(handshake))
        while proc.poll() is None and time.monotonic() - start < 10:
            await asyncio.sleep(0.05)
        upgrade.close()
        return said, time.monotonic() - start

    said, exit_s = asyncio.run(go())
    assert proc.poll() is not None and exit_s < 5.0, f"exit took {exit_s:.1f} s:\n{log.read_text()[-3000:]}"
    assert said == [SHUTDOWN] * 3, log.read_text()[-3000:]
