"""Per-stage and per-frame cost of our one-step pipeline against diffusers' stock pipelines, same process, same weights.

    python bench/pipeline.py                       # full matrix (slow on a 2-core CPU)
    python bench/pipeline.py --sizes 256 --modes image --batches 1 4

Builds the real SDXS-512 dreamshaper shapes with random weights once (``python -m sdxs make-random``; the cost does
not depend on the values).  Stock pipelines are loaded separately from the same folder and called the way users call
them (PIL in, PIL out, prompt encoded every call, control images made by the caller).  Prints a table and writes
JSON under ``bench/results/``; the targets are ratios from this one run.
"""

from __future__ import annotations

import argparse
import gc
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import (  # noqa: E402
    RESULTS,
    ModuleTimer,
    count_gflops,
    matmul_peak_gflops,
    print_table,
    results_path,
    wall,
    write_results,
)
from sdxs import GenerationParams, GenerationRequest, SDXSPipeline, control, frames  # noqa: E402  # noqa: E402
from sdxs.device import DTYPES, cpu_bf16_speedup, resolve_device  # noqa: E402
from sdxs.loading import resolve_folder  # noqa: E402

PROMPT = "a portrait photo of an astronaut, studio light"
MODELS = Path(__file__).parent / "models"


def test_frame(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (200, 190, 170))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 4, size // 5, 3 * size // 4, 4 * size // 5), fill=(90, 60, 40), outline="black", width=4)
    draw.line((0, size - 20, size, size // 2), fill="black", width=6)
    return image


def stock_pipelines(folder: Path, dtype: torch.dtype, device: torch.device) -> dict:
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
    )

    text = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None).to(device)
    controlnet = ControlNetModel.from_pretrained(folder / "controlnet", torch_dtype=dtype).to(device)
    pipes = {"text": text, "image": StableDiffusionImg2ImgPipeline(**text.components),
             "control": StableDiffusionControlNetPipeline(**text.components, controlnet=controlnet)}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def run_stock(pipes: dict, mode: str, batch: int, size: int, frame: Image.Image):
    generator = torch.Generator("cpu").manual_seed(0)
    common = dict(prompt=[PROMPT] * batch, guidance_scale=0.0, generator=generator, output_type="pil")
    if mode == "text":
        return pipes["text"](num_inference_steps=1, height=size, width=size, **common)
    if mode == "image":  # strength 0.5 with 2 steps = one step at t=499, as ours
        return pipes["image"](image=[frame] * batch, strength=0.5, num_inference_steps=2, **common)
    return pipes["control"](image=[control_image(frame, mode)] * batch, num_inference_steps=1, height=size, width=size,
                            controlnet_conditioning_scale=0.8, **common)


def control_image(frame: Image.Image, mode: str) -> Image.Image:
    """The control image a stock-pipeline user makes themselves (the same as ours: sdxs.control), as PIL."""
    rgb = frames.square([frame], frame.size[0])
    unit = control.control_images(rgb, [mode])[0]
    return frames.to_pil((unit * 255).round().to(torch.uint8))


def run_ours(pipe: SDXSPipeline, mode: str, batch: int, frame: Image.Image):
    params = GenerationParams(prompt=PROMPT, mode=mode, strength=0.5, control_scale=0.8)
    return pipe([GenerationRequest(params, None if mode == "text" else frame)] * batch)


def modules_of(pipe) -> dict:
    if isinstance(pipe, SDXSPipeline):
        return {"prompt": pipe.text_encoder, "unet": pipe.unet, "control": pipe.controlnet,
                "encode": pipe.encoder_vae.encoder, "decode": pipe.decoder_vae.decoder}
    return {"prompt": pipe.text_encoder, "unet": pipe.unet, "control": getattr(pipe, "controlnet", None),
            "encode": pipe.vae.encoder, "decode": pipe.vae.decoder}


def measure(call, modules: dict, device, iters: int) -> dict:
    """Median per-stage and total milliseconds of ``call``.  Stage timers synchronise a GPU at every module boundary,
    so on CUDA the total (``total``) comes from separate unhooked runs and ``profiled_total`` from the hooked ones."""
    call()  # warm-up: kernel selection, caches (ours keeps its prompt cache warm, as in serving)
    runs = []
    for _ in range(iters):
        out: dict = {}
        with ModuleTimer(modules, device) as timer, wall(out, device):
            call()
        runs.append({**timer.ms, **out})
    keys = {k for r in runs for k in r}
    ms = {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in keys}
    ms["profiled_total"] = ms["total"]
    if device.type == "cuda":
        totals = []
        for _ in range(iters):
            out = {}
            with wall(out, device):
                call()
            totals.append(out["total"])
        ms["total"] = float(np.median(totals))
    return ms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model folder or a name the server takes (tiny, mini, a Hub id; default: random SDXS-512 "
                        "shapes)")
    parser.add_argument("--modes", nargs="+", default=["text", "image", "sketch", "edges"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: float32 bfloat16 (CPU), float16 (CUDA)")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--no-stock", action="store_true", help="skip diffusers' stock pipelines")
    parser.add_argument("--compile", default=None, help="torch.compile mode for ours (e.g. reduce-overhead)")
    parser.add_argument("--name", default=None, help="label for the JSON file name")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON file (rewritten after every row)")
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                        help="ours: channels-last modules (auto: the pipeline's own choice)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its convolution algorithms")
    args = parser.parse_args(argv)

    device = resolve_device("auto")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    channels_last = {"auto": "auto", "on": True, "off": False}[args.channels_last]
    dtypes = args.dtypes or (["float16"] if device.type == "cuda" else ["float32", "bfloat16"])
    folder = resolve_folder(args.model) if args.model else MODELS / "sdxs-512-dreamshaper"
    if not (folder / "model_index.json").exists():
        from sdxs.tiny import write_random_variant

        print(f"writing random SDXS-512 dreamshaper weights to {folder} (once)", flush=True)
        write_random_variant(folder, "sdxs-512-dreamshaper")

    rows, peaks = [], {}
    path = results_path(f"pipeline-{args.name}" if args.name else "pipeline", args.out)
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        peaks[dtype_name] = matmul_peak_gflops(dtype, device)
        stock = None if args.no_stock else stock_pipelines(folder, dtype, device)
        for size in args.sizes:
            ours = SDXSPipeline.from_pretrained(str(folder), device=str(device), dtype=dtype_name, size=size,
                                                compile=args.compile or False, channels_last=channels_last)
            if ours.compiled:  # as the server does: every batch size a bucket, every path warmed until it records
                ours.buckets = tuple(sorted(set(args.batches)))  # nothing (sdxs.graphs)
                warmup = ours.warmup(ours.buckets)
                print(f"warm-up {size} {dtype_name}: {warmup.as_dict()}", flush=True)
            ours.profile = True
            frame = test_frame(size)
            for mode in args.modes:
                # FLOP counting runs eagerly; under torch.compile it would trace a second time, so skip it there
                gflop = float("nan") if args.compile else count_gflops(partial(run_ours, ours, mode, 1, frame))
                for batch in args.batches:
                    base = dict(dtype=dtype_name, size=size, mode=mode, batch=batch, gflop_per_frame=gflop,
                                compile=args.compile, channels_last=args.channels_last,
                                cudnn_benchmark=args.cudnn_benchmark,
                                floor_ms=gflop / peaks[dtype_name] * 1000)
                    variants = [("ours", ours, partial(run_ours, ours, mode, batch, frame))]
                    if stock:
                        pipe = stock["text" if mode == "text" else "image" if mode == "image" else "control"]
                        variants.append(("stock", pipe, partial(run_stock, stock, mode, batch, size, frame)))
                    for name, pipe, call in variants:
                        ms = measure(call, modules_of(pipe), device, args.iters)
                        inside = sum(v for k, v in ms.items() if k not in ("total", "profiled_total"))
                        row = {**base, "pipeline": name, **{k: v / batch for k, v in ms.items()},
                               "outside_pct": 100 * (ms["profiled_total"] - inside) / ms["profiled_total"]}
                        row["per_frame_ms"] = row.pop("total")
                        row["fps"] = 1000 / row["per_frame_ms"]
                        rows.append(row)
                        print_table([row], COLUMNS)
                        sys.stdout.flush()
                        write_results("pipeline", {"rows": rows, "matmul_peak_gflops": peaks}, path=path)
            ours = None
            gc.collect()
        stock = None
        gc.collect()

    summary = summarize(rows)
    print("\nper-frame milliseconds (stage columns are per frame; floor = GFLOP / measured matmul peak)")
    print_table(rows, COLUMNS)
    print("\nratios from this run")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    write_results("pipeline", {"rows": rows, "matmul_peak_gflops": peaks, "summary": summary,
                               "cpu_bf16_speedup_probe": cpu_bf16_speedup() if device.type == "cpu" else None},
                  path=path)
    print(f"\nwrote {path}")
    return 0


COLUMNS = ["dtype", "size", "mode", "batch", "pipeline", "prompt", "encode", "control", "unet", "decode",
           "outside_pct", "per_frame_ms", "fps", "floor_ms"]


def summarize(rows: list[dict]) -> dict:
    """The issue's targets as ratios (None where this run did not measure the pair)."""
    index = {(r["dtype"], r["size"], r["mode"], r["batch"], r["pipeline"]): r["per_frame_ms"] for r in rows}
    out = {}
    for (dtype, size, mode, batch, name), ms in index.items():
        if name != "ours":
            continue
        stock = index.get((dtype, size, mode, batch, "stock"))
        if stock:
            out[f"ours/stock {mode} {size} {dtype} b{batch}"] = round(ms / stock, 3)
        if batch != 1 and (dtype, size, mode, 1, "ours") in index:
            out[f"b{batch}/b1 per frame {mode} {size} {dtype}"] = round(ms / index[(dtype, size, mode, 1, "ours")], 3)
        if dtype == "bfloat16" and ("float32", size, mode, batch, "ours") in index:
            fp32 = index[("float32", size, mode, batch, "ours")]
            out[f"fp32/bf16 speedup {mode} {size} b{batch}"] = round(fp32 / ms, 3)
    outside = [r["outside_pct"] for r in rows if r["pipeline"] == "ours"]
    if outside:
        out["ours max time outside module forwards (%)"] = round(max(outside), 2)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
