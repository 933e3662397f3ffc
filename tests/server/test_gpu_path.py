"""The CUDA path's rules, checked on the CPU where they can be: nvJPEG's stream protocol (with recording doubles of
torch's stream API), which frames nvJPEG gets, when it steps aside, the self-test's verdict, warm-up passes until
nothing compiles or records, and the eager fallback when CUDA graphs fail.  The same code on a real GPU: the CUDA
tests at the end (skipped here) and bench/gpu.sh."""

from __future__ import annotations

import io
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import simplejpeg
import torch
from fake_engine import FakeEngine
from PIL import Image
from torch import nn

from sdxs.pipeline import GraphsNotSettled, SDXSPipeline, WarmupReport
from server import codec, nvjpeg
from server.protocol import ImageFormat
from server.warmup import DeviceFeatures, warm_up

pytestmark = pytest.mark.timeout(60)


def jpeg(seed: int = 0, progressive: bool = False, mode: str = "RGB") -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    if not progressive and mode == "RGB":
        return simplejpeg.encode_jpeg(rgb, 85, "RGB", "420")
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, "JPEG", quality=85, progressive=progressive)
    return buffer.getvalue()


def with_byte(payload: bytes, marker: int, offset: int, value: int) -> bytes:
    """`payload` with the byte `offset` after the first `marker` changed to `value`."""
    i = payload.index(bytes([0xFF, marker]))
    return payload[: i + offset] + bytes([value]) + payload[i + offset + 1 :]


# --- which frames nvJPEG gets ---------------------------------------------------------------------------------------

def test_only_huffman_8bit_grey_or_ycbcr_jpegs_go_to_nvjpeg():
    baseline = jpeg()
    assert nvjpeg.jpeg_frame(baseline) == (0xC0, 8, 3) and nvjpeg.eligible(baseline)
    assert nvjpeg.eligible(jpeg(progressive=True)) and nvjpeg.eligible(jpeg(mode="L"))
    assert not nvjpeg.eligible(jpeg(mode="CMYK"))  # four components
    assert not nvjpeg.eligible(with_byte(baseline, 0xC0, 1, 0xC9))  # arithmetic coding
    assert not nvjpeg.eligible(with_byte(baseline, 0xC0, 4, 12))  # 12-bit samples
    for junk in (b"", b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02", b"GIF89a", baseline[:20]):
        assert not nvjpeg.eligible(junk)


# --- the stream protocol, with recording doubles --------------------------------------------------------------------

class Recorder:
    """Doubles for torch.cuda's stream API that log the order of calls."""

    def __init__(self):
        self.log: list[str] = []

    def stream(self, name: str):
        log = self.log

        class Stream:
            def synchronize(self):
                log.append(f"{name}.synchronize")

            def record_event(self):
                log.append(f"{name}.record_event")
                return f"event of {name}"

            def wait_event(self, event):
                log.append(f"{name}.wait_event({event})")

        return Stream()

    @contextmanager
    def current(self, stream):
        self.log.append("enter decode stream")
        yield
        self.log.append("leave decode stream")


class Output:
    def __init__(self, log, value):
        self.log, self.value = log, value

    def record_stream(self, stream):
        self.log.append(f"record_stream({self.value})")

    def permute(self, *dims):
        return self.value


def test_nvjpeg_decodes_on_its_own_synchronised_stream_and_hands_over_with_an_event(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(torch.cuda, "stream", rec.current)

    def decode_jpeg(data, device):
        rec.log.append(f"decode {len(data)}")
        return [Output(rec.log, i) for i in range(len(data))]

    gpu = nvjpeg.NvJpeg("cpu", rec.stream("consumer"), decode_jpeg, stream=rec.stream("decode"))
    frames = [codec.Encoded(jpeg(i), ImageFormat.JPEG, 64, 48) for i in range(2)]
    assert gpu.decode(frames) is None
    assert rec.log == ["decode.synchronize", "enter decode stream", "decode 2", "decode.record_event",
                       "leave decode stream", "consumer.wait_event(event of decode)", "record_stream(0)",
                       "record_stream(1)"]
    assert [f.decoded for f in frames] == [0, 1]


# --- stepping aside -------------------------------------------------------------------------------------------------

class FakeGpu(nvjpeg.NvJpeg):
    """nvJPEG whose device work is replaced: decodes with libjpeg-turbo, or raises when `broken`."""

    broken = False

    def _decode_on_own_stream(self, payloads):
        if self.broken:
            raise RuntimeError("Error while decoding JPEG images: nvjpegStatus 7")
        return [torch.from_numpy(simplejpeg.decode_jpeg(p, "RGB")).permute(2, 0, 1) for p in payloads]


def encoded(payload: bytes, fmt: ImageFormat = ImageFormat.JPEG) -> codec.Encoded:
    return codec.probe(payload, fmt, codec.ImageLimits())


def test_decode_frames_uses_nvjpeg_for_eligible_jpegs_and_the_cpu_for_the_rest():
    gpu = FakeGpu("cpu", None)
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(png, "PNG")
    frames = [encoded(jpeg(0)), encoded(jpeg(1, mode="CMYK")), encoded(png.getvalue(), ImageFormat.PNG)]
    out = codec.decode_frames(frames, 16, gpu)
    assert isinstance(out[0], torch.Tensor) and out[0].shape == (48, 64, 3)  # nvJPEG's
    assert isinstance(out[1], np.ndarray) and isinstance(out[2], np.ndarray)  # the CPU's
    assert gpu.enabled


def test_nvjpeg_turns_off_when_it_fails_on_frames_the_cpu_decodes_and_stays_on_for_bad_input(caplog):
    gpu = FakeGpu("cpu", None)
    gpu.broken = True
    cut = jpeg(2)[:-200]  # the header reads, the body is cut short: bad input, whoever decodes it
    out = codec.decode_frames([encoded(jpeg(0)), encoded(cut)], 16, gpu)
    assert isinstance(out[0], np.ndarray) and isinstance(out[1], codec.ProtocolError)
    assert gpu.enabled  # the failure may have been the client's
    out = codec.decode_frames([encoded(jpeg(3)), encoded(jpeg(4))], 16, gpu)
    assert all(isinstance(o, np.ndarray) for o in out)  # served by the CPU ...
    assert not gpu.enabled and "libjpeg-turbo decodes" in gpu.off_reason  # ... and nvJPEG is off for good
    assert gpu.status().startswith("cpu (") and "nvJPEG turned off" in caplog.text
    gpu.broken = False
    assert isinstance(codec.decode_frames([encoded(jpeg(5))], 16, gpu)[0], np.ndarray)  # not tried again


def test_the_self_test_turns_nvjpeg_off_on_any_difference(monkeypatch):
    payloads, expected = nvjpeg.known_batch(3)
    assert len(set(payloads)) == 3 and all(e.shape == (*nvjpeg.SELF_TEST_SIZE, 3) for e in expected)

    def run(gpu, batch, result):  # the device half: decoded frames compared with libjpeg-turbo's, bait intact
        frames = [codec.Encoded(p, ImageFormat.JPEG, 640, 480) for p in payloads[:batch]]
        gpu.decode(frames)
        result.bait_intact = True
        nvjpeg.compare([f.decoded.numpy() for f in frames], expected[:batch], result)

    monkeypatch.setattr(FakeGpu, "_run_self_test", run)
    good = FakeGpu("cpu", None)
    assert good.self_test(3).passed and good.enabled

    class Swapped(FakeGpu):  # another frame's pixels in a row: what the stream race does
        def _decode_on_own_stream(self, payloads):
            return super()._decode_on_own_stream(payloads[::-1])

    bad = Swapped("cpu", None)
    result = bad.self_test(3)
    assert not result.passed and result.corrupted == 2 and not bad.enabled and "self-test" in bad.off_reason


# --- warm-up passes and the eager fallback --------------------------------------------------------------------------

class ToyPipe:
    """SDXSPipeline.warmup over a toy path: a compiled (dynamo, no inductor) layer; `drift` recompiles every call."""

    compiled, graphs = True, False
    warmup = SDXSPipeline.warmup

    def __init__(self, drift: bool = False):
        self.net = torch.compile(nn.Linear(4, 4), backend="eager")
        self.scale = torch.compile(self._scale, backend="eager")
        self.drift, self.tag = drift, f"toy-{id(self)}"

    def _scale(self, x):
        return x * len(self.tag)

    def warmup_batches(self, sizes):
        return [[None] * n for n in sizes]

    def __call__(self, requests):
        if self.drift:
            self.tag += "+"
        self.scale(self.net(torch.zeros(len(requests), 4)))


def test_warm_up_repeats_passes_until_nothing_compiles_and_refuses_when_it_never_settles():
    report = ToyPipe().warmup((1, 2))
    assert report.passes[0].compiles > 0 and report.passes[-1].quiet and len(report.passes) == 2
    with pytest.raises(GraphsNotSettled) as err:
        ToyPipe(drift=True).warmup((1,), max_passes=3)
    assert len(err.value.report.passes) == 3 and err.value.report.passes[-1].compiles == 1


class CompiledPipe(FakeEngine):
    """A compiled engine whose warm-up fails (`fail`: every one, or only the compiled one)."""

    def __init__(self, fail: str):
        super().__init__()
        self.fail, self.compiled, self.graphs, self.buckets, self.warmed = fail, True, True, (1, 2), []

    def warmup(self, sizes):
        self.warmed.append((self.compiled, tuple(sizes)))
        if self.fail == "always" or self.compiled:
            raise GraphsNotSettled(WarmupReport([SimpleNamespace(as_dict=lambda: {"recordings": 1})]))
        return WarmupReport(seconds=0.1)

    def use_eager(self):
        self.compiled = self.graphs = False
        self.buckets = None


def test_a_failed_graph_warm_up_steps_aside_to_the_eager_modules(caplog):
    pipe, features = CompiledPipe("compiled"), DeviceFeatures()
    warm_up(pipe, features, max_batch=2)
    assert pipe.warmed == [(True, (1, 2)), (False, (1,))] and not pipe.compiled
    assert features.cuda_graphs.startswith("off (GraphsNotSettled") and not features.enabled("cuda_graphs")
    assert features.as_dict()["warmup"]["seconds"] == 0.1 and "serving eagerly instead" in caplog.text
    with pytest.raises(GraphsNotSettled):  # the eager pipeline failing too fails the device
        warm_up(CompiledPipe("always"), DeviceFeatures(), max_batch=2)


# --- on a real GPU --------------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_nvjpeg_self_test_on_the_gpu_passes_with_the_stream_protocol():
    pytest.importorskip("torchvision")
    consumer = torch.cuda.Stream()
    gpu = nvjpeg.NvJpeg.create("cuda", consumer)
    result = gpu.self_test(16)
    assert result.passed, result.as_dict()
    assert result.bait_intact and result.corrupted == 0 and result.mean_abs_diff <= nvjpeg.SELF_TEST_MEAN_TOLERANCE


@pytest.mark.cuda
def test_graphs_settle_and_match_the_eager_pipeline(tiny_model_dir):
    """Compiled with CUDA graphs: the warm-up's last pass records nothing, and every path at batch 1, 3 and 16 equals
    the eager pipeline within one level."""
    from sdxs import GenerationParams, GenerationRequest

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    eager = SDXSPipeline.from_pretrained(str(tiny_model_dir), device="cuda", dtype="float32")
    graphs = SDXSPipeline.from_pretrained(str(tiny_model_dir), device="cuda", dtype="float32",
                                          compile="reduce-overhead")
    graphs.buckets = (1, 2, 4, 8, 16)
    report = graphs.warmup(graphs.buckets)
    assert report.passes[-1].quiet and report.passes[-1].skips == 0, report.as_dict()
    still = np.random.default_rng(0).integers(0, 255, (graphs.size, graphs.size, 3), dtype=np.uint8)
    for mode in ("text", "image", "sketch", "edges"):
        for n in (1, 3, 16):
            reqs = [GenerationRequest(GenerationParams(mode=mode, seed=i), None if mode == "text" else still)
                    for i in range(n)]
            for a, b in zip(graphs(reqs, output_type="np"), eager(reqs, output_type="np")):
                assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, (mode, n)
