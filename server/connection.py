"""One WebSocket session on the event loop: handshake, message dispatch, the send loop, timers, admission callbacks.

The frames themselves travel through `server.stream.FrameStream` (decode, mailbox, worker, encode). A connection
never touches another session's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from sdxs.errors import InvalidRequest
from sdxs.params import GenerationParams
from server.outbox import Close, Outbox, OutgoingFrame
from server.protocol import (
    CLOSE_CODE_FOR,
    FEATURES,
    PROTOCOL_VERSION,
    VIOLATIONS,
    ClientMessage,
    ErrorCode,
    FrameTimings,
    GoodbyeReason,
    ImageFormat,
    OutputFlag,
    ProtocolError,
    ServerMessage,
    SessionState,
    error_message,
    message,
    pack_output,
    parse_text,
    unpack_input,
)
from server.session import Session
from server.stream import FrameStream
from server.worker import make_request

if TYPE_CHECKING:
    from server.state import AppState

log = logging.getLogger("sdxs.session")

_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)  # stands for "an image will come" when checking parameters
SEND_TIMEOUT_S = 15.0  # a client that accepts no data for this long is gone
TICK_S = 0.2


class Connection:
    def __init__(self, ws: WebSocket, app: AppState):
        self.ws, self.app, self.config = ws, app, app.config
        self.client = ws.client.host if ws.client else "unknown"
        self.loop = asyncio.get_running_loop()
        self.session = Session(self.client, GenerationParams(), self.config.max_in_flight,
                               self.config.max_violations)
        self.outbox = Outbox()
        self.stream = FrameStream(self.session, app, self.loop, self._deliver, self.send_error, self._internal_error)
        self._last_time_left = 0.0
        self._control_busy = False
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.ws.accept()
        self.app.connections.add(self)
        sender = asyncio.create_task(self._send_loop(), name=f"send-{self.session.id[:8]}")
        receiver = asyncio.create_task(self._receive_loop(), name=f"recv-{self.session.id[:8]}")
        ticker = asyncio.create_task(self._tick_loop(), name=f"tick-{self.session.id[:8]}")
        try:
            self._admit_connection()
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done() and not sender.done():  # the client left: nothing more to send
                sender.cancel()
        finally:
            for task in (sender, receiver, ticker, *self._tasks):
                task.cancel()
            await asyncio.gather(sender, receiver, ticker, *self._tasks, return_exceptions=True)
            self._cleanup()
            for task in (receiver, sender):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("session %s failed", self.session.id[:8], exc_info=task.exception())

    def _admit_connection(self) -> None:
        if not self.app.ready:
            self._fatal(ProtocolError(ErrorCode.MODEL_LOADING, "the model is still loading; poll readyz and "
                                      "reconnect"), GoodbyeReason.MODEL_LOADING)
            return
        try:
            self.app.admission.connect(self)
        except ProtocolError as err:
            self._fatal(err, GoodbyeReason.TOO_MANY_SESSIONS)

    def _cleanup(self) -> None:
        if self.session.open:
            self.session.transition(SessionState.CLOSING)
        self.session.transition(SessionState.CLOSED)
        self._release()
        self.app.connections.discard(self)
        log.info("session %s closed (violations=%d)", self.session.id[:8], self.session.violations)

    def _release(self) -> None:
        """Leave the worker and admission (idempotent); drop the pending frame."""
        self.session.mailbox.clear()
        if self.app.worker is not None:
            self.app.worker.unregister(self.stream)
        self.app.admission.leave(self)

    def close(self, reason: GoodbyeReason) -> None:
        """Say goodbye and close with the reason's code (idempotent)."""
        if not self.session.open:
            return
        self.session.transition(SessionState.CLOSING)
        self._release()  # the slot frees now, not after the close handshake: a queued session moves up at once
        code = CLOSE_CODE_FOR[reason]
        self.outbox.put_text(message(ServerMessage.GOODBYE, reason=reason.value, close_code=int(code)))
        self.outbox.put_close(int(code))

    def _fatal(self, err: ProtocolError, reason: GoodbyeReason) -> None:
        self.send_error(err, fatal=True)
        self.close(reason)

    def _internal_error(self, message_text: str) -> None:
        self._fatal(ProtocolError(ErrorCode.INTERNAL_ERROR, message_text), GoodbyeReason.INTERNAL_ERROR)

    # --- sending ------------------------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, Close):
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the client may already be gone
                    await asyncio.wait_for(self.ws.close(item.code), SEND_TIMEOUT_S)
                return
            send = self.ws.send_text(item) if isinstance(item, str) else self._send_frame(item)
            try:
                await asyncio.wait_for(send, SEND_TIMEOUT_S)
            except TimeoutError:
                log.info("session %s: client stopped reading for %.0f s", self.session.id[:8], SEND_TIMEOUT_S)
                return
            if self.outbox.overflowed:
                self.outbox.overflowed = False
                self.close(GoodbyeReason.SLOW_CONSUMER)

    async def _send_frame(self, item: OutgoingFrame) -> None:
        server_s = time.perf_counter() - item.received_at
        t = item.timings
        timings = FrameTimings(t.queue_ms, t.decode_ms, t.inference_ms, t.encode_ms, server_s * 1000.0)
        await self.ws.send_bytes(pack_output(item.frame_id, item.client_ts, item.fmt, item.payload, timings,
                                             item.flags, item.batch_size))
        if not item.flags & OutputFlag.CONTROL:
            self.app.metrics.frame_sent(server_s, "reused" if item.flags & OutputFlag.REUSED else "generated")

    def send(self, text: str) -> None:
        if not self.outbox.put_text(text):
            log.info("session %s: control queue overflow", self.session.id[:8])

    def send_error(self, err: ProtocolError, fatal: bool = False) -> None:
        self.app.metrics.errors.labels(err.code.value).inc()
        if err.frame_id is not None:
            self.session.acknowledge(err.frame_id)
            self.app.metrics.frames.labels("error").inc()
        self.send(error_message(err, fatal=fatal))
        if err.code in VIOLATIONS and self.session.violation() and self.session.open:
            self._fatal(ProtocolError(ErrorCode.POLICY_VIOLATION, f"more than {self.config.max_violations} "
                                      "protocol violations"), GoodbyeReason.POLICY_VIOLATION)

    # --- receiving ----------------------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if not self.session.open:
                continue  # closing: ignore whatever the client still sends
            self.session.touch()
            data = msg.get("bytes") if msg.get("bytes") is not None else msg.get("text")
            if data is None:
                continue
            if len(data) > self.config.max_message_bytes:
                self.send_error(ProtocolError(ErrorCode.MESSAGE_TOO_BIG, f"message of {len(data)} bytes; at most "
                                              f"{self.config.max_message_bytes}"))
                continue
            try:
                if isinstance(data, bytes):
                    self._on_binary(data, time.perf_counter())
                else:
                    self._on_text(data)
            except ProtocolError as err:
                self.send_error(err)

    def _on_text(self, text: str) -> None:
        kind, obj = parse_text(text)
        if self.session.state is SessionState.CONNECTING and kind is not ClientMessage.HELLO:
            raise ProtocolError(ErrorCode.NOT_READY, f"expected hello first, got {kind.value}")
        handler = {ClientMessage.HELLO: self._on_hello, ClientMessage.PARAMS: self._on_params,
                   ClientMessage.PING: self._on_ping, ClientMessage.BYE: self._on_bye,
                   ClientMessage.CONTROL: self._on_control}[kind]
        handler(obj)

    def _on_hello(self, obj: dict) -> None:
        if self.session.state is not SessionState.CONNECTING:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "hello was already received", field="type")
        if obj.get("version") != PROTOCOL_VERSION:
            self._fatal(ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {obj.get('version')!r} "
                                      f"is not supported; this server speaks {PROTOCOL_VERSION}", field="version"),
                        GoodbyeReason.HANDSHAKE)
            return
        fmt = obj.get("output_format", self.config.output_format)
        if fmt not in ("jpeg", "webp", "png"):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "output_format must be jpeg, webp or png",
                                field="output_format")
        self.stream.output_format = ImageFormat.from_name(fmt)
        log.info("session %s: hello from %r", self.session.id[:8], str(obj.get("client", ""))[:64])
        if obj.get("params") is not None:
            try:
                self._apply_params(obj["params"], reply=False)
            except ProtocolError as err:
                self.send_error(err)  # defaults stay in force; the welcome says which
        try:
            state = self.app.admission.join(self)
        except ProtocolError as err:
            self._fatal(err, GoodbyeReason.SERVER_FULL)
            return
        self.session.transition(state)
        self._welcome()
        if state is SessionState.ACTIVE:
            self._on_activated()
        else:
            self.app.admission.announce_positions()

    def _welcome(self) -> None:
        model = self.app.model_info
        self.send(message(
            ServerMessage.WELCOME, version=PROTOCOL_VERSION, session_id=self.session.id,
            state=self.session.state.value, params=self.session.params.model_dump(mode="json"),
            schema=GenerationParams.model_json_schema(), limits=self.config.limits(model["size"]), model=model,
            output={"format": self.stream.output_format.name.lower(), "quality": self.config.output_quality},
            features=list(FEATURES),
        ))
        log.info("session %s %s (address %s)", self.session.id[:8], self.session.state.value, self.client)

    def _on_params(self, obj: dict) -> None:
        self._apply_params(obj.get("params"), reply=True)

    def _apply_params(self, update: object, reply: bool) -> None:
        if not isinstance(update, dict):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "params must be a JSON object", field="params")
        merged = {**self.session.params.model_dump(), **update}
        try:
            params = GenerationParams.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "params"
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{field}: {first['msg']}", field=field) from None
        try:  # the pipeline's own check: mode loaded (ControlNet), style loaded
            self.app.pipe.check(make_request(params, _PLACEHOLDER if params.uses_image else None))
        except InvalidRequest as exc:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, exc.message, field=exc.field) from None
        self.session.params = params
        if reply:
            self.send(message(ServerMessage.PARAMS_OK, params=params.model_dump(mode="json")))

    def _on_ping(self, obj: dict) -> None:
        t = obj.get("t")
        self.send(message(ServerMessage.PONG, t=t if isinstance(t, int | float) and math.isfinite(t) else None,
                          server_time_ms=time.time() * 1000.0))

    def _on_bye(self, obj: dict) -> None:
        self.close(GoodbyeReason.CLIENT)

    def _on_control(self, obj: dict) -> None:
        """Send the control image of the latest input under the current parameters (flag CONTROL)."""
        if self.session.state is not SessionState.ACTIVE or self._control_busy:
            return  # queued: ignored; one request at a time
        self._control_busy = True
        self._spawn(self._send_control())

    async def _send_control(self) -> None:
        try:
            frame = await self.stream.control_frame()
        except ProtocolError as err:
            self.send_error(err)
            return
        except Exception as exc:  # noqa: BLE001 - logged and reported to this client; the session goes on
            log.exception("session %s: control image failed", self.session.id[:8])
            self.send_error(ProtocolError(ErrorCode.NO_CONTROL, f"control image failed: {type(exc).__name__}"))
            return
        finally:
            self._control_busy = False
        if self.session.state is SessionState.ACTIVE:
            self.outbox.put_aux(frame)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- frames -------------------------------------------------------------------------------------------------
    def _on_binary(self, data: bytes, received_at: float) -> None:
        if self.session.state is SessionState.CONNECTING:
            raise ProtocolError(ErrorCode.NOT_READY, "a frame before hello")
        frame = unpack_input(data)
        if self.session.state is SessionState.QUEUED:
            raise ProtocolError(ErrorCode.NOT_ACTIVE, "frame dropped: the session is queued", frame_id=frame.frame_id)
        warning = self.session.admit_frame(frame.frame_id)
        if warning is not None:
            self.send_error(warning)
        if frame.fmt is ImageFormat.NONE and self.session.params.uses_image:
            raise ProtocolError(ErrorCode.IMAGE_REQUIRED, f"mode {self.session.params.mode.value!r} needs an input "
                                "image; send JPEG, WebP or PNG bytes", frame_id=frame.frame_id)
        self._spawn(self.stream.prepare(frame, received_at))

    def _deliver(self, out: OutgoingFrame) -> None:
        if self.session.state is not SessionState.ACTIVE:
            return
        self.session.acknowledge(out.frame_id)
        self.outbox.put_frame(out)

    # --- admission callbacks and timers (event loop) -------------------------------------------------------------
    def activate(self) -> None:
        if self.session.state is not SessionState.QUEUED:
            return
        self.session.transition(SessionState.ACTIVE)
        self.send(message(ServerMessage.STATE, state="active",
                          time_left_s=self.session.time_left(self.config.session_time_limit_s)))
        self._on_activated()

    def _on_activated(self) -> None:
        self.session.touch()
        self.app.worker.register(self.stream)
        self._send_time_left()

    def set_queue_position(self, position: int, queue_length: int) -> None:
        if self.session.state is SessionState.QUEUED:
            self.send(message(ServerMessage.QUEUE, position=position, queue_length=queue_length))

    def _send_time_left(self) -> None:
        left = self.session.time_left(self.config.session_time_limit_s)
        if left is not None:
            self._last_time_left = time.monotonic()
            self.send(message(ServerMessage.TIME_LEFT, time_left_s=round(left, 1)))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._tick()

    def _tick(self) -> None:
        s, c, now = self.session, self.config, time.monotonic()
        if s.state is SessionState.CONNECTING and now - s.created_at > c.handshake_timeout_s:
            self._fatal(ProtocolError(ErrorCode.HANDSHAKE_TIMEOUT, f"no hello within {c.handshake_timeout_s} s"),
                        GoodbyeReason.HANDSHAKE)
        if s.state is not SessionState.ACTIVE:
            return
        left = s.time_left(c.session_time_limit_s)
        if left is not None and left <= 0:
            self.close(GoodbyeReason.TIME_LIMIT)
        elif c.idle_timeout_s and now - s.last_activity > c.idle_timeout_s:
            self.close(GoodbyeReason.IDLE_TIMEOUT)
        elif left is not None and now - self._last_time_left >= (
                min(1.0, c.time_left_every_s) if left <= 10 else c.time_left_every_s):
            self._send_time_left()
