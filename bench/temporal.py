"""Live video that holds still (issue 23): flicker, lag, transitions and the skip filter on clips whose truth is known,
and what each setting costs.

    python bench/temporal.py                          # everything (about 30 minutes on a shared 2-core CPU)
    python bench/temporal.py --parts quality skip     # the miniature and the skip filter only (a few minutes)
    python bench/temporal.py --parts cost --cost-sizes 256 512

Quality runs the shipped miniature (`--model mini`, 32x32 digits: its outputs mean something, and its digit classifier
reads them); cost runs SDXS-512 dreamshaper shapes with random weights (`python -m sdxs make-random`, written once to
bench/models/).  Clips, with camera-like noise (Gaussian, sigma 3 grey levels, on the frame the model sees):

* static: a digit 3, the same every frame but for the noise;
* moving: a strip of digits (and, apart, a photo: scikit-image's "coffee") panned by 1 served pixel per frame (for
  the skip filter also 640x480 camera frames of "astronaut", and a drift of 1/4 pixel a frame);
* step: the digit 3 for 8 frames, then the digit 7.

Measured per setting against per-frame generation ("off"): flicker as the static clip's mean frame-to-frame
difference and as the moving clips' warp error (output t against output t-1 shifted by the known motion, on the
region both show, 2-pixel margin), both after 6 frames of warm-up, in grey levels; lag, the frames after the step
until the classifier reads 7 (0: at once); the largest change between consecutive frames across a prompt switch and a
seed switch, smooth against abrupt; the skip filter's share of skipped frames on a static and a moving clip at the
miniature's 32 pixels and on 640x480 camera frames (JPEG q80) served at 512, with the largest motion of a skipped
frame since the last generated one; and the cost per frame at batch 1 and 16: the process's CPU time (the machine
is shared; other jobs' preemption does not count in it), median of rounds that interleave the settings.  Prints
tables and writes JSON to bench/results/temporal-*.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from digit_strokes import render  # noqa: E402

from bench.timing import print_table, results_path, write_results  # noqa: E402
from sdxs import GenerationParams, GenerationRequest, SDXSPipeline  # noqa: E402
from sdxs.params import STABILITY_PRESETS  # noqa: E402
from sdxs.temporal import TemporalState  # noqa: E402
from server import skipfilter  # noqa: E402

SIGMA = 3.0
WARM = 6  # frames left out of flicker averages: histories filling up
MODELS = Path(__file__).parent / "models"
SETTINGS = {  # name -> live-video parameters (transitions are measured apart)
    "off (per frame)": {},
    "feedback 0.3 (smooth)": {"feedback": 0.3},
    "feedback 0.5 (steady)": {"feedback": 0.5},
    "feedback 0.7": {"feedback": 0.7},
    "bank 1.0": {"bank": 1.0},
    "feedback 0.5 + bank 1.0": {"feedback": 0.5, "bank": 1.0},
}
LAG_RUNS = {"image": ("a digit", 0), "edges": ("a digit", 0), "sketch": ("a digit", 1)}  # mode: prompt, seed


# --- clips --------------------------------------------------------------------------------------------------------

def noisy(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(frame + rng.normal(0, SIGMA, frame.shape), 0, 255).round().astype(np.uint8)


def digit(d: int, side: int = 32, ink_on_paper: bool = False) -> np.ndarray:
    """The miniature's digits are light ink on black; sketches dark on white."""
    strokes = render(d, side).astype(np.float32)
    return strokes if ink_on_paper else 255 - strokes


def strip(side: int = 32) -> np.ndarray:
    return np.concatenate([digit(d, side) for d in (3, 7, 2, 5, 8)], axis=1)


def photo_strip(side: int = 32) -> np.ndarray:
    import skimage.data
    from PIL import Image

    image = Image.fromarray(skimage.data.coffee())
    return np.asarray(image.resize((round(image.width * side / image.height), side), Image.LANCZOS), np.float32)


def pan(scene: np.ndarray, frames: int, rng: np.random.Generator, step: int = 1) -> list[np.ndarray]:
    side = scene.shape[0]
    return [noisy(scene[:, t * step: t * step + side], rng) for t in range(frames)]


# --- the miniature: flicker, lag, transitions ------------------------------------------------------------------------

def generate(pipe, frames, params: list[GenerationParams] | GenerationParams) -> list[np.ndarray]:
    """One stream: each frame with its parameters, one history."""
    state = TemporalState()
    params = params if isinstance(params, list) else [params] * len(frames)
    return [pipe([GenerationRequest(p, f, state)], output_type="np")[0].astype(np.float32)
            for f, p in zip(frames, params)]


def frame_difference(outputs: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(outputs[WARM:], outputs[WARM + 1:])]))


def warp_error(outputs: list[np.ndarray], step: int = 1, margin: int = 2) -> float:
    """Content moves left by `step` pixels a frame: output t at x should equal output t-1 at x + step."""
    w = outputs[0].shape[1]
    errors = [np.abs(b[:, margin: w - step - margin] - a[:, margin + step: w - margin]).mean()
              for a, b in zip(outputs[WARM:], outputs[WARM + 1:])]
    return float(np.mean(errors))


def classify(classifier, images: list[np.ndarray]) -> list[int]:
    unit = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return classifier(unit)[1].argmax(1).tolist()


def quality(pipe, classifier, rng) -> list[dict]:
    static = [noisy(digit(3), rng) for _ in range(20)]
    digits_pan, photo_pan = pan(strip(), 20, rng), pan(photo_strip(), 20, rng)
    steps = {mode: [noisy(digit(d, ink_on_paper=mode == "sketch"), rng) for d in [3] * 8 + [7] * 12]
             for mode in LAG_RUNS}
    rows = []
    for name, values in SETTINGS.items():
        row = {"setting": name}
        for mode in ("image", "edges"):
            p = GenerationParams(prompt="a digit", mode=mode, **values)
            row[f"{mode} static"] = frame_difference(generate(pipe, static, p))
            row[f"{mode} warp digits"] = warp_error(generate(pipe, digits_pan, p))
            row[f"{mode} warp photo"] = warp_error(generate(pipe, photo_pan, p))
        for mode, (prompt, seed) in LAG_RUNS.items():
            p = GenerationParams(prompt=prompt, mode=mode, seed=seed, **values)
            read = classify(classifier, generate(pipe, steps[mode], p))
            row[f"{mode} lag"] = next((k for k, d in enumerate(read[8:]) if d == 7), None)
            row[f"{mode} reads"] = "".join(map(str, read))
        rows.append(row)
        print(f"  {name}: done", flush=True)
    return rows


def transitions(pipe) -> list[dict]:
    """Text mode (no input: only the change moves the picture), a switch after 4 frames, 16 frames in all."""
    rows = []
    for what, before, after in (("prompt", {"prompt": "3: a photo of the digit 3"}, {"prompt": "7: a photo of the "
                                                                                      "digit 7"}),
                                 ("seed", {"seed": 0}, {"seed": 1})):
        for frames in (0, 8):
            params = [GenerationParams(mode="text", transition_frames=frames, **(before if t < 4 else after))
                      for t in range(16)]
            out = generate(pipe, [None] * 16, params)
            changes = [float(np.abs(b - a).mean()) for a, b in zip(out, out[1:])]
            rows.append({"switch": what, "transition_frames": frames, "largest change": max(changes),
                         "total change": float(np.abs(out[-1] - out[0]).mean()),
                         "frames changing": sum(c > 0.5 for c in changes)})
    return rows


# --- the skip filter ---------------------------------------------------------------------------------------------

def skip_shares(thumbnails, frames: list[np.ndarray], motion: list[float], size: int, threshold: float,
                params: dict) -> dict:
    """Run `frames` (any size) through the skip filter as one stream served at `size`; `motion[t]`: the input's
    position in served pixels.  Skipped share, and the largest motion of a skipped frame since the last generated
    one.  `thumbnails`: a pipeline's (the small copies do not depend on its model)."""
    pipe = SimpleNamespace(size=size, thumbnails=thumbnails)
    p = GenerationParams(mode="image", skip_threshold=threshold, **params)
    state, temporal = skipfilter.SkipState(lambda job: None), TemporalState()
    skipped, worst, kept_at = 0, 0.0, motion[0]
    for t, frame in enumerate(frames):
        job = SimpleNamespace(request=GenerationRequest(p, frame, temporal), skip=state, still=False, received_at=t)
        if skipfilter.split([job], pipe):
            kept_at = motion[t]
        else:
            skipped += 1
            worst = max(worst, abs(motion[t] - kept_at))
    return {"skipped share": skipped / len(frames), "largest skipped motion px": worst}


def camera_clips(rng, frames: int = 60, size: int = 512, speed: float = 1.0) -> tuple[list, list]:
    """640x480 JPEG q80 frames of a photo scene (scikit-image's "astronaut", 720 pixels wide): still, and panned by
    `speed` served pixels (480 / size camera pixels each) a frame."""
    import io

    import skimage.data
    from PIL import Image

    photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((720, 720)), np.float32)[120:600]
    scene = np.concatenate([photo, photo[:, ::-1]] * 2, axis=1)  # 2880 wide, mirrored: never slides out of view

    def jpeg(frame: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(noisy(frame, rng)).save(buffer, "JPEG", quality=80)
        return np.asarray(Image.open(buffer))

    still = [jpeg(scene[:, :640]) for _ in range(frames)]
    moving = []
    for t in range(frames):
        x = t * speed * 480 / size
        shifted = np.asarray(Image.fromarray(scene.astype(np.uint8)).transform(
            (640, 480), Image.AFFINE, (1, 0, x, 0, 1, 0), Image.BILINEAR), np.float32)
        moving.append(jpeg(shifted))
    return still, moving


def skip_filter(thumbnails, rng) -> list[dict]:
    """Clips: the miniature's digits with the noise added at its 32 pixels (the harshest case: a page sends frames
    already scaled down from the camera, which averages noise away), and 640x480 camera frames served at 32 and 512."""
    mini_static = [noisy(digit(3), rng) for _ in range(60)]
    mini_moving = pan(np.concatenate([strip()] * 3, axis=1), 60, rng)
    cam = {size: camera_clips(rng, 60, size) for size in (32, 512)}
    slow = camera_clips(rng, 60, 512, speed=0.25)[1]  # a slow drift: skips allowed until it has moved 1 pixel
    still, moving = [0.0] * 60, [float(t) for t in range(60)]
    rows = []
    for threshold in (1.0, 1.5, 2.0, 3.0):
        for stability in ("off", "steady"):
            params = STABILITY_PRESETS[stability]
            row = {"threshold": threshold, "stability": stability}
            clips = (("digits 32 static", mini_static, still, 32), ("digits 32 moving", mini_moving, moving, 32),
                     ("camera 32 static", cam[32][0], still, 32), ("camera 32 moving", cam[32][1], moving, 32),
                     ("camera 512 static", cam[512][0], still, 512), ("camera 512 moving", cam[512][1], moving, 512),
                     ("camera 512 drift", slow, [t / 4 for t in range(60)], 512))
            for name, clip, motion, size in clips:
                result = skip_shares(thumbnails, clip, motion, size, threshold, params)
                row[f"{name} skipped"] = result["skipped share"]
                if "static" not in name:
                    row[f"{name} worst px"] = result["largest skipped motion px"]
            rows.append(row)
    return rows


# --- cost: SDXS-512 shapes, random weights -------------------------------------------------------------------------

COST_SETTINGS = {"off (no state)": None, "off": {}, "feedback 0.5": {"feedback": 0.5}, "bank 1.0": {"bank": 1.0},
                 "feedback 0.5 + bank 1.0": {"feedback": 0.5, "bank": 1.0}, "prompt changing": {"transition_frames": 8}}


def cost(size: int, batches: list[int], rounds: int, device: str = "cpu") -> tuple[list[dict], SDXSPipeline]:
    """ms per frame of each setting, image mode.  On the CPU the machine is shared: the process's CPU time (all its
    threads) is the measure, as preemption by other jobs does not count in it; on a GPU the wall time of the call
    (which waits for its pictures on the host).  The fastest round's wall time is reported too."""
    folder = MODELS / "sdxs-512-dreamshaper"
    if not (folder / "model_index.json").exists():
        from sdxs.tiny import write_random_variant

        print(f"writing random SDXS-512 dreamshaper weights to {folder} (once)", flush=True)
        write_random_variant(folder, "sdxs-512-dreamshaper")
    pipe = SDXSPipeline.from_pretrained(str(folder), controlnet=None, device=device, size=size)
    clock = time.process_time if pipe.device.type == "cpu" else time.perf_counter
    frame = np.asarray(photo_strip(size)[:, :size], np.uint8)
    rows = []
    for batch in batches:
        states = {name: [TemporalState() for _ in range(batch)] for name in COST_SETTINGS}
        cpu: dict[str, list[float]] = {name: [] for name in COST_SETTINGS}
        wall: dict[str, list[float]] = {name: [] for name in COST_SETTINGS}
        for r in range(rounds + 1):  # round 0 warms up and fills the histories
            for name, values in COST_SETTINGS.items():
                prompt = f"a photo, take {r}" if name == "prompt changing" else "a photo"
                p = GenerationParams(prompt=prompt, mode="image", **(values or {}))
                requests = [GenerationRequest(p, frame, None if values is None else s) for s in states[name]]
                if r == 0:
                    pipe(requests)
                pipe.encode_prompt(prompt)  # the prompt's embedding is cached, as in a stream
                start, start_cpu = time.perf_counter(), clock()
                pipe(requests, output_type="np")
                if r:
                    cpu[name].append((clock() - start_cpu) * 1000 / batch)
                    wall[name].append((time.perf_counter() - start) * 1000 / batch)
        base = statistics.median(cpu["off (no state)"])
        for name in COST_SETTINGS:
            ms = statistics.median(cpu[name])
            rows.append({"size": size, "batch": batch, "setting": name, "cpu ms/frame": ms, "added cpu ms": ms - base,
                         "added %": 100 * (ms - base) / base, "cpu spread ms": max(cpu[name]) - min(cpu[name]),
                         "fastest wall ms/frame": min(wall[name])})
        print(f"  cost {size} batch {batch}: done", flush=True)
    return rows, pipe


def skip_cost(thumbnails, rng) -> list[dict]:
    """The skip filter's own work per frame (small copy of a decoded 640x480 frame, change against a reference), at
    batch 1 and 16: the fastest of 20 rounds of wall time (CPU time is useless for such small work: torch's idle
    threads spin)."""
    clip = camera_clips(rng, 16)[1]
    rows = []
    for batch in (1, 16):
        laps = []
        for _ in range(20):
            start = time.perf_counter()
            grey = thumbnails(clip[:batch], skipfilter.THUMB)
            skipfilter.change(grey, grey).tolist()
            laps.append((time.perf_counter() - start) * 1000 / batch)
        rows.append({"batch": batch, "ms/frame": min(laps)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["quality", "skip", "cost"], default=["quality", "skip", "cost"])
    parser.add_argument("--cost-sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="for the cost part: cpu, cuda, auto")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    from safetensors.torch import load_file

    from sdxs.loading import MINI_DIR
    from training.mini.metrics import DigitClassifier

    path = results_path("temporal", args.out)
    result: dict = {"sigma": SIGMA, "warm_frames": WARM, "settings": SETTINGS, "lag_runs": LAG_RUNS,
                    "parts": args.parts}
    rng = np.random.default_rng(0)
    mini = SDXSPipeline.from_pretrained("mini", device="cpu", dtype="float32")
    if "quality" in args.parts:
        classifier = DigitClassifier()
        classifier.load_state_dict(load_file(str(MINI_DIR / "digit_classifier.safetensors")))
        classifier.eval()
        print("flicker and lag (the miniature, 32x32, grey levels)", flush=True)
        result["quality"] = quality(mini, classifier, rng)
        write_results("temporal", result, path=path)
        print_table(result["quality"], list(result["quality"][0]))
        print("\ntransitions (text mode, switch after frame 4)")
        result["transitions"] = transitions(mini)
        print_table(result["transitions"], list(result["transitions"][0]))
    if "skip" in args.parts:
        print("\nskip filter (skipped share; worst px: largest motion of a skipped frame since the last generated one)")
        result["skip_filter"] = skip_filter(mini.thumbnails, rng)
        print_table(result["skip_filter"], list(result["skip_filter"][0]))
        result["skip_filter_cost"] = skip_cost(mini.thumbnails, rng)
        print(f"skip filter's own cost (CPU): {result['skip_filter_cost']}")
        write_results("temporal", result, path=path)
    if "cost" in args.parts:
        result["cost_settings"] = COST_SETTINGS
        result["cost"] = []
        for size in args.cost_sizes:
            batches = args.batches if size <= 256 or args.device != "cpu" else [1]  # 512 x 16 on 2 cores: minutes
            rows, pipe = cost(size, batches, args.rounds, args.device)
            result["cost"] += rows
            result.setdefault("bank_bytes_per_stream", {})[f"{size} {pipe.dtype}"] = pipe_bank_bytes(pipe)
            write_results("temporal", result, path=path)
        print(f"\ncost ({args.device}, SDXS-512 shapes with random weights, image mode; on the CPU the process's CPU "
              "time, 'cpu ms' on a GPU is wall time)")
        print_table(result["cost"], list(result["cost"][0]))
        print(f"attention bank per stream, bytes: {result['bank_bytes_per_stream']}")
    print(f"\nwritten to {write_results('temporal', result, path=path)}")
    return 0


def pipe_bank_bytes(pipe) -> int:
    from sdxs.bank import bytes_per_stream

    return bytes_per_stream(pipe.bank_layers, pipe.size // pipe.vae_scale_factor, pipe.dtype)


if __name__ == "__main__":
    raise SystemExit(main())
