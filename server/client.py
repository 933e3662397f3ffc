"""A minimal reference client of docs/protocol.md (websockets >= 13 asyncio API), used by tests and bench/load.py."""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.protocol import PROTOCOL_VERSION, ImageFormat, OutputFrame, pack_input, unpack_output


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """uint8 RGB (H, W, 3) -> PNG/JPEG/WebP bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt.upper(), **({} if fmt == "png" else {"quality": quality}))
    return buffer.getvalue()


def decode_image(payload: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))


@dataclass
class Client:
    """One session. `messages` collects every JSON message, `outputs` every output frame, in arrival order."""

    ws: ClientConnection
    welcome: dict | None = None
    messages: list[dict] = field(default_factory=list)
    outputs: list[OutputFrame] = field(default_factory=list)
    next_id: int = 1

    @classmethod
    async def open(cls, url: str, hello: dict | bool | None = None, **connect_kwargs) -> Client:
        """Connect; then send `hello` (extra fields from `hello`) and await `welcome`, unless `hello is False`."""
        ws = await connect(url, max_size=None, compression=None, **connect_kwargs)
        client = cls(ws)
        if hello is not False:
            extra = hello if isinstance(hello, dict) else {}
            await client.send_json({"type": "hello", "version": PROTOCOL_VERSION, **extra})
            client.welcome = await client.expect("welcome")
        return client

    async def send_json(self, obj: dict) -> None:
        await self.ws.send(json.dumps(obj))

    async def send_frame(self, payload: bytes = b"", fmt: ImageFormat = ImageFormat.PNG, frame_id: int | None = None,
                         ) -> int:
        frame_id = self.next_id if frame_id is None else frame_id
        self.next_id = frame_id + 1
        await self.ws.send(pack_input(frame_id, time.perf_counter() * 1000.0, fmt, payload))
        return frame_id

    async def recv(self, timeout: float = 10.0) -> dict | OutputFrame:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(message, bytes):
            frame = unpack_output(message)
            self.outputs.append(frame)
            return frame
        obj = json.loads(message)
        self.messages.append(obj)
        return obj

    async def expect(self, kind: str, timeout: float = 10.0) -> dict:
        """Receive until a JSON message of type `kind` (other messages are kept in `messages`/`outputs`)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(message, dict) and message["type"] == kind:
                return message

    async def expect_output(self, frame_id: int | None = None, timeout: float = 10.0) -> OutputFrame:
        """Receive until an output frame answering `frame_id` or a later frame (returned at once if one already
        arrived); with `frame_id=None`, the next output frame."""
        if frame_id is not None and self.outputs and self.outputs[-1].frame_id >= frame_id:
            return self.outputs[-1]
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(message, OutputFrame) and (frame_id is None or message.frame_id >= frame_id):
                return message

    def errors(self, code: str | None = None) -> list[dict]:
        return [m for m in self.messages if m["type"] == "error" and (code is None or m["code"] == code)]

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Drain until the server closes; return the close code."""
        try:
            while True:
                await self.recv(timeout)
        except ConnectionClosed:
            return self.ws.close_code
        except TimeoutError:
            return None

    async def close(self) -> None:
        await self.ws.close()
