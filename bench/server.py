"""Browser-to-browser through the real app: N clients over loopback send 640x480 JPEG webcam frames at a set rate.

    python bench/server.py --null-model                                  # CPU: the server's own cost, 512
    python bench/server.py --model random --device cuda --dtype float16 --clients 1,16     # GPU: SDXS-512 shapes

Each frame path (`--paths legacy,batched`: the former PIL path and the batched tensor path, both in this run) gets a
server process of its own (`python bench/server.py --serve ...`: app.py's app, with `--null-model` the models swapped
for identities of the same shapes, bench/nullmodel.py).  For every mode (image, edges, sketch) and client count, the
clients stream a generated video (a moving scene, JPEG q80, 640x480 like a webcam) at `--fps`, keeping at most
`max_in_flight` frames unanswered as the browser page does, for `--duration` seconds.  Reported per cell: per-stream
FPS, aggregate frames/s, p50/p95 latency from send to receive (one clock), the server process's CPU seconds per
output frame (psutil), the p50 of the frame header's stage timings, and the GPU's busy share (nvidia-smi) where there
is one.  A stage breakdown of the CPU time per frame outside the protocol (decode, preprocess, models, postprocess,
encode) is measured in this process for both paths at batch 1.  JSON goes to bench/results/server-<name>-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.client import Client  # noqa: E402
from server.protocol import ImageFormat, unpack_output  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PROMPT = "a portrait photo, detailed"


# --- the video ----------------------------------------------------------------------------------------------------

def webcam_video(frames: int = 48, width: int = 640, height: int = 480, quality: int = 80) -> list[bytes]:
    """A moving scene as a webcam films it: a lit background with texture, a face-sized disc and a bar moving across,
    sensor noise; JPEG q80 (the page's camera quality)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.normal(0, 1, (height // 8, width // 8)).repeat(8, 0).repeat(8, 1)
    background = np.stack([90 + 60 * x / width, 80 + 40 * y / height, 70 + 30 * np.sin(x / 50)], -1)
    background += 12 * texture[..., None]
    out = []
    for i in range(frames):
        phase = 2 * np.pi * i / frames
        scene = background.copy()
        cx, cy = width / 2 + 120 * np.cos(phase), height / 2 + 40 * np.sin(2 * phase)
        scene[(x - cx) ** 2 + ((y - cy) * 0.8) ** 2 < 90**2] = (210, 170, 140)
        scene[:, int(width * i / frames) : int(width * i / frames) + 20] = (40, 40, 160)
        scene += rng.normal(0, 3, scene.shape)
        buffer = io.BytesIO()
        Image.fromarray(scene.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


# --- the server process --------------------------------------------------------------------------------------------

def name_os_threads() -> None:
    """Give every thread started from now on its Python name at the OS level too (/proc/PID/task/TID/comm), so the
    benchmark can split the server's CPU time by thread: event loop, staging, model, codec."""
    import ctypes
    import threading

    libc = ctypes.CDLL("libc.so.6")
    start = threading.Thread._bootstrap_inner

    def bootstrap(thread: threading.Thread) -> None:
        libc.prctl(15, thread.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        start(thread)

    threading.Thread._bootstrap_inner = bootstrap


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread group of process `pid` so far (threads named by `name_os_threads`)."""
    groups: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        group = {"sdxs-stage": "staging", "sdxs-worker": "model", "sdxs-complete": "model"}.get(comm)
        group = group or ("codec" if comm.startswith("sdxs-codec") else "event loop" if tid == str(pid) else "other")
        groups[group] = groups.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return groups


def serve(argv: list[str], null_model: bool) -> None:
    """Run app.py's app in this process (`--serve`), with the models swapped for identities when asked."""
    import uvicorn  # noqa: F401 - fail early

    name_os_threads()

    from app import create_app, make_server, uvicorn_options
    from server.config import parse_config

    config = parse_config(argv)
    wrap = None
    if null_model:
        from bench.nullmodel import nullify

        wrap = nullify
    app = create_app(config, wrap)
    make_server(app, **uvicorn_options(config)).run()


def spawn(path: str, args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", *(["--null-model"] if args.null_model else []),
               "--", "--model", args.model, "--device", args.device, "--dtype", args.dtype, "--frame-path", path,
               "--port", str(port), "--host", "127.0.0.1", "--gradio", "false", "--log-level", "warning",
               "--max-sessions", str(max(args.clients)), "--max-sessions-per-client", "10000", "--max-queue", "0",
               "--idle-timeout-s", "0", "--session-time-limit-s", "0", "--max-batch", str(args.max_batch),
               "--cuda-graphs", "off" if path == "legacy" else "auto",  # the former path had none
               *(["--resolution", str(args.resolution)] if args.resolution else []), *args.server_args]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def wait_ready(http: str, process: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(http + "/readyz", timeout=5).status_code == 200:
                return httpx.get(http + "/config.json", timeout=5).json()
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("server not ready in time")


# --- clients -------------------------------------------------------------------------------------------------------

async def stream(url: str, video: list[bytes], mode: str, fps: float, duration: float, stats: dict) -> None:
    """One webcam session: at every tick, send the current video frame unless max_in_flight frames are unanswered."""
    client = await Client.open(url, {"params": {"mode": mode, "prompt": PROMPT, "seed": 1}, "output_format": "jpeg"})
    ws, limit = client.ws, client.welcome["limits"]["max_in_flight"]
    in_flight: list[int] = []
    latencies, timings, outputs, errors = [], [], 0, 0
    start = time.perf_counter()

    async def receive() -> None:
        nonlocal outputs, errors
        while True:
            message = await ws.recv()
            now = time.perf_counter() * 1000.0
            if isinstance(message, bytes):
                frame = unpack_output(message)
                acknowledged = frame.frame_id
                outputs += 1
                latencies.append(now - frame.client_ts)
                t = frame.timings
                timings.append((t.queue_ms, t.decode_ms, t.inference_ms, t.encode_ms, t.server_ms, frame.batch_size))
            else:
                obj = json.loads(message)
                if obj.get("type") != "error" or obj.get("frame_id") is None:
                    continue
                errors, acknowledged = errors + 1, obj["frame_id"]
            while in_flight and in_flight[0] <= acknowledged:
                in_flight.pop(0)

    reader = asyncio.create_task(receive())
    tick, n = 1.0 / fps, 0
    while (elapsed := time.perf_counter() - start) < duration:
        if len(in_flight) < limit:
            in_flight.append(await client.send_frame(video[int(elapsed * 30) % len(video)], ImageFormat.JPEG))
        n += 1
        await asyncio.sleep(max(0.0, start + n * tick - time.perf_counter()))
    await asyncio.sleep(0.5)  # answers still on their way
    reader.cancel()
    await client.close()
    stats["sessions"].append({"fps": outputs / duration, "errors": errors})
    stats["latencies"] += latencies
    stats["timings"] += timings


async def cell(url: str, video: list[bytes], mode: str, clients: int, fps: float, duration: float) -> dict:
    stats = {"sessions": [], "latencies": [], "timings": []}
    await asyncio.gather(*(stream(url, video, mode, fps, duration, stats) for _ in range(clients)))
    return stats


class GpuSampler:
    """Mean GPU utilisation over a cell (nvidia-smi, every 100 ms); None without a GPU."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,"
                                             "nounits", "-lms", "100", "-i", "0"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def stop(self) -> float | None:
        if self.process is None:
            return None
        self.process.terminate()
        return round(float(np.mean(self.samples)) / 100, 3) if self.samples else None


def measure(url: str, pid: int, video: list[bytes], mode: str, clients: int, args: argparse.Namespace) -> dict:
    proc = psutil.Process(pid)
    cpu0, threads0, load0 = proc.cpu_times(), thread_cpu(pid), os.getloadavg()[0]
    gpu = GpuSampler()
    stats = asyncio.run(cell(url, video, mode, clients, args.fps, args.duration))
    busy = gpu.stop()
    cpu1, threads1 = proc.cpu_times(), thread_cpu(pid)
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    outputs = len(stats["latencies"])
    per_thread = {k: round(1000 * (v - threads0.get(k, 0.0)) / outputs, 3) if outputs else None
                  for k, v in sorted(threads1.items())}
    timings = np.array(stats["timings"]) if stats["timings"] else np.zeros((0, 6))
    p50 = lambda col: round(float(np.median(timings[:, col])), 2) if len(timings) else None  # noqa: E731
    fps = [s["fps"] for s in stats["sessions"]]
    return {
        "mode": mode, "clients": clients, "outputs": outputs, "errors": sum(s["errors"] for s in stats["sessions"]),
        "aggregate_fps": round(sum(fps), 2), "stream_fps_mean": round(float(np.mean(fps)), 2),
        "stream_fps_min": round(min(fps), 2),
        "latency_ms": {q: round(float(np.percentile(stats["latencies"], q)), 1) if outputs else None
                       for q in (50, 95)},
        "server_cpu_ms_per_frame": round(1000 * cpu_s / outputs, 3) if outputs else None,
        "server_cpu_ms_per_frame_by_thread": per_thread,
        "header_p50_ms": {"queue": p50(0), "decode": p50(1), "inference": p50(2), "encode": p50(3), "server": p50(4)},
        "mean_batch": round(float(timings[:, 5].mean()), 2) if len(timings) else None,
        "gpu_busy": busy, "loadavg_1m": round(load0, 2),
    }


# --- the stage breakdown, in this process ---------------------------------------------------------------------------

def breakdown(args: argparse.Namespace, video: list[bytes], modes: list[str], iters: int = 20) -> dict:
    """CPU milliseconds per frame of each stage outside the protocol, both paths, batch 1, thread CPU time."""
    import torch

    from sdxs import GenerationParams, GenerationRequest, SDXSPipeline
    from server import codec
    from server.state import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()  # as the server does
    pipe = SDXSPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype, size=args.resolution)
    if args.null_model:
        from bench.nullmodel import nullify

        nullify(pipe)
    limits, size, out = codec.ImageLimits(), pipe.size, {}
    for path in args.paths:
        legacy = path == "legacy"
        pipe.legacy = legacy
        for mode in modes:
            params = GenerationParams(mode=mode, prompt=PROMPT, seed=1)
            stages = {"decode": 0.0, "preprocess": 0.0, "models+postprocess": 0.0, "encode": 0.0}
            for i in range(iters + 2):
                payload, clock = video[i % len(video)], {}
                t = time.thread_time()
                if legacy:
                    image = codec.decode(payload, ImageFormat.JPEG, size, limits)
                else:
                    image = codec.decode_frames([codec.probe(payload, ImageFormat.JPEG, limits)], size, pipe.device)[0]
                clock["decode"] = time.thread_time() - t
                t = time.thread_time()
                staged = pipe.stage([GenerationRequest(params, image)])
                clock["preprocess"] = time.thread_time() - t
                t = time.thread_time()
                host, ready = pipe.to_host(pipe.run(staged))
                if ready is not None:
                    ready.synchronize()
                clock["models+postprocess"] = time.thread_time() - t
                t = time.thread_time()
                codec.encode(host[0].numpy(), ImageFormat.JPEG, 80, pil=legacy)
                clock["encode"] = time.thread_time() - t
                if i >= 2:  # two warm-up frames
                    for k, v in clock.items():
                        stages[k] += v * 1000 / iters
            stages = {k: round(v, 3) for k, v in stages.items()}
            stages["total"] = round(sum(stages.values()), 3)
            out[f"{path}/{mode}"] = stages
    pipe.legacy = False
    return out


# --- the run -------------------------------------------------------------------------------------------------------

def run_path(path: str, args: argparse.Namespace, video: list[bytes]) -> tuple[dict, list[dict]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = spawn(path, args, port)
    url, http = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}"
    try:
        config = wait_ready(http, process, args.ready_timeout)
        asyncio.run(cell(url, video, "image", 1, args.fps, min(2.0, args.duration)))  # warm-up, not recorded
        cells = []
        for mode in args.modes:
            for clients in args.clients:
                result = measure(url, process.pid, video, mode, clients, args)
                result["path"] = path
                print(row(result), flush=True)
                cells.append(result)
        return config, cells
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


HEAD = (f"{'path':>8} {'mode':>6} {'N':>3} {'agg fps':>8} {'fps/str':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'cpu ms/fr':>9} {'loop':>5} {'stage':>5} {'model':>5} {'codec':>5} {'batch':>5} {'gpu':>5} {'err':>4}")


def row(r: dict) -> str:
    lat, gpu = r["latency_ms"], "-" if r["gpu_busy"] is None else f"{r['gpu_busy']:.2f}"
    threads = r["server_cpu_ms_per_frame_by_thread"] or {}
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    return (f"{r['path']:>8} {r['mode']:>6} {r['clients']:>3} {r['aggregate_fps']:>8.1f} {r['stream_fps_mean']:>8.1f} "
            f"{fmt(lat[50], '>8.1f')} {fmt(lat[95], '>8.1f')} {fmt(r['server_cpu_ms_per_frame'], '>9.2f')} "
            + "".join(f" {fmt(threads.get(k), '>5.2f')}" for k in ("event loop", "staging", "model", "codec"))
            + f" {fmt(r['mean_batch'], '>5.1f')} {gpu:>5} {r['errors']:>4}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="--model of app.py (default tiny: random weights); 'random': "
                        "SDXS-512 dreamshaper shapes with random weights (bench/models/, written once)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--resolution", type=int, default=512, help="served size (0: the model's own)")
    parser.add_argument("--null-model", action="store_true", help="identity models of the same shapes")
    parser.add_argument("--paths", default="legacy,batched", help="frame paths to compare, in this order")
    parser.add_argument("--modes", default="image,edges,sketch")
    parser.add_argument("--clients", default="1,4,16,64", help="client counts, one cell each")
    parser.add_argument("--fps", type=float, default=30.0, help="frames each client offers per second")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--breakdown-iters", type=int, default=20, help="0: skip the in-process stage breakdown")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--name", default=None, help="label for the JSON file name")
    parser.add_argument("server_args", nargs="*", help="after --: more app.py flags")
    args = parser.parse_args(argv)
    args.paths, args.modes = args.paths.split(","), args.modes.split(",")
    args.clients = [int(n) for n in args.clients.split(",")]
    args.resolution = args.resolution or None
    if args.model == "random":
        args.model = str(random_model())
    return args


def random_model() -> Path:
    """The real SDXS-512 dreamshaper shapes with random weights (what bench/pipeline.py measures), written once."""
    folder = ROOT / "bench" / "models" / "sdxs-512-dreamshaper"
    if not (folder / "model_index.json").exists():
        from sdxs.tiny import write_random_variant

        write_random_variant(folder, "sdxs-512-dreamshaper")
    return folder


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        rest = argv[1:]
        null = bool(rest) and rest[0] == "--null-model"
        rest = rest[1:] if null else rest
        return serve(rest[1:] if rest[:1] == ["--"] else rest, null)
    args = parse_args(argv)
    video = webcam_video()
    load_start = os.getloadavg()
    print(HEAD)
    cells, config = [], None
    for path in args.paths:
        config, path_cells = run_path(path, args, video)
        cells += path_cells
    stages = breakdown(args, video, args.modes, args.breakdown_iters) if args.breakdown_iters else {}
    result = {"model": config["model"] if config else None, "null_model": args.null_model, "size": args.resolution,
              "device": args.device, "fps_offered": args.fps, "duration_s": args.duration, "cells": cells,
              "stage_breakdown_cpu_ms_per_frame": stages, "cpu_count": os.cpu_count(), "loadavg_start": load_start,
              "loadavg_end": os.getloadavg(), "time": time.strftime("%FT%TZ", time.gmtime()),
              "command": " ".join(["python", "bench/server.py", *argv])}
    if stages:
        print(f"\n{'stage CPU ms/frame (batch 1)':<28}" + "".join(f"{k:>20}" for k in next(iter(stages.values()))))
        for key, values in stages.items():
            print(f"{key:<28}" + "".join(f"{v:>20.3f}" for v in values.values()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = "cuda" if any(c["gpu_busy"] is not None for c in cells) else "cpu"
    name = args.name or ("null" if args.null_model else Path(args.model).name)
    out = RESULTS / f"server-{name}-{device}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
