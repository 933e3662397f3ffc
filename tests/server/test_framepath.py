"""The frame path: header checks on receipt, batch decode on the worker's staging thread, staging overlapping the
model, warm-up on the model thread, and the server's frames equal to the pipeline's."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch
from fake_engine import FakeEngine
from server_harness import RunningServer, noise_image, reference, tiny_config

from sdxs.params import GenerationParams, GenerationRequest
from server import codec
from server.client import Client, decode_image, encode_image
from server.config import ServerConfig
from server.loading import batch_buckets, device_features, use_cuda_graphs
from server.metrics import Metrics
from server.protocol import ErrorCode, ImageFormat, ProtocolError
from server.worker import Job, Worker

pytestmark = pytest.mark.timeout(60)
LIMITS = codec.ImageLimits()


def truncated(jpeg: bytes) -> bytes:
    """The JPEG cut in the middle of its compressed data: the header still reads."""
    start = jpeg.index(b"\xff\xda")
    return jpeg[: start + (len(jpeg) - start) // 2]


def webcam_jpeg(width: int = 640, height: int = 480) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x // 40 + y // 40) % 2 * 200], -1).astype(np.uint8)
    return encode_image(rgb, "jpeg", 80)


# --- codec ------------------------------------------------------------------------------------------------------

def test_probe_checks_the_header_before_any_pixel():
    jpeg = webcam_jpeg()
    assert (codec.probe(jpeg, ImageFormat.JPEG, LIMITS).width, codec.probe(jpeg, ImageFormat.JPEG, LIMITS).height) == (
        640, 480)
    cases = [(jpeg, ImageFormat.PNG, LIMITS, ErrorCode.BAD_IMAGE),  # declared PNG, is JPEG
             (b"\xff\xd8 not really", ImageFormat.JPEG, LIMITS, ErrorCode.BAD_IMAGE),
             (jpeg, ImageFormat.JPEG, codec.ImageLimits(max_side=600), ErrorCode.IMAGE_TOO_LARGE),
             (jpeg, ImageFormat.JPEG, codec.ImageLimits(min_side=500), ErrorCode.IMAGE_TOO_SMALL),
             (encode_image(noise_image(64, 0)), ImageFormat.PNG, codec.ImageLimits(max_pixels=1000),
              ErrorCode.IMAGE_TOO_LARGE)]
    for payload, fmt, limits, code in cases:
        with pytest.raises(ProtocolError) as err:
            codec.probe(payload, fmt, limits, frame_id=7)
        assert (err.value.code, err.value.frame_id) == (code, 7)


def test_decode_frames_scales_jpeg_down_while_decoding_and_isolates_bad_frames():
    jpeg = webcam_jpeg()
    good = codec.probe(jpeg, ImageFormat.JPEG, LIMITS)
    cut = codec.probe(truncated(jpeg), ImageFormat.JPEG, LIMITS)  # the header is fine
    transparent = codec.probe(encode_image(np.zeros((40, 30, 4), np.uint8)), ImageFormat.PNG, LIMITS)
    array = noise_image(32, 1)
    out = codec.decode_frames([good, cut, transparent, array, None], 128)
    assert out[0].shape[0] >= 128 and out[0].shape[0] < 480  # a reduced DCT scale, still covering 128
    assert isinstance(out[1], ProtocolError) and out[1].code is ErrorCode.BAD_IMAGE
    assert out[2].shape == (128, 128, 3) and out[2].min() == 255  # transparent -> white paper, squared at once
    assert out[3] is array and out[4] is None
    assert codec.decode_frames([good], 128)[0] is out[0]  # decoded once: an unchanged input is not decoded again


def test_jpeg_encode_round_trips():
    y, x = np.mgrid[0:64, 0:64]
    image = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)
    back = decode_image(codec.encode(image, ImageFormat.JPEG, 90))
    assert np.abs(back.astype(int) - image).mean() < 4


# --- worker -----------------------------------------------------------------------------------------------------

class Phased(FakeEngine):
    """The engine's two phases with observable timing: batch 1's run waits until batch 2 has been staged."""

    def __init__(self):
        super().__init__(echo=True, key=lambda request: request.params.uses_controlnet, on_run=self._wait)
        self.second_staged = threading.Event()
        self.overlapped: bool | None = None

    def stage(self, requests, *, checked=False):
        staged = super().stage(requests, checked=checked)
        if "second" in [r.params.prompt for r in requests]:
            self.second_staged.set()
        return staged

    def _wait(self, prompts):
        if prompts == ["first"]:
            self.overlapped = self.second_staged.wait(10)


class OneJob:
    def __init__(self, prompt, image, results):
        self.last_served, self.results = 0.0, results
        self.job = Job(GenerationRequest(GenerationParams(prompt=prompt), image), time.perf_counter(), results.append)

    @property
    def pending(self):
        return self.job is not None

    def take_job(self):
        job, self.job = self.job, None
        return job

    def return_job(self, job):
        self.job = job


def test_the_next_batch_is_staged_while_the_model_runs():
    pipe, results = Phased(), []
    worker = Worker(pipe, Metrics(), max_batch=1)
    worker.start()
    try:
        first = OneJob("first", np.zeros((8, 8, 3), np.uint8), results)
        worker.register(first)
        worker.notify()
        deadline = time.monotonic() + 10
        while "stage ['first']" not in pipe.events and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.register(OneJob("second", np.ones((8, 8, 3), np.uint8), results))
        worker.notify()
        while len(results) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert pipe.overlapped is True  # batch 2 was staged while batch 1 was in `run`
    assert pipe.events == ["stage ['first']", "stage ['second']", "run ['first']", "run ['second']"]
    assert [r.image.max() for r in results] == [0, 1] and all(r.error is None for r in results)


def test_a_frame_that_does_not_decode_leaves_its_batch_and_is_answered():
    pipe, results = Phased(), {}
    worker = Worker(pipe, Metrics(), max_batch=4, decode=lambda images: codec.decode_frames(images, 48))
    jpeg = webcam_jpeg(64, 48)
    frames = {"ok": codec.probe(jpeg, ImageFormat.JPEG, LIMITS),
              "bad": codec.probe(truncated(jpeg), ImageFormat.JPEG, LIMITS),
              "also ok": np.zeros((48, 64, 3), np.uint8)}
    for prompt, image in frames.items():
        results[prompt] = []
        worker.register(OneJob(prompt, image, results[prompt]))
    batch = worker._stage(worker._next_batch())
    assert results["bad"][0].error.code is ErrorCode.BAD_IMAGE and results["ok"] == []  # answered before the run
    worker._run_batch(batch)
    assert [len(results[p]) for p in frames] == [1, 1, 1]
    assert results["ok"][0].batch_size == 2 and results["ok"][0].image.shape == (48, 64, 3)


@pytest.mark.cuda
def test_cuda_worker_returns_what_the_pipeline_returns(tiny_model_dir):
    """On a GPU: nvJPEG (when torchvision loads) or CPU decode, staging on a side stream while the model thread runs,
    the completion thread's wait for the pinned copy: each frame equals a direct pipeline call within one level."""
    from sdxs import SDXSPipeline

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    pipe = SDXSPipeline.from_pretrained(str(tiny_model_dir), device="cuda", dtype="float32")
    size, gpu = int(pipe.size), device_features(pipe).gpu
    gpu.self_test(2)
    worker = Worker(pipe, Metrics(), max_batch=2, decode=lambda images: codec.decode_frames(images, size, gpu))
    payload = webcam_jpeg(size + 32, size)
    results = {f"prompt {i}": [] for i in range(5)}
    worker.start()
    try:
        for prompt, out in results.items():
            worker.register(OneJob(prompt, codec.probe(payload, ImageFormat.JPEG, LIMITS), out))
        worker.notify()
        deadline = time.monotonic() + 60
        while sum(map(len, results.values())) < len(results) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    decoded = codec.decode_frames([codec.probe(payload, ImageFormat.JPEG, LIMITS)], size, gpu)[0]
    for prompt, (result,) in results.items():
        assert result.error is None, result.error
        direct = pipe([GenerationRequest(GenerationParams(prompt=prompt), decoded)], output_type="np")[0]
        assert np.abs(result.image.astype(int) - direct).max() <= 1, prompt


def test_warm_up_runs_on_the_model_thread_before_serving():
    seen = []
    worker = Worker(Phased(), Metrics())
    worker.start(warmup=lambda: seen.append(threading.current_thread().name))
    try:
        assert worker.warm.wait(10) and seen == ["sdxs-worker"]
    finally:
        worker.stop()
    failing = Worker(Phased(), Metrics())
    failing.start(warmup=lambda: 1 / 0)
    assert failing.join(10) and isinstance(failing.failed, ZeroDivisionError) and not failing.warm.is_set()


def test_cuda_graphs_option_and_buckets():
    auto, on, off = (ServerConfig(cuda_graphs=v, max_batch=16) for v in ("auto", "on", "off"))
    assert use_cuda_graphs(auto, "cuda") and not use_cuda_graphs(auto, "cpu") and not use_cuda_graphs(off, "cuda")
    with pytest.raises(ValueError, match="CUDA device"):
        use_cuda_graphs(on, "cpu")
    assert batch_buckets(auto, True) == (1, 2, 4, 8, 16) and batch_buckets(auto, False) is None


# --- through the real server -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_model_dir):
    running = RunningServer(tiny_config(tiny_model_dir)).start().wait_ready()
    yield running
    running.stop()


async def _serve(url: str, jobs: list[tuple[dict, bytes]]) -> list:
    client = await Client.open(url, {"output_format": "png"})
    outs = []
    for params, payload in jobs:
        await client.send_json({"type": "params", "params": params})
        await client.expect("params_ok")
        outs.append(await client.expect_output(await client.send_frame(payload), timeout=30))
    await client.close()
    return outs


def test_server_frames_equal_the_pipelines_at_any_input_size(server):
    """A webcam-sized photo and a canvas-sized sketch (squared and resized by the server) in every image mode: the
    PNG frames that come back are the pipeline's own output for the same decoded input, exactly."""
    photo, sketch = noise_image(160, 11)[:, :120], np.full((200, 200, 3), 255, np.uint8)
    sketch[60:66, 20:180] = 0
    jobs = [({"mode": mode, "seed": 4, "prompt": "a boat"}, image)
            for mode, image in (("image", photo), ("edges", photo), ("sketch", sketch))]
    served = asyncio.run(_serve(server.url, [(params, encode_image(image)) for params, image in jobs]))
    for (params, image), got in zip(jobs, served):
        want = reference(server, [GenerationRequest(GenerationParams(**params), image)])[0]
        assert np.array_equal(decode_image(got.payload), want), params["mode"]


def test_webcam_jpeg_through_the_server(server):
    """640x480 JPEG (decoded at a reduced scale, squared once on the device) in every image mode, and a corrupt one
    answered with bad_image while the next frame is served."""
    jpeg = webcam_jpeg()

    async def go():
        client = await Client.open(server.url)
        outs = []
        for mode in ("image", "edges", "sketch"):
            await client.send_json({"type": "params", "params": {"mode": mode}})
            await client.expect("params_ok")
            outs.append(await client.expect_output(await client.send_frame(jpeg, ImageFormat.JPEG)))
        bad = await client.send_frame(truncated(jpeg), ImageFormat.JPEG)
        error = await client.expect("error")
        after = await client.expect_output(await client.send_frame(webcam_jpeg(320, 240), ImageFormat.JPEG))
        await client.close()
        return outs, bad, error, after

    outs, bad, error, after = run(go())
    assert all(decode_image(o.payload).shape == (128, 128, 3) and o.timings.decode_ms > 0 for o in outs)
    assert (error["code"], error["frame_id"]) == ("bad_image", bad) and after.frame_id == bad + 1


def run(coro):
    return asyncio.run(coro)
