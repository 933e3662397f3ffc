"""One WebSocket session on the event loop: handshake, message dispatch, the send loop, timers, admission callbacks.

The frames themselves travel through `server.stream.FrameStream` (decode, mailbox, worker, encode). A connection
never touches another session's state.

Failure containment, one mechanism: every way into a connection (its tasks, the tasks it spawns, callbacks from the
worker and codec threads, admission's callbacks) goes through `_run_guarded` or `@_contained`. An exception there is a
server bug: it is logged with its traceback and ends this session, and only this one, with `internal_error`, a
goodbye and close 1011. Whatever happens, `run` releases the slot, the queue place and the worker registration in
its `finally` before it awaits anything, so no path can keep them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from sdxs.errors import InvalidRequest
from sdxs.params import GenerationParams, GenerationRequest
from server.messages import Bye, Control, Hello, Params, Ping, parse_params, validate
from server.outbox import Close, Outbox, OutgoingFrame
from server.protocol import (
    CLOSE_CODE_FOR,
    FATAL,
    FEATURES,
    FRAME,
    PROTOCOL_VERSION,
    VIOLATIONS,
    ClientMessage,
    CloseCode,
    ErrorCode,
    FrameTimings,
    GoodbyeReason,
    ImageFormat,
    OutputFlag,
    ProtocolError,
    ServerMessage,
    SessionState,
    admit,
    error_message,
    message,
    pack_output,
    parse_text,
    unpack_input,
)
from server.session import Session
from server.stream import FrameStream

if TYPE_CHECKING:
    from server.state import AppState

log = logging.getLogger("sdxs.session")

_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)  # stands for "an image will come" when checking parameters
SEND_TIMEOUT_S = 15.0  # a client that accepts no data for this long is gone: drop it without a goodbye
STOP_TIMEOUT_S = 2.0  # the session's tasks get this long to finish once cancelled (they hold nothing by then)
TICK_S = 0.2


def frame_result(flags: OutputFlag) -> str:
    """The `sdxs_frames_total` result of an output frame: only inference counts as generated."""
    if flags & OutputFlag.REUSED:
        return "reused"
    return "skipped" if flags & OutputFlag.SKIPPED else "generated"


def _contained(method: Callable) -> Callable:
    """For methods called from outside this session's own tasks: an exception ends this session (1011) instead of
    escaping into the caller (another session's admission, the event loop's callback runner)."""

    @functools.wraps(method)
    def call(self: Connection, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception:  # noqa: BLE001 - a server bug: logged with its traceback by _crash, the session ends
            self._crash(method.__name__)
            return None

    return call


class Connection:
    def __init__(self, ws: WebSocket, app: AppState):
        self.ws, self.app, self.config = ws, app, app.config
        self.client = ws.client.host if ws.client else "unknown"
        self.loop = asyncio.get_running_loop()
        self.session = Session(self.client, GenerationParams(), self.config.max_in_flight,
                               self.config.max_violations)
        self.sid = self.session.id[:8]  # for logs
        self.outbox = Outbox()
        self.stream = FrameStream(self.session, app, self.loop, self._deliver, self._report, self._fail,
                                  self._moved)
        self._last_time_left = 0.0
        self._control_busy = False
        self._tasks: set[asyncio.Task] = set()
        self._ended = False
        self._why: str | None = None  # why the session ended, for the log: the first cause recorded wins
        self._handlers: dict[ClientMessage, Callable] = {
            ClientMessage.HELLO: self._on_hello, ClientMessage.PARAMS: self._on_params,
            ClientMessage.PING: self._on_ping, ClientMessage.BYE: self._on_bye, ClientMessage.CONTROL: self._on_control,
        }

    # --- lifecycle --------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """The whole life of the connection; returns once the close is written, the client is gone, or it read
        nothing for SEND_TIMEOUT_S."""
        await self.ws.accept()
        self.app.connections.add(self)
        sender = self._spawn(self._send_loop(), "sending")
        self._spawn(self._receive_loop(), "receiving")
        self._spawn(self._tick_loop(), "timers")
        try:
            self._admit_connection()
            await sender
        finally:
            self._end()  # first: nothing awaited below can keep the slot
            await self._stop_tasks()

    @_contained
    def _admit_connection(self) -> None:
        if self.app.stopping:
            self.close(GoodbyeReason.SERVER_SHUTDOWN)
        elif not self.app.live["available"]:
            self._fatal(ProtocolError(ErrorCode.NO_LIVE_STREAM, self.app.live["reason"]))
        elif not self.app.ready:
            self._fatal(ProtocolError(ErrorCode.MODEL_LOADING, "the model is still loading; poll readyz and "
                                      "reconnect"))
        else:
            try:
                self.app.admission.connect(self)
            except ProtocolError as err:
                self._fatal(err)

    def _end(self) -> None:
        """The connection is over, whichever way: release everything the session held (idempotent)."""
        if self._ended:
            return
        self._ended = True
        self.outbox.abandon()
        try:
            self.session.finish()
        finally:
            self._release()
            self.app.connections.discard(self)
            log.info("session %s closed: %s (violations=%d)", self.sid, self._why or "the connection ended",
                     self.session.violations)

    def _because(self, why: str) -> None:
        """Record why the session ends (a goodbye reason, or what happened to the socket); the first cause wins."""
        if self._why is None:
            self._why = why

    def _release(self) -> None:
        """Leave the worker and admission (idempotent); drop the pending frame."""
        self.session.mailbox.clear()
        pool = self.app.pool
        if pool is not None:
            pool.unregister(self.stream)
        self.stream.release()
        self.app.admission.leave(self)

    def _spawn(self, coro: Coroutine, what: str) -> asyncio.Task:
        task = asyncio.create_task(self._run_guarded(coro, what), name=f"{what}-{self.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_guarded(self, coro: Coroutine, what: str) -> None:
        try:
            await coro
        except Exception:  # noqa: BLE001 - a server bug: logged with its traceback by _crash, the session ends
            self._crash(what)

    async def _stop_tasks(self) -> None:
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            if stuck:  # they hold nothing any more (released above); say so, do not wait for them
                log.error("session %s: %s did not stop when cancelled", self.sid, sorted(t.get_name() for t in stuck))

    def _crash(self, what: str) -> None:
        """A server bug in this session (called from an `except`): log it, end the session with 1011."""
        log.exception("session %s: %s failed", self.sid, what)
        try:
            self._fatal(ProtocolError(ErrorCode.INTERNAL_ERROR, "the server failed on this session (a bug, "
                                      "logged); please reconnect"))
        except Exception:  # noqa: BLE001 - even the goodbye failed: logged; close without it
            log.exception("session %s: could not say goodbye", self.sid)
            self.outbox.put_close(int(CloseCode.INTERNAL_ERROR))

    def close(self, reason: GoodbyeReason) -> None:
        """Say goodbye and close with the reason's code (idempotent)."""
        if not self.session.open:
            return
        self.session.transition(SessionState.CLOSING)
        self._because(f"goodbye {reason.value}, close {int(CLOSE_CODE_FOR[reason])}")
        self._release()  # the slot frees now, not after the close handshake: a queued session moves up at once
        if reason is GoodbyeReason.SLOW_CONSUMER:
            self.outbox.drop_text()  # it would not read them: the goodbye goes first
        code = CLOSE_CODE_FOR[reason]
        self.outbox.put_text(message(ServerMessage.GOODBYE, reason=reason.value, close_code=int(code)))
        self.outbox.put_close(int(code))

    @_contained
    def shutdown(self) -> None:
        """The server is stopping (called by AppState for every connection)."""
        self.close(GoodbyeReason.SERVER_SHUTDOWN)

    def _fatal(self, err: ProtocolError) -> None:
        self.send_error(err, fatal=True)
        self.close(FATAL[err.code])

    def _reject(self, err: ProtocolError) -> None:
        """A client mistake: an error message, and the end of the session when the code is fatal."""
        if err.code in FATAL:
            self._fatal(err)
        else:
            self.send_error(err)

    # --- sending ------------------------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation (the send loop then
        # outlived its session and kept its slot)
        while (item := await self.outbox.get()) is not None:
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await self._write(item)
            except TimeoutError:
                log.info("session %s: the client read nothing for %.0f s; dropping it", self.sid, SEND_TIMEOUT_S)
                self._because(f"the client read nothing for {SEND_TIMEOUT_S:.0f} s (dropped without a goodbye)")
                return
            except (WebSocketDisconnect, OSError):
                log.info("session %s: the client disconnected while we were sending", self.sid)
                self._because("the client disconnected")
                return
            except Exception:  # noqa: BLE001 - a server bug: logged by _crash; the goodbye and close follow
                self._crash("sending")
            self.outbox.sent()
            if isinstance(item, Close):
                return

    async def _write(self, item: str | OutgoingFrame | Close) -> None:
        if isinstance(item, Close):
            await self.ws.close(item.code)
        elif isinstance(item, str):
            await self.ws.send_text(item)
        else:
            await self._send_frame(item)

    async def _send_frame(self, item: OutgoingFrame) -> None:
        server_s = time.perf_counter() - item.received_at
        t = item.timings
        timings = FrameTimings(t.queue_ms, t.decode_ms, t.inference_ms, t.encode_ms, server_s * 1000.0)
        await self.ws.send_bytes(pack_output(item.frame_id, item.client_ts, item.fmt, item.payload, timings,
                                             item.flags, item.batch_size))
        if not item.flags & OutputFlag.CONTROL:
            self.app.metrics.frame_sent(server_s, frame_result(item.flags))

    def send(self, text: str) -> None:
        self.outbox.put_text(text)
        if self.session.open and self.outbox.slow():
            self._slow_consumer()

    def _slow_consumer(self) -> None:
        log.info("session %s: the client is not reading what it is sent (%d bytes waiting)", self.sid,
                 self.outbox.backlog_bytes)
        self.close(GoodbyeReason.SLOW_CONSUMER)

    def send_error(self, err: ProtocolError, fatal: bool = False) -> None:
        self.app.metrics.errors.labels(err.code.value).inc()
        if err.frame_id is not None:
            self.session.acknowledge(err.frame_id)
            self.app.metrics.frames.labels("error").inc()
        self.send(error_message(err, fatal=fatal))
        if err.code in VIOLATIONS and self.session.violation() and self.session.open:
            self._fatal(ProtocolError(ErrorCode.POLICY_VIOLATION, f"more than {self.config.max_violations} "
                                      "protocol violations"))

    # --- receiving ----------------------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                if self.session.open:
                    log.info("session %s: the client disconnected (code %s)", self.sid, msg.get("code"))
                    self._because(f"the client disconnected (code {msg.get('code')})")
                self.outbox.abandon()  # nothing can be written any more: the send loop, and the session, end
                return
            if self.session.open:  # closing: ignore whatever the client still sends
                self._on_message(msg, time.perf_counter())
            await asyncio.sleep(0)  # one message per turn: a flood cannot starve other sessions, answers leave

    def _on_message(self, msg: Mapping[str, Any], received_at: float) -> None:
        self.session.touch()
        data = msg.get("bytes") if msg.get("bytes") is not None else msg.get("text")
        if data is None:
            return
        try:
            if len(data) > self.config.max_message_bytes:
                raise ProtocolError(ErrorCode.MESSAGE_TOO_BIG, f"message of {len(data)} bytes; at most "
                                    f"{self.config.max_message_bytes}")
            if isinstance(data, bytes):
                self._on_binary(data, received_at)
            else:
                self._on_text(data)
        except ProtocolError as err:
            self._reject(err)
        except Exception:  # noqa: BLE001 - a server bug: logged by _crash; the receive loop goes on to the close
            self._crash("handling a message")

    def _on_text(self, text: str) -> None:
        kind, obj = parse_text(text)
        if admit(self.session.state, kind):
            self._handlers[kind](validate(kind, obj))

    def _on_hello(self, hello: Hello) -> None:
        if hello.output_format is not None:
            self.stream.output_format = ImageFormat.from_name(hello.output_format)
        log.info("session %s: hello from %r", self.sid, hello.client or "")
        if hello.params is not None:
            try:
                self._apply_params(hello.params, reply=False)
            except ProtocolError as err:
                self.send_error(err)  # defaults stay in force; the welcome says which
        try:
            state = self.app.admission.join(self)
        except ProtocolError as err:
            self._fatal(err)
            return
        self.session.transition(state)
        self._welcome()
        if state is SessionState.ACTIVE:
            self._on_activated()  # the welcome says "active": no separate state message
        else:
            self.app.admission.announce_positions()

    def _welcome(self) -> None:
        model = self.app.model_info
        assert model is not None  # a session exists only once the model is ready
        self.send(message(
            ServerMessage.WELCOME, version=PROTOCOL_VERSION, session_id=self.session.id,
            state=self.session.state.value, params=self.session.params.model_dump(mode="json"),
            schema=GenerationParams.model_json_schema(), limits=self.config.limits(model["size"]), model=model,
            output={"format": self.stream.output_format.name.lower(), "quality": self.config.output_quality},
            features=list(FEATURES),
        ))
        log.info("session %s %s (address %s)", self.sid, self.session.state.value, self.client)

    def _on_params(self, msg: Params) -> None:
        self._apply_params(msg.params, reply=True)

    def _apply_params(self, update: dict, reply: bool) -> None:
        params = parse_params(self.session.params, update)
        try:  # the pipeline's own check: mode loaded (ControlNet), style loaded
            image = _PLACEHOLDER if params.uses_image else None
            self.app.require_engine().check(GenerationRequest(params, image))
        except InvalidRequest as exc:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, exc.message, field=exc.field) from None
        self.session.params = params
        if reply:
            self.send(message(ServerMessage.PARAMS_OK, params=params.model_dump(mode="json")))

    def _on_ping(self, ping: Ping) -> None:
        self.send(message(ServerMessage.PONG, t=ping.t, server_time_ms=time.time() * 1000.0))

    def _on_bye(self, _: Bye) -> None:
        self.close(GoodbyeReason.CLIENT)

    def _on_control(self, _: Control) -> None:
        """Send the control image of the latest input under the current parameters (flag CONTROL)."""
        if self._control_busy:
            return  # one request at a time
        self._control_busy = True
        self._spawn(self._send_control(), "control image")

    async def _send_control(self) -> None:
        try:
            frame = await self.stream.control_frame()
        except ProtocolError as err:
            self.send_error(err)
            return
        except Exception as exc:  # noqa: BLE001 - logged and reported to this client; the session goes on
            log.exception("session %s: control image failed", self.sid)
            self.send_error(ProtocolError(ErrorCode.NO_CONTROL, f"control image failed: {type(exc).__name__}"))
            return
        finally:
            self._control_busy = False
        if self.session.state is SessionState.ACTIVE:
            self.outbox.put_aux(frame)

    # --- frames -------------------------------------------------------------------------------------------------
    def _on_binary(self, data: bytes, received_at: float) -> None:
        if self.session.state is SessionState.CONNECTING:  # no frame id before hello: the header is not read
            admit(self.session.state, FRAME)
        frame = unpack_input(data)
        if not admit(self.session.state, FRAME, frame.frame_id):
            return
        warning = self.session.admit_frame(frame.frame_id)
        if warning is not None:
            self.send_error(warning)
        if frame.fmt is ImageFormat.NONE and self.session.params.uses_image:
            raise ProtocolError(ErrorCode.IMAGE_REQUIRED, f"mode {self.session.params.mode.value!r} needs an input "
                                "image; send JPEG, WebP or PNG bytes", frame_id=frame.frame_id)
        self._spawn(self.stream.prepare(frame, received_at), "decoding a frame")

    # --- callbacks from the frame stream (event loop, via call_soon_threadsafe) -----------------------------------
    @_contained
    def _deliver(self, out: OutgoingFrame) -> None:
        if self.session.state is not SessionState.ACTIVE:
            return
        self.session.acknowledge(out.frame_id)
        self.outbox.put_frame(out)

    @_contained
    def _report(self, err: ProtocolError) -> None:
        self.send_error(err)

    @_contained
    def _fail(self, what: str) -> None:
        """The frame stream hit a server bug (already logged there): end the session with 1011."""
        self._fatal(ProtocolError(ErrorCode.INTERNAL_ERROR, f"the server failed while {what}; please reconnect"))

    # --- admission callbacks and timers (event loop) -------------------------------------------------------------
    @_contained
    def activate(self) -> None:
        if self.session.state is not SessionState.QUEUED:
            return
        self.session.transition(SessionState.ACTIVE)
        self.send(message(ServerMessage.STATE, state="active",
                          time_left_s=self.session.time_left(self.config.session_time_limit_s)))
        self._on_activated()

    def _on_activated(self) -> None:
        self.session.touch()
        self.app.require_pool().register(self.stream)
        self._send_time_left()

    @_contained
    def _moved(self, device: str) -> None:
        """The session's device was taken out of rotation; it now runs on `device` (`state` message, section 2)."""
        if self.session.state is SessionState.ACTIVE:
            log.info("session %s moved to device %s", self.sid, device)
            self.send(message(ServerMessage.STATE, state="active", device=device,
                              time_left_s=self.session.time_left(self.config.session_time_limit_s)))

    @_contained
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
        if s.open and self.outbox.slow(now):
            self._slow_consumer()
        if s.state is SessionState.CONNECTING and now - s.created_at > c.handshake_timeout_s:
            self._fatal(ProtocolError(ErrorCode.HANDSHAKE_TIMEOUT, f"no hello within {c.handshake_timeout_s} s"))
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
