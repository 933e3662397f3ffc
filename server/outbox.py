"""A bounded per-connection send queue: ordered text messages, one slot for the newest output frame, one for a
control-image frame, and a close.

Lives on the event loop (not thread-safe; threads hand items over with `loop.call_soon_threadsafe`). If the client
stops reading, at most `max_control` text messages and ONE output frame wait here; more control messages than that
mark the outbox overflowed and the connection is closed as a slow consumer.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from server.protocol import FrameTimings, ImageFormat, OutputFlag


@dataclass(frozen=True, slots=True)
class OutgoingFrame:
    """An encoded output waiting for the socket; the header is packed at send time (for `server_ms`)."""

    frame_id: int
    client_ts: float
    received_at: float  # perf_counter at input receipt
    fmt: ImageFormat
    payload: bytes
    timings: FrameTimings  # server_ms is filled in at send time
    flags: OutputFlag
    batch_size: int


@dataclass(frozen=True, slots=True)
class Close:
    code: int


class Outbox:
    def __init__(self, max_control: int = 64):
        self.max_control = max_control
        self._control: collections.deque[str] = collections.deque()
        self._frame: OutgoingFrame | None = None
        self._aux: OutgoingFrame | None = None  # a control-image frame: its own slot, never displaces an output
        self._close: Close | None = None
        self._ready = asyncio.Event()
        self.overflowed = False
        self.frames_replaced = 0

    def put_text(self, text: str) -> bool:
        """Queue a control message; False (and `overflowed`) when the client is not reading."""
        if self._close is not None:
            return True
        if len(self._control) >= self.max_control:
            self.overflowed = True
            return False
        self._control.append(text)
        self._ready.set()
        return True

    def put_frame(self, frame: OutgoingFrame) -> None:
        """Queue an output frame, replacing an unsent older one (newest wins on the way out too)."""
        if self._close is not None:
            return
        if self._frame is not None:
            self.frames_replaced += 1
        if self._frame is None or self._frame.frame_id <= frame.frame_id:
            self._frame = frame
        self._ready.set()

    def put_aux(self, frame: OutgoingFrame) -> None:
        """Queue a control-image frame (newest wins in its own one-frame slot)."""
        if self._close is None:
            self._aux = frame
            self._ready.set()

    def put_close(self, code: int) -> None:
        """Everything already queued as text is sent first, then the close; frames not yet sent are dropped."""
        if self._close is None:
            self._close = Close(code)
            self._frame = self._aux = None
            self._ready.set()

    async def get(self) -> str | OutgoingFrame | Close:
        while True:
            if self._control:
                return self._control.popleft()
            if self._close is not None:
                return self._close
            if self._frame is not None:
                frame, self._frame = self._frame, None
                return frame
            if self._aux is not None:
                frame, self._aux = self._aux, None
                return frame
            self._ready.clear()
            await self._ready.wait()
