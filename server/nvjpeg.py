"""nvJPEG batch decode on a CUDA device (torchvision), on a stream of its own, with a startup self-test and a step aside
to the CPU decoder (libjpeg-turbo, server/codec.py) whenever it is not right.

Why a stream of its own (torchvision's `decode_jpegs_cuda`, torch's caching allocator): torchvision allocates the
outputs with `torch::empty` on the caller's *current* stream, then writes them from the decoder's internal stream,
which waits for nothing; only when the call returns does the current stream wait for the decoder (an event).  On a
stream that other work allocates and frees on (the default stream, where the model thread queues its kernels and
frees their inputs), the allocator may hand the decoder a block that a queued kernel has not read yet, and the
decoder overwrites it: wrong pixels, or another session's input in a reply.  So, in `NvJpeg.decode`:

1. the decode runs with a dedicated stream current, on which nothing else allocates: its blocks only ever hold
   decoder outputs;
2. that stream is synchronised before the call, so no work queued on it is pending when a block is handed out;
3. the outputs go to one consumer, the pipeline's staging stream (`SDXSPipeline.staging_stream`, where frames are
   squared and control images made): it waits for an event recorded on the decode stream after the call, and
   `record_stream(consumer)` keeps each output's block from being reused before the consumer's work on it has run.

The decode stream is not the model's stream, so the decode of batch n+1 overlaps the model running batch n.

Stepping aside: a device whose self-test shows any difference, or whose decoder raises on a batch that the CPU then
decodes in full, serves with nvJPEG off from then on (logged once, loudly; `/readyz` and `/metrics` say so).  Frames
nvJPEG is not meant for (arithmetic coding, 12-bit samples, CMYK: `eligible`) go to the CPU decoder from the start,
so that no client can turn nvJPEG off for everyone with a valid but unusual JPEG.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from server.codec import Encoded

import numpy as np
import simplejpeg

log = logging.getLogger("sdxs.nvjpeg")

# JPEG start-of-frame markers nvJPEG decodes: baseline, extended and progressive Huffman (not lossless, not arithmetic)
HUFFMAN_SOF = {0xC0, 0xC1, 0xC2}
OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
SELF_TEST_SIZE = (480, 640)  # (H, W): a webcam frame
SELF_TEST_MEAN_TOLERANCE = 2.0  # mean |nvJPEG - libjpeg-turbo| per frame, in levels (torchvision's own test bound)
SPIN_CYCLES = 100_000_000  # the GPU kept busy while the self-test decodes: about 50 ms at 2 GHz


def jpeg_frame(payload: bytes) -> tuple[int, int, int] | None:
    """(start-of-frame marker, sample precision, components) from a JPEG's header, or None when none is found."""
    i, n = 2, len(payload)
    if payload[:2] != b"\xff\xd8":
        return None
    while i + 4 <= n:
        if payload[i] != 0xFF:
            return None
        marker = payload[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(payload[i + 2 : i + 4], "big")
        if marker in HUFFMAN_SOF or marker in OTHER_SOF:
            if i + 10 > n:
                return None
            return marker, payload[i + 4], payload[i + 9]
        if marker == 0xDA or length < 2:  # start of scan before any frame header: not a JPEG we know
            return None
        i += 2 + length
    return None


def eligible(payload: bytes) -> bool:
    """A JPEG nvJPEG is meant for: Huffman coded, 8-bit samples, grey or YCbCr (1 or 3 components)."""
    frame = jpeg_frame(payload)
    return frame is not None and frame[0] in HUFFMAN_SOF and frame[1] == 8 and frame[2] in (1, 3)


@dataclass
class DecodeFailure:
    """The batched nvJPEG call raised: `frames` (server.codec.Encoded) were left for the CPU decoder."""

    error: BaseException
    frames: list[Encoded]


@dataclass
class SelfTest:
    """The startup self-test's figures (`/readyz`, bench/gpu.sh)."""

    frames: int = 0
    corrupted: int = 0  # frames further from libjpeg-turbo than the tolerance
    max_abs_diff: int | None = None  # over every pixel of every frame, nvJPEG vs libjpeg-turbo
    mean_abs_diff: float | None = None  # the worst frame's mean
    bait_intact: bool | None = None  # the tensor freed on the default stream under queued work was read unchanged
    error: str | None = None
    passed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class NvJpeg:
    """nvJPEG for one CUDA device, handing its outputs to `consumer` (a CUDA stream).  One thread decodes at a time
    (the worker's staging thread; the self-test runs on the model thread before the staging thread starts)."""

    device: torch.device
    consumer: torch.cuda.Stream  # the pipeline's staging stream
    decode_jpeg: Callable[..., list[torch.Tensor]] | None = None  # torchvision's decode_jpeg(data, device=) to RGB
    off_reason: str | None = None
    self_test_result: SelfTest | None = None
    stream: torch.cuda.Stream | None = field(default=None, repr=False)

    @classmethod
    def create(cls, device: torch.device | str, consumer: torch.cuda.Stream | None) -> NvJpeg:
        """nvJPEG on `device`; off (with the reason) when torchvision's CUDA decoder cannot be imported."""
        import torch

        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except Exception as exc:  # noqa: BLE001 - no (matching) torchvision: the CPU decoder serves
            return cls(torch.device(device), consumer, off_reason=f"torchvision unavailable ({type(exc).__name__}: "
                                                                  f"{exc})"[:300])
        rgb = functools.partial(decode_jpeg, mode=ImageReadMode.RGB)
        return cls(torch.device(device), consumer, rgb, stream=torch.cuda.Stream(device))

    @property
    def enabled(self) -> bool:
        return self.off_reason is None

    def status(self) -> str:
        """`decode` of this device in /readyz: 'nvjpeg' or 'cpu (why)'."""
        return "nvjpeg" if self.enabled else f"cpu ({self.off_reason})"

    def turn_off(self, reason: str) -> None:
        if self.enabled:
            self.off_reason = reason[:300]
            log.error("nvJPEG turned off on %s, JPEG frames are decoded on the CPU from now on: %s", self.device,
                      self.off_reason)

    # --- decoding ---------------------------------------------------------------------------------------------------
    def decode(self, images: Sequence[Encoded]) -> DecodeFailure | None:
        """Decode the eligible JPEGs among `images` (server.codec.Encoded) into `image.decoded`: uint8 (H, W, 3)
        CUDA tensors, ready for the consumer stream.  The others stay for the CPU.  Returns the failure when the
        batched call raised (the caller tells from the CPU's result whose fault it was: `judge`), else None."""
        if not self.enabled:
            return None
        frames = [image for image in images if eligible(image.payload)]
        if not frames:
            return None
        try:
            outputs = self._decode_on_own_stream([image.payload for image in frames])
        except Exception as exc:  # noqa: BLE001 - left to the CPU decoder; `judge` decides whose fault it was
            return DecodeFailure(exc, frames)
        for image, chw in zip(frames, outputs, strict=True):
            image.decoded = chw.permute(1, 2, 0)
        return None

    def judge(self, failure: DecodeFailure | None) -> None:
        """After the CPU decoder had the frames of a failed call: when it decoded every one, nvJPEG failed on valid
        input and is turned off; when some did not decode, the input was bad and nvJPEG stays on."""
        if failure is not None and all(image.decoded is not None for image in failure.frames):
            self.turn_off(f"failed on {len(failure.frames)} frames libjpeg-turbo decodes: "
                          f"{type(failure.error).__name__}: {failure.error}")

    def _decode_on_own_stream(self, payloads: Sequence[bytes]) -> list[torch.Tensor]:
        """The stream protocol of the module docstring; (3, H, W) uint8 outputs on the device."""
        import torch

        data = [torch.frombuffer(bytearray(payload), dtype=torch.uint8) for payload in payloads]
        # an NvJpeg made without a decoder or stream is off (create) and never comes here
        assert self.decode_jpeg is not None and self.stream is not None
        self.stream.synchronize()  # 2. nothing queued on the decode stream when its allocator hands out a block
        with torch.cuda.stream(self.stream):  # 1. outputs allocated on a stream nothing else allocates on
            outputs = self.decode_jpeg(data, device=self.device)
            ready = self.stream.record_event()  # after torchvision made the decode stream wait for its decoder
        self.consumer.wait_event(ready)  # 3. the consumer reads them only after the decode ...
        for output in outputs:
            output.record_stream(self.consumer)  # ... and their blocks outlive the consumer's reads
        return list(outputs)

    # --- the self-test ------------------------------------------------------------------------------------------------
    def self_test(self, batch: int) -> SelfTest:
        """Decode a known batch of `batch` webcam-sized JPEGs through `decode` while the default stream is still busy
        with work that reads a known tensor freed just before (the race the stream protocol prevents); compare each
        frame with libjpeg-turbo's decode and the tensor's sum with its known value.  Any difference or error turns
        nvJPEG off.  Also warms the decoder up at the largest batch.  Returns (and keeps) the figures."""
        result = SelfTest(frames=batch)
        self.self_test_result = result
        if not self.enabled:
            result.error = self.off_reason
            return result
        try:
            self._run_self_test(batch, result)
        except Exception as exc:  # noqa: BLE001 - any failure means nvJPEG is not to be trusted here
            result.error = f"{type(exc).__name__}: {exc}"[:300]
        result.passed = result.error is None and result.corrupted == 0 and bool(result.bait_intact)
        if not result.passed:
            self.turn_off(f"self-test failed: {result.error or f'{result.corrupted} of {batch} frames differ'}"
                          + ("" if result.bait_intact is not False else "; a tensor in use was overwritten"))
        log.info("nvJPEG self-test on %s: %s", self.device, result.as_dict())
        return result

    def _run_self_test(self, batch: int, result: SelfTest) -> None:
        import torch

        from server.codec import Encoded
        from server.protocol import ImageFormat

        payloads, expected = known_batch(batch)
        height, width = SELF_TEST_SIZE
        default = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(default):
            bait = torch.full((3, height, width), 77, dtype=torch.uint8, device=self.device)  # one frame's bytes
            torch.cuda._sleep(SPIN_CYCLES)  # the default stream is busy ...
            checksum = bait.sum(dtype=torch.int64)  # ... and reads `bait` only after the spin
            del bait  # freed on the default stream while that read is still queued
        frames = [Encoded(payload, ImageFormat.JPEG, width, height) for payload in payloads]
        failure = self.decode(frames)
        if failure is not None:
            raise failure.error
        with torch.cuda.stream(self.consumer):  # read them as the consumer does
            decoded = [torch.as_tensor(frame.decoded).cpu().numpy() for frame in frames]
        result.bait_intact = int(checksum.item()) == 77 * 3 * height * width
        compare(decoded, expected, result)


def compare(decoded: Sequence[np.ndarray], expected: Sequence[np.ndarray], result: SelfTest) -> None:
    """nvJPEG's frames against libjpeg-turbo's, row by row, into `result`: the largest difference, the worst frame's
    mean difference, and the frames whose mean is beyond the tolerance (another frame's pixels, a half-written one)."""
    diffs = [np.abs(got.astype(np.int16) - want.astype(np.int16)) for got, want in zip(decoded, expected, strict=True)]
    result.max_abs_diff = int(max(d.max() for d in diffs))
    result.mean_abs_diff = round(float(max(d.mean() for d in diffs)), 3)
    result.corrupted = int(sum(d.mean() > SELF_TEST_MEAN_TOLERANCE for d in diffs))


def known_batch(batch: int) -> tuple[list[bytes], list[np.ndarray]]:
    """`batch` distinct webcam-like frames (480x640, JPEG q80, 4:2:0 as browsers send them) and libjpeg-turbo's decode
    of each (uint8 (H, W, 3))."""
    height, width = SELF_TEST_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    payloads, decoded = [], []
    for i in range(batch):
        rng = np.random.default_rng(i)
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < (60 + 5 * i) ** 2)[..., None]
        rgb = np.stack([x / width * 200 + 20 * i % 50, y / height * 180, (x + y) / (width + height) * 150], -1)
        rgb = np.where(disc, rng.uniform(40, 220, 3), rgb) + rng.normal(0, 2, (height, width, 3))
        payload = simplejpeg.encode_jpeg(rgb.clip(0, 255).astype(np.uint8), 80, "RGB", "420")
        payloads.append(payload)
        decoded.append(simplejpeg.decode_jpeg(payload, "RGB"))
    return payloads, decoded
