"""A bounded per-connection send queue: ordered text messages, one slot for the newest output frame, one for a
control-image frame, and a close; and the judge of slow consumers.

Lives on the event loop (not thread-safe; threads hand items over with `loop.call_soon_threadsafe`). The connection's
send loop takes one item at a time and writes it; a write only waits when the transport's buffer is full, i.e. when
the client has left more than the transport's high-water mark (64 KiB) unread. So items pile up here only while the
client is not reading, never because a burst of answers was produced faster than one loop turn: a prompt reader
is never judged slow, however many pings it sends. A client is slow when one send has waited `STALL_S`, or when more
than `MAX_BACKLOG_BYTES` of text waits behind a blocked send (the memory bound); frames never pile up (newest wins).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass

from server.protocol import FrameTimings, ImageFormat, OutputFlag

STALL_S = 5.0  # a send blocked this long: the client has read nothing for seconds
MAX_BACKLOG_BYTES = 1 << 20  # text waiting behind a blocked send (a flooder that does not read its answers)


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
    def __init__(self, stall_s: float | None = None, max_backlog_bytes: int | None = None):
        self.stall_s = STALL_S if stall_s is None else stall_s
        self.max_backlog_bytes = MAX_BACKLOG_BYTES if max_backlog_bytes is None else max_backlog_bytes
        self._text: collections.deque[str] = collections.deque()
        self.backlog_bytes = 0  # characters of the queued text messages (their UTF-8 size, near enough)
        self._frame: OutgoingFrame | None = None
        self._aux: OutgoingFrame | None = None  # a control-image frame: its own slot, never displaces an output
        self._close: Close | None = None
        self._gone = False
        self._sending_since: float | None = None  # monotonic time the item being written was taken
        self._ready = asyncio.Event()
        self.frames_replaced = 0

    # --- producers ----------------------------------------------------------------------------------------------
    def put_text(self, text: str) -> None:
        """Queue a text message (in order); ignored once a close is queued."""
        if self._close is None and not self._gone:
            self._text.append(text)
            self.backlog_bytes += len(text)
            self._ready.set()

    def drop_text(self) -> None:
        """Forget the queued text messages (a slow consumer will never read them; its goodbye goes first)."""
        self._text.clear()
        self.backlog_bytes = 0

    def put_frame(self, frame: OutgoingFrame) -> None:
        """Queue an output frame, replacing an unsent older one (newest wins on the way out too)."""
        if self._close is not None or self._gone:
            return
        if self._frame is not None:
            self.frames_replaced += 1
        if self._frame is None or self._frame.frame_id <= frame.frame_id:
            self._frame = frame
        self._ready.set()

    def put_aux(self, frame: OutgoingFrame) -> None:
        """Queue a control-image frame (newest wins in its own one-frame slot)."""
        if self._close is None and not self._gone:
            self._aux = frame
            self._ready.set()

    def put_close(self, code: int) -> None:
        """Everything already queued as text is sent first, then the close; frames not yet sent are dropped."""
        if self._close is None:
            self._close = Close(code)
            self._frame = self._aux = None
            self._ready.set()

    def abandon(self) -> None:
        """The client is gone: drop everything; `get` returns None from now on."""
        self._gone = True
        self.drop_text()
        self._frame = self._aux = None
        self._ready.set()

    # --- the send loop ----------------------------------------------------------------------------------------
    async def get(self) -> str | OutgoingFrame | Close | None:
        """The next item to write (None: the client is gone). Call `sent()` once it is written."""
        while True:
            item = self._take()
            if item is not None or self._gone:
                self._sending_since = None if item is None else time.monotonic()
                return item
            self._ready.clear()
            await self._ready.wait()

    def sent(self) -> None:
        self._sending_since = None

    def _take(self) -> str | OutgoingFrame | Close | None:
        if self._gone:
            return None
        if self._text:
            text = self._text.popleft()
            self.backlog_bytes -= len(text)
            return text
        if self._close is not None:
            return self._close
        if self._frame is not None:
            frame, self._frame = self._frame, None
            return frame
        if self._aux is not None:
            frame, self._aux = self._aux, None
            return frame
        return None

    # --- judging the client -------------------------------------------------------------------------------------
    def slow(self, now: float | None = None) -> bool:
        """True when the client has left what it was sent unread: a send blocked for `stall_s`, or more than
        `max_backlog_bytes` of text waiting behind one."""
        if self.backlog_bytes > self.max_backlog_bytes:
            return True
        started = self._sending_since
        return started is not None and (now or time.monotonic()) - started > self.stall_s
