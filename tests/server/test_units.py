"""The server's modules without a server: protocol, codec, session, outbox, admission, worker, config."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from fake_engine import FakeEngine
from server_harness import noise_image

from sdxs.errors import InvalidRequest
from sdxs.params import GenerationParams, GenerationRequest
from server import codec
from server.admission import Admission
from server.client import encode_image
from server.config import parse_config
from server.metrics import Metrics
from server.outbox import Close, Outbox, OutgoingFrame
from server.protocol import (
    ErrorCode,
    FrameTimings,
    ImageFormat,
    OutputFlag,
    ProtocolError,
    SessionState,
    pack_input,
    pack_output,
    parse_text,
    unpack_input,
    unpack_output,
)
from server.session import Mailbox, PendingFrame, Session
from server.worker import Job, Worker


def test_frame_headers_round_trip_and_reject_garbage():
    frame = unpack_input(pack_input(7, 1234.5, ImageFormat.WEBP, b"abc"))
    assert (frame.frame_id, frame.client_ts, frame.fmt, frame.payload) == (7, 1234.5, ImageFormat.WEBP, b"abc")
    out = unpack_output(pack_output(7, 1.5, ImageFormat.JPEG, b"xy", FrameTimings(1, 2, 3, 4, 5), OutputFlag.REUSED, 3))
    assert (out.frame_id, out.timings.encode_ms, out.flags, out.batch_size, out.payload) == (7, 4, 1, 3, b"xy")
    for bad in (b"SX", b"XX" + bytes(14), b"SX\x02\x01" + bytes(12), b"SX\x01\x09" + bytes(12),
                pack_input(1, 0, ImageFormat.NONE, b"not empty")):
        with pytest.raises(ProtocolError) as err:
            unpack_input(bad)
        assert err.value.code is ErrorCode.BAD_FRAME_HEADER


def test_parse_text_codes():
    assert parse_text('{"type": "ping", "t": 1}')[0].value == "ping"
    for text, code in (("{", ErrorCode.BAD_JSON), ("3", ErrorCode.BAD_JSON), ('{"type": 3}', ErrorCode.UNKNOWN_TYPE),
                       ("[" * 100_000, ErrorCode.BAD_JSON)):
        with pytest.raises(ProtocolError) as err:
            parse_text(text)
        assert err.value.code is code


def decode_one(payload: bytes, fmt: ImageFormat, limits: codec.ImageLimits, size: int = 32) -> np.ndarray:
    """The server's one path: the header check on receipt, then the worker's batch decode."""
    out = codec.decode_frames([codec.probe(payload, fmt, limits)], size)[0]
    if isinstance(out, ProtocolError):
        raise out
    return out


def test_decode_squares_png_as_the_pipeline_does_and_guards():
    from sdxs import frames

    limits = codec.ImageLimits(min_side=16, max_side=4096, max_pixels=4096 * 4096)
    wide = noise_image(64, 0)[:32]
    expected = frames.square([wide], 48)[0].permute(1, 2, 0).numpy()  # what the pipeline makes of the array
    np.testing.assert_array_equal(decode_one(encode_image(wide), ImageFormat.PNG, limits, size=48), expected)
    transparent = np.zeros((32, 32, 4), np.uint8)  # an untouched canvas -> white paper
    assert decode_one(encode_image(transparent), ImageFormat.PNG, limits).min() == 255
    with pytest.raises(ProtocolError) as err:
        decode_one(encode_image(noise_image(64, 2)), ImageFormat.PNG, codec.ImageLimits(max_side=32))
    assert err.value.code is ErrorCode.IMAGE_TOO_LARGE


def test_encode_formats_decode_back():
    image = noise_image(32, 3)
    for fmt in (ImageFormat.JPEG, ImageFormat.WEBP, ImageFormat.PNG):
        back = decode_one(codec.encode(image, fmt, 90), fmt, codec.ImageLimits())
        assert back.shape == image.shape
    np.testing.assert_array_equal(decode_one(codec.encode(image, ImageFormat.PNG), ImageFormat.PNG,
                                             codec.ImageLimits()), image)


def _frame(frame_id: int) -> PendingFrame:
    return PendingFrame(frame_id, 0.0, time.perf_counter(), None, b"d%d" % frame_id, 0.0)


def test_mailbox_keeps_only_the_newest():
    box = Mailbox()
    assert box.put(_frame(1)) is None
    assert box.put(_frame(3)).frame_id == 1
    assert box.put(_frame(2)).frame_id == 2  # an older frame that arrives late loses
    assert box.take().frame_id == 3 and box.take() is None
    assert box.put_back(_frame(3)) and not box.put_back(_frame(2))


def test_session_state_machine_and_flow_control():
    session = Session("1.2.3.4", GenerationParams(), max_in_flight=2, max_violations=2)
    with pytest.raises(RuntimeError, match="expected one of"):
        session.transition(SessionState.CLOSED)
    session.transition(SessionState.ACTIVE)
    assert session.admit_frame(1) is None and session.admit_frame(2) is None
    assert session.admit_frame(3).code is ErrorCode.FLOW_CONTROL
    with pytest.raises(ProtocolError) as err:
        session.admit_frame(3)
    assert err.value.code is ErrorCode.BAD_FRAME_ID
    session.acknowledge(2)
    assert session.in_flight == 1
    assert not session.violation() and not session.violation() and session.violation()


def test_outbox_keeps_order_newest_frame_wins_and_judges_unread_backlog():
    def frame(frame_id):
        return OutgoingFrame(frame_id, 0, 0, ImageFormat.JPEG, b"", FrameTimings(), OutputFlag(0), 1)

    async def go():
        box = Outbox(stall_s=60, max_backlog_bytes=10)
        box.put_text("a"), box.put_text("b")
        for frame_id in (1, 2):
            box.put_frame(frame(frame_id))
        got = [await box.get(), await box.get(), await box.get()]
        box.sent()
        assert not box.slow()
        box.put_text("x" * 11)  # more text than the client may leave unread
        assert box.slow()
        box.drop_text()
        box.put_text("bye")
        box.put_close(1000)
        box.put_frame(frame(3))
        got += [await box.get(), await box.get()]
        box.abandon()
        return got + [await box.get()]

    a, b, out, bye, close, gone = asyncio.run(go())
    assert (a, b, out.frame_id, bye, close, gone) == ("a", "b", 2, "bye", Close(1000), None)


def test_outbox_judges_a_blocked_send_slow():
    async def go():
        box = Outbox(stall_s=0.05)
        box.put_text("a")
        await box.get()  # the send loop took it and is writing it ...
        assert not box.slow()
        await asyncio.sleep(0.1)  # ... and the write has not completed
        slow = box.slow()
        box.sent()
        return slow, box.slow()

    assert asyncio.run(go()) == (True, False)


class _Member:
    def __init__(self, client: str):
        self.client, self.events = client, []

    def activate(self):
        self.events.append("active")

    def set_queue_position(self, position, length):
        self.events.append(position)


def test_admission_queue_promotion_and_caps():
    admission = Admission(max_sessions=1, max_queue=1, max_per_client=2, metrics=Metrics())
    a, b, c, d = _Member("x"), _Member("x"), _Member("x"), _Member("y")
    admission.connect(a), admission.connect(b)
    with pytest.raises(ProtocolError) as err:
        admission.connect(c)
    assert err.value.code is ErrorCode.TOO_MANY_SESSIONS
    assert admission.join(a) is SessionState.ACTIVE and admission.join(b) is SessionState.QUEUED
    admission.connect(d)
    with pytest.raises(ProtocolError) as err:
        admission.join(d)
    assert err.value.code is ErrorCode.SERVER_FULL
    admission.leave(a)
    admission.leave(a)  # idempotent
    assert b.events == ["active"] and admission.active == [b]


class _Source:
    def __init__(self, prompt: str, mode: str = "image"):
        self.last_served, self.results, self.prompt, self.mode = 0.0, [], prompt, mode
        self.job: Job | None = None

    @property
    def pending(self):
        return self.job is not None

    def load(self):
        params = GenerationParams(prompt=self.prompt, mode=self.mode)
        image = np.zeros((8, 8, 3), np.uint8)
        self.job = Job(GenerationRequest(params, image), time.perf_counter(), self.results.append)

    def take_job(self):
        job, self.job = self.job, None
        return job

    def return_job(self, job):
        self.job = job


def test_worker_batches_by_key_fairly_and_isolates_errors():
    pipe = FakeEngine(key=lambda r: r.params.uses_controlnet)
    worker = Worker(pipe, Metrics(), max_batch=2)
    sources = [_Source("a"), _Source("bb"), _Source("ccc"), _Source("boom", "sketch"), _Source("dd", "sketch")]
    for s in sources:
        s.load()
        worker.register(s)
    worker._run_batch(worker._stage(worker._next_batch()))  # a + bb (max_batch 2, least recently served first)
    worker._run_batch(worker._stage(worker._next_batch()))  # ccc: never served, first in line; another key
    worker._run_batch(worker._stage(worker._next_batch()))  # boom + dd in one batch, which fails
    assert pipe.batches == [["a", "bb"], ["ccc"], ["boom", "dd"]]
    assert sources[3].results[0].error is not None and sources[4].results[0].error is not None
    assert all(s.results[0].error is None and s.results[0].batch_size >= 1 for s in sources[:3])


def test_worker_thread_submit_one_invalid_request_and_safety():
    pipe = FakeEngine(key=lambda r: r.params.uses_controlnet)
    worker = Worker(pipe, Metrics(), safety=lambda images: [img[0, 0, 0] == 4 for img in images])
    worker.start()
    try:
        async def go():
            ok = await worker.submit_one(GenerationParams(prompt="abc"), np.zeros((8, 8, 3), np.uint8))
            flagged = await worker.submit_one(GenerationParams(prompt="abcd"), np.zeros((8, 8, 3), np.uint8))
            with pytest.raises(InvalidRequest):
                await worker.submit_one(GenerationParams(style="anime"), np.zeros((8, 8, 3), np.uint8))
            return ok, flagged

        ok, flagged = asyncio.run(go())
        assert ok[0, 0, 0] == 3 and flagged.max() == 0  # the flagged image was replaced by a blank one
    finally:
        worker.stop()
    assert not any(t.is_alive() for t in worker._threads)  # this worker's threads (another server's may still run)


def test_config_flags_beat_env_beat_defaults():
    config = parse_config(["--max-batch", "3"], {"SDXS_MAX_BATCH": "5", "SDXS_IDLE_TIMEOUT_S": "9", "PORT": "8000"})
    assert (config.max_batch, config.idle_timeout_s, config.port, config.model) == (
        3, 9.0, 8000, "auto")
    assert parse_config(["--controlnet", "none", "--resolution", "256"], {}).resolution == 256
    with pytest.raises(ValueError):
        parse_config(["--max-batch", "0"], {})


def test_batch_wait_gathers_sessions_that_are_about_to_send():
    pipe = FakeEngine(key=lambda r: r.params.uses_controlnet)
    worker = Worker(pipe, Metrics(), max_batch=8, batch_wait_ms=500)
    first, second = _Source("a"), _Source("bb")
    worker.register(first), worker.register(second)
    worker.start()
    try:
        first.load()
        worker.notify()
        time.sleep(0.1)  # the worker is gathering: `second` has not sent yet
        second.load()
        worker.notify()
        deadline = time.monotonic() + 5
        while not (first.results and second.results) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert pipe.batches == [["a", "bb"]]
