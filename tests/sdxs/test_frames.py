"""Frames squared once as tensor ops (sdxs.frames), batch-size buckets (sdxs.buckets), and the tensor path against
the PIL path it replaced (``pipe.legacy``) on the tiny model."""

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
        padded = pipe(reqs, output_type="np")  # 3 text/image rows and 3 control rows: both run as 4
    finally:
        pipe.buckets = None
        del pipe.unet.forward
    assert calls == [4, 4]
    for a, b in zip(plain, padded):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_tensor_path_equals_the_pil_path_it_replaced(pipe, at_size):
    reqs = requests(*at_size)
    new = pipe(reqs, output_type="np")
    pipe.legacy = True
    try:
        old = pipe(reqs, output_type="np")
        old_controls = [np.asarray(pipe.control_image(r)) for r in reqs[3:]]
    finally:
        pipe.legacy = False
    for request, a, b in zip(reqs, new, old):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, request.params.mode
    for request, expected in zip(reqs[3:], old_controls):  # edges identical; sketch grey: PIL's vs OpenCV's luma
        got = np.asarray(pipe.control_image(request)).astype(int)
        assert np.abs(got - expected).max() <= (0 if request.params.mode == "edges" else 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_equals_the_pil_path_on_the_cpu(tiny_model_dir, pipe, at_size):
    """The same parity on a GPU (staging on a side stream, pinned host buffer), TF32 off so both compute in fp32."""
    from sdxs import SDXSPipeline

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    gpu = SDXSPipeline.from_pretrained(str(tiny_model_dir), device="cuda", dtype="float32")
    reqs = requests(*at_size)
    pipe.legacy = True
    try:
        old = pipe(reqs, output_type="np")
    finally:
        pipe.legacy = False
    gpu.buckets = (1, 4, 8)
    for request, a, b in zip(reqs, gpu(reqs, output_type="np"), old):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, request.params.mode
