"""Per-session state: the state machine, flow-control accounting, the one-slot mailbox and the reuse cache.

No I/O here. A Session is touched by its connection's event-loop task and by the worker thread; the fields the worker
reads (`params`, the mailbox, the reuse cache) are either replaced atomically or guarded by a lock. Nothing is shared
between sessions.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.codec import Encoded

from sdxs.params import GenerationParams
from server.protocol import (
    TRANSITIONS,
    ErrorCode,
    ImageFormat,
    ProtocolError,
    SessionState,
)


@dataclass(frozen=True, slots=True)
class PendingFrame:
    """An input frame waiting for the worker. `image`: the frame still encoded (server.codec.Encoded, header checked;
    the worker decodes it), or None (format 0)."""

    frame_id: int
    client_ts: float
    received_at: float  # time.perf_counter() when the message arrived
    image: Encoded | None
    digest: bytes  # hash of (format, encoded bytes): equal digests mean an unchanged input
    decode_ms: float  # the header check on the loop side


@dataclass(frozen=True, slots=True)
class CachedOutput:
    """The last output sent, kept to answer an unchanged input without inference."""

    digest: bytes
    params: GenerationParams
    fmt: ImageFormat
    payload: bytes
    received_at: float = 0.0  # its input frame's receipt time (the skip filter's reference names it so)


class Mailbox:
    """One slot; the newest frame (highest id) wins. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: PendingFrame | None = None

    def put(self, frame: PendingFrame) -> PendingFrame | None:
        """Store `frame` unless a newer one is there; return the frame that lost (or None)."""
        with self._lock:
            old = self._frame
            if old is not None and old.frame_id > frame.frame_id:
                return frame
            self._frame = frame
            return old

    def put_back(self, frame: PendingFrame) -> bool:
        """Return a taken frame to an empty slot (the scheduler could not fit it in a batch); False if a newer
        frame arrived meanwhile."""
        with self._lock:
            if self._frame is None:
                self._frame = frame
                return True
            return False

    def take(self) -> PendingFrame | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame

    def clear(self) -> None:
        self.take()

    @property
    def pending(self) -> bool:
        return self._frame is not None


class Session:
    """State of one WebSocket session (docs/protocol.md sections 4 and 5)."""

    def __init__(self, client: str, params: GenerationParams, max_in_flight: int, max_violations: int):
        self.id = secrets.token_hex(16)
        self.client = client
        self.state = SessionState.CONNECTING
        self.params = params  # replaced whole (GenerationParams is frozen), read by the worker thread
        self.max_in_flight = max_in_flight
        self.max_violations = max_violations
        self.violations = 0
        self.mailbox = Mailbox()
        self.last_served = 0.0  # monotonic time of the last batch that included this session (fairness)
        self.created_at = time.monotonic()
        self.activated_at: float | None = None
        self.last_activity = self.created_at
        self._last_frame_id = -1
        self._unanswered: collections.deque[int] = collections.deque()
        self._cache_lock = threading.Lock()
        self._cache: CachedOutput | None = None
        self._last_input: tuple[bytes, Encoded | None] | None = None

    # --- state machine -----------------------------------------------------------------------------------------
    def transition(self, new: SessionState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"session {self.id}: illegal transition, expected one of "
                               f"{sorted(s.value for s in TRANSITIONS[self.state])}, got {new.value}")
        self.state = new
        if new is SessionState.ACTIVE:
            self.activated_at = time.monotonic()

    def finish(self) -> None:
        """-> CLOSED from any state (through CLOSING): the connection is over, whichever way it ended."""
        if self.open:
            self.transition(SessionState.CLOSING)
        if self.state is SessionState.CLOSING:
            self.transition(SessionState.CLOSED)

    @property
    def open(self) -> bool:
        return self.state in (SessionState.CONNECTING, SessionState.QUEUED, SessionState.ACTIVE)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def time_left(self, limit_s: float) -> float | None:
        if limit_s <= 0 or self.activated_at is None:
            return None
        return max(0.0, limit_s - (time.monotonic() - self.activated_at))

    # --- flow control -----------------------------------------------------------------------------------------
    def admit_frame(self, frame_id: int) -> ProtocolError | None:
        """Account for an arriving frame. Raises BAD_FRAME_ID (the frame is dropped). Returns a FLOW_CONTROL error
        (to send; the frame is still accepted: newest wins) when the client exceeded `max_in_flight`."""
        if frame_id <= self._last_frame_id:
            raise ProtocolError(ErrorCode.BAD_FRAME_ID, f"frame id {frame_id} is not greater than the previous "
                                f"{self._last_frame_id}", frame_id=frame_id)
        self._last_frame_id = frame_id
        self._unanswered.append(frame_id)
        if len(self._unanswered) > self.max_in_flight:
            return ProtocolError(ErrorCode.FLOW_CONTROL, f"{len(self._unanswered)} frames unanswered; at most "
                                 f"{self.max_in_flight} may be in flight (newer frames replace older ones)")
        return None

    @property
    def last_frame_id(self) -> int:
        return self._last_frame_id

    def acknowledge(self, frame_id: int) -> None:
        """An answer for `frame_id` is being sent: it and every earlier frame are no longer in flight."""
        while self._unanswered and self._unanswered[0] <= frame_id:
            self._unanswered.popleft()

    @property
    def in_flight(self) -> int:
        return len(self._unanswered)

    def violation(self) -> bool:
        """Count a protocol violation; True when the session must now be closed (1008)."""
        self.violations += 1
        return self.violations > self.max_violations

    # --- unchanged-input reuse --------------------------------------------------------------------------------
    def known_input(self, digest: bytes) -> tuple[bool, Encoded | None]:
        """(True, image) when `digest` equals the last decoded input: decoding can be skipped."""
        last = self._last_input
        if last is not None and last[0] == digest:
            return True, last[1]
        return False, None

    def remember_input(self, digest: bytes, image: Encoded | None) -> None:
        self._last_input = (digest, image)

    def reusable(self, frame: PendingFrame, params: GenerationParams) -> CachedOutput | None:
        with self._cache_lock:
            cache = self._cache
        if cache is not None and cache.digest == frame.digest and cache.params == params:
            return cache
        return None

    def cached_output(self) -> CachedOutput | None:
        with self._cache_lock:
            return self._cache

    def remember_output(self, output: CachedOutput) -> None:
        with self._cache_lock:
            self._cache = output
