"""Wire protocol constants and binary frame headers (docs/protocol.md is the contract; keep the two in sync).

Pure data and pure functions: importing this module has no side effects, and nothing here touches sockets.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass

PROTOCOL_VERSION = 1
MAGIC = b"SX"


class ClientMessage(enum.StrEnum):
    """`type` of a JSON text message sent by the client."""

    HELLO = "hello"
    PARAMS = "params"
    PING = "ping"
    BYE = "bye"
    CONTROL = "control"


class ServerMessage(enum.StrEnum):
    """`type` of a JSON text message sent by the server."""

    WELCOME = "welcome"
    STATE = "state"
    QUEUE = "queue"
    PARAMS_OK = "params_ok"
    TIME_LEFT = "time_left"
    PONG = "pong"
    ERROR = "error"
    GOODBYE = "goodbye"


class SessionState(enum.StrEnum):
    CONNECTING = "connecting"
    QUEUED = "queued"
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"


# Legal transitions; anything else is a server bug (Session.transition raises).
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.CONNECTING: frozenset({SessionState.QUEUED, SessionState.ACTIVE, SessionState.CLOSING}),
    SessionState.QUEUED: frozenset({SessionState.ACTIVE, SessionState.CLOSING}),
    SessionState.ACTIVE: frozenset({SessionState.CLOSING}),
    SessionState.CLOSING: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


class ImageFormat(enum.IntEnum):
    """Format byte of a binary frame header."""

    NONE = 0
    JPEG = 1
    WEBP = 2
    PNG = 3

    @classmethod
    def from_name(cls, name: str) -> ImageFormat:
        return cls[name.upper()]

    @property
    def pil_name(self) -> str:
        return {ImageFormat.JPEG: "JPEG", ImageFormat.WEBP: "WEBP", ImageFormat.PNG: "PNG"}[self]


class OutputFlag(enum.IntFlag):
    REUSED = 1
    SAFETY_REPLACED = 2
    CONTROL = 4  # the payload is the control image (answer to a `control` message), not a generated frame
    SKIPPED = 8  # the skip filter found the input nearly unchanged: the last generated picture again, no inference
    SETTLING = 16  # a step of a change made over several frames: the same input again gives the next step


FEATURES = ("control",)  # optional protocol features this server supports (welcome.features)


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    TIME_LIMIT = 4000
    IDLE_TIMEOUT = 4001
    HANDSHAKE = 4002
    NO_LIVE_STREAM = 4003


class GoodbyeReason(enum.StrEnum):
    CLIENT = "client"
    TIME_LIMIT = "time_limit"
    IDLE_TIMEOUT = "idle_timeout"
    HANDSHAKE = "handshake"
    POLICY_VIOLATION = "policy_violation"
    SERVER_FULL = "server_full"
    TOO_MANY_SESSIONS = "too_many_sessions"
    MODEL_LOADING = "model_loading"
    SERVER_SHUTDOWN = "server_shutdown"
    INTERNAL_ERROR = "internal_error"
    SLOW_CONSUMER = "slow_consumer"
    NO_LIVE_STREAM = "no_live_stream"


CLOSE_CODE_FOR: dict[GoodbyeReason, CloseCode] = {
    GoodbyeReason.CLIENT: CloseCode.NORMAL,
    GoodbyeReason.TIME_LIMIT: CloseCode.TIME_LIMIT,
    GoodbyeReason.IDLE_TIMEOUT: CloseCode.IDLE_TIMEOUT,
    GoodbyeReason.HANDSHAKE: CloseCode.HANDSHAKE,
    GoodbyeReason.POLICY_VIOLATION: CloseCode.POLICY_VIOLATION,
    GoodbyeReason.SERVER_FULL: CloseCode.TRY_AGAIN_LATER,
    GoodbyeReason.TOO_MANY_SESSIONS: CloseCode.TRY_AGAIN_LATER,
    GoodbyeReason.MODEL_LOADING: CloseCode.TRY_AGAIN_LATER,
    GoodbyeReason.SERVER_SHUTDOWN: CloseCode.GOING_AWAY,
    GoodbyeReason.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
    GoodbyeReason.SLOW_CONSUMER: CloseCode.POLICY_VIOLATION,
    GoodbyeReason.NO_LIVE_STREAM: CloseCode.NO_LIVE_STREAM,
}


class ErrorCode(enum.StrEnum):
    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    BAD_MESSAGE = "bad_message"
    NOT_READY = "not_ready"
    UNSUPPORTED_VERSION = "unsupported_version"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    MESSAGE_TOO_BIG = "message_too_big"
    BAD_FRAME_HEADER = "bad_frame_header"
    BAD_FRAME_ID = "bad_frame_id"
    FLOW_CONTROL = "flow_control"
    NOT_ACTIVE = "not_active"
    BAD_IMAGE = "bad_image"
    IMAGE_TOO_SMALL = "image_too_small"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_REQUIRED = "image_required"
    INVALID_PARAMS = "invalid_params"
    INFERENCE_FAILED = "inference_failed"
    NO_CONTROL = "no_control"
    MODEL_LOADING = "model_loading"
    SERVER_FULL = "server_full"
    TOO_MANY_SESSIONS = "too_many_sessions"
    POLICY_VIOLATION = "policy_violation"
    INTERNAL_ERROR = "internal_error"
    NO_LIVE_STREAM = "no_live_stream"


# Errors that count towards `max_violations` (protocol abuse, as opposed to bad content).
VIOLATIONS: frozenset[ErrorCode] = frozenset({
    ErrorCode.BAD_JSON, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_MESSAGE, ErrorCode.NOT_READY,
    ErrorCode.MESSAGE_TOO_BIG, ErrorCode.BAD_FRAME_HEADER, ErrorCode.BAD_FRAME_ID,
    ErrorCode.FLOW_CONTROL, ErrorCode.NOT_ACTIVE,
})


MAX_ERROR_MESSAGE_CHARS = 300  # an error never echoes more than this (messages quote client input: keep it short)
MAX_FIELD_CHARS = 64  # `field` names a parameter; a client can send a 200 KB key, we echo a prefix


# Errors that end the session: each is followed by a goodbye with this reason and the reason's close code.
FATAL: dict[ErrorCode, GoodbyeReason] = {
    ErrorCode.UNSUPPORTED_VERSION: GoodbyeReason.HANDSHAKE,
    ErrorCode.HANDSHAKE_TIMEOUT: GoodbyeReason.HANDSHAKE,
    ErrorCode.MODEL_LOADING: GoodbyeReason.MODEL_LOADING,
    ErrorCode.SERVER_FULL: GoodbyeReason.SERVER_FULL,
    ErrorCode.TOO_MANY_SESSIONS: GoodbyeReason.TOO_MANY_SESSIONS,
    ErrorCode.POLICY_VIOLATION: GoodbyeReason.POLICY_VIOLATION,
    ErrorCode.INTERNAL_ERROR: GoodbyeReason.INTERNAL_ERROR,
    ErrorCode.NO_LIVE_STREAM: GoodbyeReason.NO_LIVE_STREAM,
}


class ProtocolError(Exception):
    """A client mistake that becomes an `error` message: code, human-readable message, optional frame id / field.

    Message and field are clipped here, the one place every error passes, so no error can echo a large part of
    what the client sent."""

    def __init__(self, code: ErrorCode, message: str, *, frame_id: int | None = None, field: str | None = None):
        message, field = clip(message, MAX_ERROR_MESSAGE_CHARS), None if field is None else clip(field, MAX_FIELD_CHARS)
        super().__init__(f"{code.value}: {message}")
        self.code, self.message, self.frame_id, self.field = code, message, frame_id, field


# --- what a session accepts in each state (section 4) -----------------------------------------------------------

FRAME = "frame"  # a binary message, beside the text message types in the table below
ACCEPT, IGNORE = "accept", "ignore"
_TEXT = tuple(m.value for m in ClientMessage)
_AFTER_HELLO = {m: ACCEPT for m in _TEXT if m != ClientMessage.HELLO}

# state -> inbound kind -> ACCEPT, IGNORE, or the error code it earns.  Checked once, before dispatch (`admit`).
ACCEPTS: dict[SessionState, dict[str, str | ErrorCode]] = {
    SessionState.CONNECTING: {**{kind: ErrorCode.NOT_READY for kind in (*_TEXT, FRAME)}, ClientMessage.HELLO: ACCEPT},
    SessionState.QUEUED: {**_AFTER_HELLO, ClientMessage.HELLO: ErrorCode.BAD_MESSAGE,
                          ClientMessage.CONTROL: IGNORE, FRAME: ErrorCode.NOT_ACTIVE},
    SessionState.ACTIVE: {**_AFTER_HELLO, ClientMessage.HELLO: ErrorCode.BAD_MESSAGE, FRAME: ACCEPT},
    SessionState.CLOSING: {kind: IGNORE for kind in (*_TEXT, FRAME)},
    SessionState.CLOSED: {kind: IGNORE for kind in (*_TEXT, FRAME)},
}


def admit(state: SessionState, kind: str, frame_id: int | None = None) -> bool:
    """Whether a message of `kind` (a ClientMessage value, or FRAME) is dispatched in `state`: True, or False when it
    is ignored; raises ProtocolError (expected ..., got ...) with the code the table gives it."""
    verdict = ACCEPTS[state][kind]
    if verdict == ACCEPT:
        return True
    if verdict == IGNORE:
        return False
    code = ErrorCode(verdict)
    expected = ", ".join(k for k, v in ACCEPTS[state].items() if v == ACCEPT)
    what = "a frame" if kind == FRAME else kind
    why = "hello was already received" if kind == ClientMessage.HELLO else f"the session is {state.value}"
    raise ProtocolError(code, f"{why}: expected {expected}, got {what}", frame_id=frame_id,
                        field="type" if code is ErrorCode.BAD_MESSAGE else None)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def quote(value: object, limit: int = 40) -> str:
    """A short, safe rendering of a client value for an error message: strings are quoted and clipped, other values
    are named by their JSON type (repr of a 4000-digit int or a deep list can be huge, slow, or raise)."""
    if isinstance(value, str):
        return repr(clip(value, limit))
    if value is None or isinstance(value, bool | float) or (isinstance(value, int) and abs(value) < 10**15):
        return json.dumps(value)
    return {int: "a huge number", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


# --- binary frames --------------------------------------------------------------------------------------------

INPUT_HEADER = struct.Struct("<2sBBId")  # magic, version, format, frame_id u32, client_ts f64 ms  -> 16 bytes
OUTPUT_HEADER = struct.Struct("<2sBBIdfffffHBB")  # + queue, decode, inference, encode, server ms; flags, batch, 0
assert INPUT_HEADER.size == 16 and OUTPUT_HEADER.size == 40


@dataclass(frozen=True, slots=True)
class InputFrame:
    """A parsed client frame: `payload` is the still-encoded image (empty for ImageFormat.NONE)."""

    frame_id: int
    client_ts: float
    fmt: ImageFormat
    payload: bytes


@dataclass(frozen=True, slots=True)
class FrameTimings:
    """Server-side timings of one output frame, milliseconds (docs/protocol.md section 3)."""

    queue_ms: float = 0.0
    decode_ms: float = 0.0
    inference_ms: float = 0.0
    encode_ms: float = 0.0
    server_ms: float = 0.0


def pack_input(frame_id: int, client_ts: float, fmt: ImageFormat, payload: bytes) -> bytes:
    return INPUT_HEADER.pack(MAGIC, PROTOCOL_VERSION, int(fmt), frame_id, client_ts) + payload


def unpack_input(message: bytes) -> InputFrame:
    """Parse a client binary message; raises ProtocolError(BAD_FRAME_HEADER) on a malformed header."""
    if len(message) < INPUT_HEADER.size:
        raise ProtocolError(ErrorCode.BAD_FRAME_HEADER,
                            f"binary message of {len(message)} bytes is shorter than the 16-byte header")
    magic, version, fmt, frame_id, client_ts = INPUT_HEADER.unpack_from(message)
    if magic != MAGIC:
        raise ProtocolError(ErrorCode.BAD_FRAME_HEADER, f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.BAD_FRAME_HEADER, f"frame version {version}, expected {PROTOCOL_VERSION}")
    if fmt not in ImageFormat._value2member_map_:
        raise ProtocolError(ErrorCode.BAD_FRAME_HEADER, f"unknown image format byte {fmt}", frame_id=frame_id)
    payload = bytes(message[INPUT_HEADER.size:])
    fmt = ImageFormat(fmt)
    if fmt is ImageFormat.NONE and payload:
        raise ProtocolError(ErrorCode.BAD_FRAME_HEADER, "format 0 (no image) with a non-empty payload",
                            frame_id=frame_id)
    return InputFrame(frame_id, client_ts, fmt, payload)


def pack_output(frame_id: int, client_ts: float, fmt: ImageFormat, payload: bytes, timings: FrameTimings,
                flags: OutputFlag | int = 0, batch_size: int = 0) -> bytes:
    t = timings
    return OUTPUT_HEADER.pack(MAGIC, PROTOCOL_VERSION, int(fmt), frame_id, client_ts, t.queue_ms, t.decode_ms,
                              t.inference_ms, t.encode_ms, t.server_ms, int(flags), min(batch_size, 255), 0) + payload


@dataclass(frozen=True, slots=True)
class OutputFrame:
    frame_id: int
    client_ts: float
    fmt: ImageFormat
    timings: FrameTimings
    flags: OutputFlag
    batch_size: int
    payload: bytes


def unpack_output(message: bytes) -> OutputFrame:
    """Parse a server binary message (used by clients: tests, bench/load.py)."""
    magic, version, fmt, frame_id, client_ts, q, d, i, e, s, flags, batch, _ = OUTPUT_HEADER.unpack_from(message)
    if magic != MAGIC or version != PROTOCOL_VERSION:
        raise ValueError(f"not a version-{PROTOCOL_VERSION} output frame")
    return OutputFrame(frame_id, client_ts, ImageFormat(fmt), FrameTimings(q, d, i, e, s), OutputFlag(flags), batch,
                       bytes(message[OUTPUT_HEADER.size:]))


# --- text messages --------------------------------------------------------------------------------------------

def parse_text(text: str) -> tuple[ClientMessage, dict]:
    """Parse a client text message into (type, object); raises ProtocolError for bad JSON or an unknown type."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, or an int over 4300 digits
        raise ProtocolError(ErrorCode.BAD_JSON, f"text message is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, f"text message must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in ClientMessage._value2member_map_:
        known = ", ".join(m.value for m in ClientMessage)
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {quote(kind)}; expected one of {known}")
    return ClientMessage(kind), obj


def message(kind: ServerMessage, **fields) -> str:
    """Serialise a server text message; `allow_nan=False` so a NaN can never reach a client."""
    return json.dumps({"type": kind.value, **fields}, allow_nan=False, separators=(",", ":"))


def error_message(err: ProtocolError, *, fatal: bool = False) -> str:
    return message(ServerMessage.ERROR, code=err.code.value, message=err.message, fatal=fatal,
                   frame_id=err.frame_id, field=err.field)
