"""Model-core cost of each SDXS variant against its teacher, at the native resolution, random weights, one process.

    python bench/variants.py                                  # all variants, batch 1 (CUDA: fp16)
    python bench/variants.py --variants sdxs-512-dreamshaper --batches 1 4 --compile

Rows: one UNet forward of the student and of its teacher (the teacher's per-step cost; a 32-NFE sampler pays it 32
times), the tiny image decoder and the teacher's VAE decoder on the same latents, and the one-step frame they make
(student UNet + tiny decoder; the prompt embedding is cached in serving).  The paper's latency table (A100, batch 1:
SDXS-512 UNet 6.3 ms + decoder 1.7 ms, SDXS-1024 24 + 6.1 ms; arXiv 2403.16627) is printed beside ours.
Weights are random: the cost does not depend on their values.  Prints a table and writes JSON under
``bench/results/``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import print_table, write_results  # noqa: E402
from sdxs.configs import VARIANTS  # noqa: E402
from sdxs.decoder import build_tiny_autoencoder  # noqa: E402
from sdxs.device import DTYPES, resolve_device  # noqa: E402
from sdxs.inventory import unet_config  # noqa: E402

# The paper's A100 batch-1 milliseconds (UNet per step, decoder), for the printed comparison only.
PAPER_MS = {"sdxs-512-dreamshaper": (6.3, 1.7), "sdxs-512-0.9": (6.3, 1.7), "sd21-base": (16.0, 18.0),
            "sdxs-1024": (24.0, 6.1), "sdxl": (56.0, 73.0)}


def unet_inputs(config: dict, batch: int, resolution: int, device, dtype) -> dict:
    """Random UNet inputs at ``resolution`` pixels: latents (B, 4, r/8, r/8), prompt states (B, 77, D), and SDXL's
    pooled text embeds (B, 1280) + size ids (B, 6) when the config takes them."""
    side = resolution // 8
    kwargs = dict(
        sample=torch.randn(batch, config.get("in_channels", 4), side, side, device=device, dtype=dtype),
        timestep=torch.full((batch,), 999, device=device, dtype=torch.long),
        encoder_hidden_states=torch.randn(batch, 77, config["cross_attention_dim"], device=device, dtype=dtype),
    )
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(batch, pooled, device=device, dtype=dtype),
            time_ids=torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch, device=device,
                                  dtype=dtype),
        )
    return kwargs


def build(factory, device, dtype, channels_last: bool, compile_mode: str | None) -> torch.nn.Module:
    """Construct on ``device`` directly (random init there: fast for the 2.6B SDXL UNet), then cast and place."""
    with torch.device(device):
        module = factory()
    module = module.to(dtype).eval().requires_grad_(False)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return torch.compile(module, mode=compile_mode) if compile_mode else module


def timed_ms(call, device, warmup: int, iters: int) -> float:
    """Median wall milliseconds of ``call`` (synchronised on CUDA), after ``warmup`` untimed calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        sync()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            call()
            sync()
            times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def unet_ms(name: str, batch: int, resolution: int, args, device, dtype) -> float:
    from diffusers import UNet2DConditionModel

    config = unet_config(name)
    unet = build(lambda: UNet2DConditionModel.from_config(config), device, dtype, args.channels_last,
                 args.compile_mode if args.compile else None)
    inputs = unet_inputs(config, batch, resolution, device, dtype)
    return timed_ms(lambda: unet(**inputs), device, args.warmup, args.iters)


def decoder_ms(kind: str, batch: int, resolution: int, args, device, dtype) -> float:
    """The tiny decoder (``tiny``) or an SD/SDXL-shaped VAE decoder (``vae``) on (B, 4, r/8, r/8) latents."""
    from diffusers import AutoencoderKL

    factory = (lambda: build_tiny_autoencoder().decoder) if kind == "tiny" else (lambda: AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4).decoder)
    decoder = build(factory, device, dtype, args.channels_last, args.compile_mode if args.compile else None)
    latents = torch.randn(batch, 4, resolution // 8, resolution // 8, device=device, dtype=dtype)
    return timed_ms(lambda: decoder(latents), device, args.warmup, args.iters)


def _free(device) -> None:
    """Release the last module's memory before the next is built (the SDXL UNet is 5 GB in fp16)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["sdxs-512-dreamshaper", "sdxs-1024"], choices=list(VARIANTS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--dtype", default=None, help="default: float16 on CUDA, bfloat16 on CPU")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher UNets and VAE decoders")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--compile", action="store_true", help="torch.compile every module (adds its rows' names)")
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    parser.add_argument("--name", default=None, help="label for the JSON file name")
    args = parser.parse_args(argv)

    device = resolve_device("auto")
    dtype = DTYPES[args.dtype or ("float16" if device.type == "cuda" else "bfloat16")]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for variant in args.variants:
        teacher = VARIANTS[variant].teacher
        resolution = 1024 if teacher == "sdxl" else 512
        for batch in args.batches:
            row = dict(variant=variant, teacher=teacher, resolution=resolution, batch=batch,
                       dtype=str(dtype).removeprefix("torch."), compiled=args.compile)
            row["student_unet_ms"] = unet_ms(variant, batch, resolution, args, device, dtype)
            _free(device)
            row["tiny_decoder_ms"] = decoder_ms("tiny", batch, resolution, args, device, dtype)
            _free(device)
            row["onestep_frame_ms"] = row["student_unet_ms"] + row["tiny_decoder_ms"]
            row["onestep_fps"] = 1000 * batch / row["onestep_frame_ms"]
            if not args.no_teacher:
                row["teacher_unet_ms"] = unet_ms(teacher, batch, resolution, args, device, dtype)
                _free(device)
                row["vae_decoder_ms"] = decoder_ms("vae", batch, resolution, args, device, dtype)
                _free(device)
                row["unet_speedup"] = row["teacher_unet_ms"] / row["student_unet_ms"]
                row["decoder_speedup"] = row["vae_decoder_ms"] / row["tiny_decoder_ms"]
                # the teacher as the paper times it: 32 UNet evaluations (16 steps with CFG) + its VAE decoder
                row["teacher_32nfe_frame_ms"] = 32 * row["teacher_unet_ms"] + row["vae_decoder_ms"]
            paper = PAPER_MS.get(variant)
            if paper and batch == 1:
                row["paper_a100_unet_ms"], row["paper_a100_decoder_ms"] = paper
            rows.append(row)
            print_table([row], COLUMNS)
            sys.stdout.flush()

    print("\nmilliseconds per batch (fps counts frames)")
    print_table(rows, COLUMNS)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    label = f"variants-{args.name}" if args.name else "variants"
    path = write_results(label, {"rows": rows, "device_name": device_name, "args": vars(args)})
    print(f"\nwrote {path}")
    return 0


COLUMNS = ["variant", "batch", "compiled", "student_unet_ms", "teacher_unet_ms", "unet_speedup", "tiny_decoder_ms",
           "vae_decoder_ms", "decoder_speedup", "onestep_frame_ms", "onestep_fps", "paper_a100_unet_ms",
           "paper_a100_decoder_ms"]


if __name__ == "__main__":
    raise SystemExit(main())
