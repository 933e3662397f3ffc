"""Image-text folders and HF datasets -> cached latents + prompt embeddings; deterministic batches; control images."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from training.config import DataConfig
from training.control import extract_control
from training.data import Bank, iter_folder, load_bank, to_pixels
from training.models import freeze, load_part, load_text_encoder


@pytest.fixture(scope="module")
def parts(toy):
    return freeze(load_part(toy.teacher, "vae")), load_text_encoder(toy.teacher, torch.device("cpu"))


def test_folder_is_encoded_once_and_cached(toy, parts, tmp_path):
    vae, text = parts
    cfg = DataConfig(kind="folder", path=str(toy.data), resolution=32, cache_dir=str(tmp_path))
    bank = load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path)
    assert len(bank) == 24 and bank.tensors["latents"].shape == (24, 4, 8, 8)
    assert bank.tensors["embeds"].shape[0] == 24 and bank.tensors["pixels"].shape == (24, 3, 32, 32)
    assert bank.extras["captions"][0].endswith(": a photo of the digit " + bank.extras["captions"][0][0])
    files = list(tmp_path.glob("latents-*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime
    load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path)
    assert files[0].stat().st_mtime == mtime  # reused, not rebuilt
    images = list(iter_folder(toy.data))
    assert len(images) == 24 and isinstance(images[0][0], Image.Image)


def test_hf_datasets_rows(parts, tmp_path, monkeypatch):
    rows = [{"img": Image.fromarray(np.full((40, 48, 3), i * 30, np.uint8)), "caption": f"row {i}"} for i in range(5)]
    calls = []

    def load_dataset(path, split, streaming):
        calls.append(streaming)
        return iter(rows) if streaming else rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    vae, text = parts
    for streaming in (False, True):
        cfg = DataConfig(
            kind="hf",
            path="someone/data",
            image_column="img",
            caption_column="caption",
            resolution=32,
            cache_dir=str(tmp_path / str(streaming)),
            max_samples=4,
            streaming=streaming,
        )
        bank = load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path)
        assert len(bank) == 4 and bank.extras["captions"] == ["row 0", "row 1", "row 2", "row 3"]
    assert calls == [False, True]  # streamed: never downloaded whole


def _write_shards(folder, out, per_shard: int) -> str:
    """The folder's (image, caption) files as WebDataset tar shards of ``per_shard`` samples; returns the pattern."""
    import tarfile

    images = sorted(p for p in folder.rglob("*.png"))
    shards = [images[i : i + per_shard] for i in range(0, len(images), per_shard)]
    for n, shard in enumerate(shards):
        with tarfile.open(out / f"data-{n:03d}.tar", "w") as tar:
            for k, image in enumerate(shard):
                key = f"{n:03d}{k:04d}"
                tar.add(image, arcname=f"{key}.png")
                tar.add(image.with_suffix(".txt"), arcname=f"{key}.txt")
    return str(out / f"data-{{000..{len(shards) - 1:03d}}}.tar")


def test_webdataset_shards_stream_into_the_same_cache_as_the_folder(toy, parts, tmp_path):
    vae, text = parts
    pattern = _write_shards(toy.data, tmp_path, per_shard=10)  # 24 samples: shards of 10, 10 and 4
    folder = load_bank(DataConfig(kind="folder", path=str(toy.data), resolution=32, cache_dir=str(tmp_path / "f")),
                       vae, text, Accelerator(cpu=True), tmp_path)  # fmt: skip
    for path in (pattern, str(tmp_path / "data-*.tar")):
        cfg = DataConfig(kind="webdataset", path=path, resolution=32, cache_dir=str(tmp_path / "w" / path[-6:]))
        shards = load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path)
        assert shards.extras["captions"] == folder.extras["captions"]
        assert all(torch.equal(shards.tensors[k], folder.tensors[k]) for k in ("latents", "embeds", "pixels"))
    with pytest.raises(ValueError, match="missing"):
        load_bank(DataConfig(kind="webdataset", path=str(tmp_path / "data-{000..009}.tar"), resolution=32),
                  vae, text, Accelerator(cpu=True), tmp_path / "x")  # fmt: skip
    with pytest.raises(ValueError, match="data.kind 'tfrecord'"):
        load_bank(DataConfig(kind="tfrecord", path="x", resolution=32), vae, text, Accelerator(cpu=True), tmp_path)


def test_images_are_squared_as_the_server_squares_frames():
    """Centre crop to the short side, then one resize (``sdxs.frames.square``), mapped to [-1, 1]: the side margins of
    a wide image go, a grey image becomes RGB, and an image already at the resolution comes back exactly."""
    wide = np.zeros((64, 128, 3), np.uint8)
    wide[:, :32], wide[:, 32:96, 2], wide[:, 96:] = 255, 255, 255  # white margins around a blue centre
    pixels = to_pixels(Image.fromarray(wide), 32)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    assert torch.equal(pixels, torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).expand(3, 32, 32))
    ramp = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 256
    grey = to_pixels(Image.fromarray(ramp.astype(np.uint8)), 32)
    assert torch.equal(grey, torch.from_numpy(ramp.astype(np.float32) / 127.5 - 1).expand(3, 32, 32))


def test_bank_batches_follow_the_generator():
    bank = Bank({"x": torch.arange(10.0)[:, None], "i": torch.arange(10)})
    a = bank.sample(4, torch.Generator().manual_seed(1))
    b = bank.sample(4, torch.Generator().manual_seed(1))
    assert torch.equal(a["x"], b["x"]) and a["i"].dtype == torch.long


@pytest.mark.parametrize("kind", ["canny", "sobel", "sketch"])
def test_control_images(kind):
    pixels = torch.full((2, 3, 32, 32), -1.0)
    pixels[:, :, 8:24, 8:24] = 1.0
    control = extract_control(pixels, kind)
    assert control.shape == (2, 3, 32, 32) and control.min() >= 0 and control.max() <= 1
    if kind != "sketch":
        assert control[0, 0, 16, 16] == 0 and control[0, 0].sum() > 0  # edges on the square's border only


def test_float16_embeddings_halve_the_cache_and_batches_still_come_out_float32(toy, parts, tmp_path):
    vae, text = parts
    common = dict(kind="folder", path=str(toy.data), resolution=32, cache_dir=str(tmp_path))
    full = load_bank(DataConfig(**common), vae, text, Accelerator(cpu=True), tmp_path)
    half = load_bank(DataConfig(**common, embeds_dtype="float16"), vae, text, Accelerator(cpu=True), tmp_path)
    assert len(list(tmp_path.glob("latents-*.pt"))) == 2  # one cache per dtype
    assert full.tensors["embeds"].dtype == torch.float32 and half.tensors["embeds"].dtype == torch.float16
    batch = half.sample(4, torch.Generator().manual_seed(0))
    assert batch["embeds"].dtype == torch.float32
    assert torch.allclose(half.tensors["embeds"].float(), full.tensors["embeds"], atol=1e-2)
    with pytest.raises(ValueError, match="embeds_dtype"):
        load_bank(DataConfig(**common, embeds_dtype="int8"), vae, text, Accelerator(cpu=True), tmp_path)


def test_prompts_only_data_is_drawn_by_the_teacher_and_cached(toy, parts, tmp_path):
    """``kind: prompts`` (data-free): the teacher samples one image per prompt; latents, embeddings and decoded pixels
    are cached like a folder's, and a stage trains on them."""
    from training.mini.models import RECIPE_DICT
    from training.stages import distill_unet

    vae, text = parts
    unet, scheduler = load_part(toy.teacher, "unet"), load_part(toy.teacher, "scheduler")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"{k}: a photo of the digit {k}\n" for k in range(5)) + "\n")
    cfg = DataConfig(kind="prompts", path=str(prompts), resolution=32, prompt_steps=2, prompt_guidance=2.0)
    teacher = (unet, scheduler.config, text([""]))
    bank = load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path / "cache", teacher=teacher)
    assert len(bank) == 5 and bank.tensors["latents"].shape == (5, 4, 8, 8)
    assert bank.tensors["pixels"].shape == (5, 3, 32, 32) and bank.extras["captions"][4].startswith("4:")
    again = load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path / "cache", teacher=teacher)
    assert torch.equal(again.tensors["latents"], bank.tensors["latents"])  # the same cache file
    with pytest.raises(ValueError, match="needs the teacher"):
        load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path / "cache")
    data = dict(kind="prompts", path=str(prompts), resolution=32, prompt_steps=2, cache_dir=str(tmp_path / "c2"))
    distill_unet.main(
        [
            "--set",
            f"output_dir={tmp_path / 'run'}",
            "--set",
            f"teacher={toy.teacher}",
            "--set",
            "max_steps=2",
            "--set",
            "batch_size=2",
            "--set",
            "log_every=1",
            "--set",
            "progress=false",
            "--set",
            "validation_steps=2",
            "--set",
            "num_validation=2",
            "--set",
            f"recipe={json.dumps(RECIPE_DICT)}",
            "--set",
            f"data={json.dumps(data)}",
        ]
    )
    assert len((tmp_path / "run" / "losses.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("kind", ["folder", "prompts"])
def test_ranks_encode_their_chunks_and_the_merged_shards_equal_one_process(toy, parts, tmp_path, kind):
    """Each of ``world`` ranks makes every world-th chunk of rows (the teacher's noise is drawn for every chunk), and
    ``merge_shards`` puts them in row order: the same cache as one process."""
    from training.data import build_rows, merge_shards

    vae, text = parts
    if kind == "prompts":
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("".join(f"{k % 10}: a photo of the digit {k % 10}\n" for k in range(11)))
        cfg = DataConfig(kind="prompts", path=str(prompts), resolution=32, prompt_steps=1)
        teacher = (load_part(toy.teacher, "unet"), load_part(toy.teacher, "scheduler").config, text([""]))
    else:
        cfg, teacher = DataConfig(kind="folder", path=str(toy.data), resolution=32, max_samples=11), None
    one = build_rows(cfg, vae, text, batch_size=4, teacher=teacher)
    shards = [build_rows(cfg, vae, text, batch_size=4, teacher=teacher, rank=r, world=3) for r in range(3)]
    assert [s["row"].tolist() for s in shards] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    merged = merge_shards(shards)
    assert merged["captions"] == one["captions"] and len(merged["captions"]) == 11
    assert all(torch.equal(merged[k], one[k]) for k in ("latents", "embeds", "pixels"))


def test_a_cache_made_without_pixels_is_made_again_for_a_stage_that_needs_them(toy, parts, tmp_path):
    """Stages 4/5 cache no pixels; stage 3 (controls from the pixels) sharing that cache must not find it lacking."""
    vae, text = parts
    cfg = DataConfig(kind="folder", path=str(toy.data), resolution=32, cache_dir=str(tmp_path))
    lean = load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path, keep_pixels=False)
    assert "pixels" not in lean.tensors
    full = load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path, keep_pixels=True)
    assert full.tensors["pixels"].shape == (24, 3, 32, 32)
    assert torch.equal(full.tensors["latents"], lean.tensors["latents"])
    assert "pixels" in load_bank(cfg, vae, text, Accelerator(cpu=True), tmp_path, keep_pixels=False).tensors
