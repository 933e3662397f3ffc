"""Frames squared once as tensor ops (sdxs.frames), mixed host/device batches, batch-size buckets (sdxs.buckets) and
the batch keys on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdxs import GenerationParams, GenerationRequest, InvalidRequest, frames
from sdxs.buckets import bucket, default_buckets, pad_rows


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def test_square_crops_the_centre_and_resizes_like_pil():
    wide = gradient(120, 200)
    out = frames.square([wide], 64)
    assert out.shape == (1, 3, 64, 64) and out.dtype == torch.uint8
    centre = Image.fromarray(wide[:, 40:160]).resize((64, 64), Image.Resampling.BILINEAR, reducing_gap=None)
    diff = np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - np.asarray(centre).astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.5  # PIL's antialiased bilinear filter, in torch
    same = gradient(64, 64)
    assert np.array_equal(frames.square([same], 64)[0].permute(1, 2, 0).numpy(), same)  # at size: untouched


def test_square_takes_every_public_input_kind_in_one_batch():
    rgb = gradient(48, 64)
    inputs = [rgb, Image.fromarray(rgb), torch.from_numpy(rgb), np.dstack([rgb, np.zeros((48, 64), np.uint8)]),
              rgb[..., 0], gradient(80, 40)]
    out = frames.square(inputs, 32)
    for i in range(1, 4):
        assert torch.equal(out[i], out[0]), i
    assert torch.equal(out[4], out[4][:1].expand(3, -1, -1))  # grey -> three equal channels
    assert out.shape == (6, 3, 32, 32)
    with pytest.raises(InvalidRequest):
        frames.square([np.zeros((8, 64, 3), np.uint8)], 32)
    with pytest.raises(InvalidRequest):
        frames.square([np.zeros((32, 32, 3), np.float32)], 32)


def test_float_resize_path_agrees_with_the_uint8_one():
    """Off the CPU the resize runs in float (no uint8 kernel there): within one level of the CPU's."""
    batch = torch.from_numpy(np.stack([gradient(120, 160)] * 2)).permute(0, 3, 1, 2)
    fast = frames.square_batch(batch, 64)
    slow = torch.nn.functional.interpolate(batch[..., 20:140].float(), size=(64, 64), mode="bilinear",
                                           antialias=True).round().clamp(0, 255).byte()
    assert (fast.int() - slow.int()).abs().max() <= 1


def test_buckets_and_padding():
    assert default_buckets(8) == (1, 2, 4, 8) and default_buckets(12) == (1, 2, 4, 8, 12)
    assert [bucket(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]
    assert bucket(3, None) == 3
    t = torch.arange(6.0).view(3, 2)
    assert pad_rows(t, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert pad_rows(t, 3) is t and pad_rows(None, 4) is None


def requests(photo, sketch):
    make = lambda image=None, **kw: GenerationRequest(GenerationParams(**kw), image)  # noqa: E731
    return [
        make(prompt="a cat", seed=1, mode="text"),
        make(photo, prompt="a dog", seed=2, mode="image", strength=0.5),
        make(photo, prompt="a cat", seed=4, mode="image", strength=0.8),
        make(sketch, prompt="a tree", seed=3, mode="sketch", control_scale=0.9),
        make(photo, prompt="a robot", seed=5, mode="edges", control_scale=0.4, edge_low=40, edge_high=90),
        make(sketch, prompt="a boat", seed=6, mode="edges"),
    ]


@pytest.fixture(scope="module")
def at_size(pipe, photo, sketch):
    """The fixtures at the served size: both paths then see the same pixels (their resize filters differ)."""
    return [np.asarray(img.convert("RGB").resize((pipe.size, pipe.size))) for img in (photo, sketch)]


def test_padding_to_a_bucket_leaves_the_real_rows_unchanged(pipe, at_size):
    reqs = requests(*at_size)
    plain = pipe(reqs, output_type="np")
    calls = []
    original = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append(a[0].shape[0]) or original(*a, **k)
    pipe.buckets = (1, 4, 8)
    try:
        padded = pipe(reqs, output_type="np")
    finally:
        pipe.buckets = None
        del pipe.unet.forward
    assert calls == [1, 4, 4]  # one text row, two image rows, three control rows: each padded to its bucket
    for a, b in zip(plain, padded):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_batch_keys_follow_the_paths_through_the_models(pipe, at_size):
    """Text, image and ControlNet requests never share a forward (a mixed text/image batch would run the encoder at
    another batch size than the UNet: a CUDA-graph path no warm-up covers); sketch and edges do."""
    keys = [pipe.batch_key(r) for r in requests(*at_size)]
    assert keys == [("text", None), ("image", None), ("image", None), ("control", None), ("control", None),
                    ("control", None)]
    batches = pipe.warmup_batches((1, 3))  # each path plainly and with the attention bank (sdxs.bank: UNet inputs)
    assert [(pipe.batch_key(b[0])[0], len(b), b[0].params.bank > 0) for b in batches] == [
        (path, n, banked) for path in ("text", "image", "control") for n in (1, 3) for banked in (False, True)]
    assert all(len({id(r.temporal) for r in b}) == len(b) for b in batches if b[0].temporal is not None)


def test_mixed_host_and_device_frames_upload_as_one_batch():
    """nvJPEG hands over device tensors while PNG frames and Gradio requests are host arrays: one batch of one shape
    may hold both (a meta tensor stands in for a CUDA one on the CPU)."""
    meta = frames.upload([torch.empty((20, 30, 3), dtype=torch.uint8, device="meta"), np.zeros((20, 30, 3), np.uint8)],
                         torch.device("meta"))
    assert meta.shape == (2, 3, 20, 30) and meta.device.type == "meta"
    a, b = gradient(20, 30), gradient(20, 30)[::-1].copy()
    out = frames.upload([a, torch.from_numpy(b), a], torch.device("cpu"))
    assert [torch.equal(out[i].permute(1, 2, 0), torch.from_numpy(x)) for i, x in enumerate((a, b, a))] == [True] * 3


@pytest.mark.cuda
def test_cuda_pipeline_equals_the_cpu_pipeline(tiny_model_dir, pipe, at_size):
    """The same requests on a GPU (staging on a side stream, pinned host buffer, buckets), TF32 off so both compute in
    fp32: within one level of the CPU's frames."""
    from sdxs import SDXSPipeline

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    gpu = SDXSPipeline.from_pretrained(str(tiny_model_dir), device="cuda", dtype="float32")
    reqs = requests(*at_size)
    gpu.buckets = (1, 4, 8)
    for request, a, b in zip(reqs, gpu(reqs, output_type="np"), pipe(reqs, output_type="np")):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, request.params.mode
