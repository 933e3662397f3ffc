"""The frame path of one session: header check -> one-slot mailbox -> worker (decode, models) -> encode -> outbox.

`FrameStream` is also the worker's *Source* for its session. Threads: `prepare` and `control_frame` run on the event
loop; `prepare` checks the image header (size limits, bomb guard: errors go out at once) and keeps the frame encoded
(server.codec.Encoded): the worker's staging thread decodes it with the rest of its batch.  `take_job`, `return_job`
and the job callback run on the worker's threads; outputs are encoded on the codec pool and return to the loop with
`call_soon_threadsafe`. Nothing here is shared with another session: its history for the pipeline and its skip
filter's reference (server.worker.LiveStream) are its own, and freed by `release` when the session ends.

A frame the skip filter skips (server/skipfilter.py, staging thread) is answered with the picture of the stream's last
generated frame, flag SKIPPED: at once when that picture was sent, else right after it (it may still be in the
model), so answers keep their order.  If that picture never comes (its batch failed, the safety checker replaced it)
the skipped frame goes back to the mailbox to be generated, unless a newer frame is there.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from sdxs.errors import InvalidRequest
from sdxs.params import GenerationParams, GenerationRequest
from server import codec
from server.outbox import OutgoingFrame
from server.protocol import (
    ErrorCode,
    FrameTimings,
    ImageFormat,
    InputFrame,
    OutputFlag,
    ProtocolError,
    SessionState,
)
from server.session import CachedOutput, PendingFrame, Session
from server.worker import Job, JobResult, LiveStream

if TYPE_CHECKING:
    from server.state import AppState

log = logging.getLogger("sdxs.session")


def _fails_session(what: str) -> Callable:
    """For the methods other threads call (worker, codec pool): an exception there is a server bug; log it and end
    this session with internal_error, instead of losing the frame silently in the other thread's error handler."""

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(self: FrameStream, *args):
            try:
                return method(self, *args)
            except Exception:  # noqa: BLE001 - logged here; the session is told and closed on the loop
                log.exception("session %s: %s failed", self.session.id[:8], what)
                self._to_loop(self.fail, what)
                return None

        return call

    return wrap


class FrameStream:
    def __init__(self, session: Session, app: AppState, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[OutgoingFrame], None], report: Callable[[ProtocolError], None],
                 fail: Callable[[str], None], on_moved: Callable[[str], None] | None = None):
        """`deliver`, `report` (a non-fatal error), `fail` (a server bug, given what failed: close 1011) and
        `on_moved` (the session now runs on another device, given its label) run on the event loop."""
        self.session, self.app, self.loop = session, app, loop
        self.deliver, self.report, self.fail, self.on_moved = deliver, report, fail, on_moved
        self.output_format = ImageFormat.from_name(app.config.output_format)
        self.quality = app.config.output_quality
        self.last_served = 0.0  # worker fairness
        self.last_input: PendingFrame | None = None  # event loop only
        self.live = LiveStream()  # history (sdxs.temporal) and skip filter: this session's own
        self.skip = self.live.skip_state(self._skipped)
        # a skipped frame, and the receipt time of the frame whose picture it waits for
        self._parked: tuple[PendingFrame, float | None] | None = None
        self._answer_lock = threading.Lock()  # the parked frame and the reuse cache, between staging and codec threads

    # --- event loop: incoming frames ----------------------------------------------------------------------------
    async def prepare(self, frame: InputFrame, received_at: float) -> None:
        """Check the header (skipped for an unchanged input) and post the frame to the mailbox."""
        if frame.frame_id < self.session.last_frame_id:  # superseded before its check started: newest wins
            self.app.metrics.frames.labels("dropped").inc()
            return
        digest = hashlib.blake2b(bytes([frame.fmt]) + frame.payload, digest_size=16).digest()
        known, image = self.session.known_input(digest)
        start = time.perf_counter()
        if not known and frame.fmt is not ImageFormat.NONE:
            try:
                image = await self._check(frame)
            except ProtocolError as err:
                self.report(err)
                return
            self.session.remember_input(digest, image)
        pending = PendingFrame(frame.frame_id, frame.client_ts, received_at, image, digest,
                               (time.perf_counter() - start) * 1000.0)
        if not self.session.open:
            return
        self.last_input = pending
        if self.session.mailbox.put(pending) is not None:
            self.app.metrics.frames.labels("dropped").inc()
        self.app.require_pool().notify(self)

    async def _check(self, frame: InputFrame) -> codec.Encoded:
        """A JPEG's header check, on the loop (microseconds: the worker decodes JPEG in batches, scaled down while
        decoding).  A PNG or WebP is checked and decoded at once on the decode thread (PIL cannot decode it scaled
        down, and a 4096x4096 one takes 0.15 s: not in a batch that other sessions' frames wait for), unless a newer
        frame of this session superseded it meanwhile."""
        if frame.fmt is ImageFormat.JPEG:
            return codec.probe(frame.payload, frame.fmt, self.app.image_limits, frame.frame_id)
        work = functools.partial(self._check_and_decode, frame)
        return await self.loop.run_in_executor(self.app.decode_pool, work)

    def _check_and_decode(self, frame: InputFrame) -> codec.Encoded:
        image = codec.probe(frame.payload, frame.fmt, self.app.image_limits, frame.frame_id)
        if frame.frame_id >= self.session.last_frame_id:  # superseded frames are never served: not worth decoding
            codec.decode_now(image, int(self.app.require_engine().size), frame.frame_id)
        return image

    async def control_frame(self) -> OutgoingFrame:
        """The control image (inverted sketch / edges) of the latest input under the current parameters."""
        params, frame = self.session.params, self.last_input
        if not params.uses_controlnet:
            raise ProtocolError(ErrorCode.NO_CONTROL, f"mode {params.mode.value!r} has no control image")
        if frame is None or frame.image is None:
            raise ProtocolError(ErrorCode.NO_CONTROL, "no input frame yet")
        start = time.perf_counter()
        payload = await self.loop.run_in_executor(self.app.codec_pool, self._encode_control, frame, params)
        timings = FrameTimings(encode_ms=(time.perf_counter() - start) * 1000.0)
        return OutgoingFrame(frame.frame_id, frame.client_ts, start, self.output_format, payload, timings,
                             OutputFlag.CONTROL, 0)

    def _encode_control(self, frame: PendingFrame, params: GenerationParams) -> bytes:
        image = codec.decode_frames([frame.image], int(self.app.require_engine().size))[0]
        if isinstance(image, ProtocolError):
            raise ProtocolError(image.code, image.message, frame_id=frame.frame_id)
        control = self.app.require_engine().control_image(GenerationRequest(params, image))
        return codec.encode(np.asarray(control.convert("RGB")), self.output_format, self.quality)

    # --- worker thread: the Source protocol ---------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return self.session.mailbox.pending and self.session.state is SessionState.ACTIVE

    @_fails_session("scheduling a frame")
    def take_job(self) -> Job | None:
        """The pending frame as a job with the parameters in force now; an unchanged input is answered here."""
        frame = self.session.mailbox.take()
        if frame is None:
            return None
        params = self.session.params
        cached = self.session.reusable(frame, params)
        temporal = self.live.temporal
        if cached is not None and temporal.settled_for(params):
            queue_ms = (time.perf_counter() - frame.received_at) * 1000.0
            self._to_loop(self.deliver, OutgoingFrame(frame.frame_id, frame.client_ts, frame.received_at, cached.fmt,
                                                      cached.payload, FrameTimings(queue_ms, frame.decode_ms),
                                                      OutputFlag.REUSED, 0))
            return None
        return Job(GenerationRequest(params, frame.image, temporal), frame.received_at,
                   functools.partial(self._on_result, frame, params), tag=frame, skip=self.skip,
                   still=cached is not None)

    @_fails_session("scheduling a frame")
    def return_job(self, job: Job) -> None:
        if isinstance(job.tag, PendingFrame):
            self.session.mailbox.put_back(job.tag)

    @_fails_session("answering a skipped frame")
    def _skipped(self, job: Job) -> None:
        """The skip filter skipped `job` (staging thread): answer with the picture of the reference frame, the last
        one generated (job.skip.received_at), now if it was sent, else when it is."""
        frame = job.tag
        assert isinstance(frame, PendingFrame)  # take_job's tag
        reference = self.skip.received_at
        with self._answer_lock:
            cache = self.session.cached_output()
            if cache is not None and cache.received_at == reference:
                self._send_skipped(frame, cache)
                return
            if self._parked is not None:  # a newer skipped frame replaces it (and its answer acknowledges it)
                self.app.metrics.frames.labels("dropped").inc()
            self._parked = (frame, reference)

    def _send_skipped(self, frame: PendingFrame, cache: CachedOutput) -> None:
        queue_ms = (time.perf_counter() - frame.received_at) * 1000.0
        self._to_loop(self.deliver, OutgoingFrame(frame.frame_id, frame.client_ts, frame.received_at, cache.fmt,
                                                  cache.payload, FrameTimings(queue_ms, frame.decode_ms),
                                                  OutputFlag.SKIPPED, 0))

    def _no_picture(self) -> None:
        """The reference frame's picture will not come: forget it, and have a parked skipped frame generated."""
        self.skip.reset()
        with self._answer_lock:
            parked, self._parked = self._parked, None
        if parked is not None and self.session.open and self.session.mailbox.put_back(parked[0]):
            self.app.require_pool().notify(self)

    @_fails_session("handling an inference result")
    def _on_result(self, frame: PendingFrame, params: GenerationParams, result: JobResult) -> None:
        if not self.session.open:
            return  # the client left mid-inference: the result is simply dropped
        if result.error is not None:
            self._no_picture()
            self._to_loop(self.report, inference_error(result.error, frame.frame_id))
            return
        self.app.codec_pool.submit(self._encode, frame, params, result)

    # --- codec threads ------------------------------------------------------------------------------------------
    @_fails_session("encoding the output image")
    def _encode(self, frame: PendingFrame, params: GenerationParams, result: JobResult) -> None:
        """Encode, remember for reuse, hand to the loop."""
        start = time.perf_counter()
        assert result.image is not None  # results with an error never come here (_on_result)
        payload = codec.encode(result.image, self.output_format, self.quality)
        encode_ms = (time.perf_counter() - start) * 1000.0
        flags = OutputFlag.SAFETY_REPLACED if result.flagged else OutputFlag(0)
        if not self.live.temporal.settled_for(params):  # the same input again gives the next step of a change
            flags |= OutputFlag.SETTLING
        timings = FrameTimings(result.queue_ms, frame.decode_ms + result.stage_ms, result.inference_ms, encode_ms)
        with self._answer_lock:
            cache = CachedOutput(frame.digest, params, self.output_format, payload, frame.received_at)
            if not result.flagged:
                self.session.remember_output(cache)
            self._to_loop(self.deliver, OutgoingFrame(frame.frame_id, frame.client_ts, frame.received_at,
                                                      self.output_format, payload, timings, flags, result.batch_size))
            parked = self._parked
            if parked is not None and parked[1] == frame.received_at and not result.flagged:
                self._parked = None
                self._send_skipped(parked[0], cache)
        if result.flagged:
            self._no_picture()

    def release(self) -> None:
        """The session ended: free its history and skip reference now (event loop)."""
        with self._answer_lock:
            self._parked = None
        self.live.release()

    def moved(self, device: str) -> None:
        """server/devices.py moved this session to `device` (its own device kept failing); any thread."""
        self.skip.reset()  # the new device generates afresh; the history notices the new device itself
        if self.on_moved is not None:
            self._to_loop(self.on_moved, device)

    def _to_loop(self, fn: Callable, *args) -> None:
        if self.session.open and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)


def inference_error(exc: BaseException, frame_id: int) -> ProtocolError:
    """The `error` a client gets when its frame did not decode, its batch failed, or the pipeline refused it."""
    if isinstance(exc, ProtocolError):  # bad_image from the worker's decode
        return ProtocolError(exc.code, exc.message, frame_id=frame_id, field=exc.field)
    if isinstance(exc, InvalidRequest):
        code = ErrorCode.IMAGE_REQUIRED if exc.field == "image" else ErrorCode.INVALID_PARAMS
        return ProtocolError(code, exc.message, frame_id=frame_id, field=exc.field)
    return ProtocolError(ErrorCode.INFERENCE_FAILED, f"inference failed: {type(exc).__name__}: {exc}"[:500],
                         frame_id=frame_id)
