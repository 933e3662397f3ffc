"""Browser to browser through the real app: N clients over loopback send 640x480 JPEG webcam frames at a set rate.

    python bench/server.py --null-model                                  # CPU: the server's own cost, 512
    python bench/server.py --model random --device cuda --dtype float16 --clients 1,16     # GPU: SDXS-512 shapes

The app runs in a process of its own (`python bench/server.py --serve ...`: app.py's app, with `--null-model` the
models swapped for identities of the same shapes, bench/nullmodel.py).  For every mode and client count, the clients
stream a generated video (a moving scene with sensor noise, JPEG q80, 640x480 like a webcam) at `--fps`, keeping at
most `max_in_flight` frames unanswered as the page does, for `--duration` seconds.

Only generated frames count: every frame sent differs from the one before (the server's reuse answers an unchanged
input from its cache in about a millisecond), outputs flagged REUSED or SKIPPED (the skip filter, off unless asked
for) are counted apart, and a cell in which any output was reused or skipped is marked invalid. Reported per cell:
generated frames/s (aggregate and per stream), p50/p95 latency of generated frames from send to receive (one clock),
reused and errors, the server process's CPU ms per generated frame (psutil, and by thread from /proc), the p50 of
the frame header's stage timings, mean batch, and on a GPU its busy share and the largest memory in use
(nvidia-smi). In this process a stage breakdown at batch 1 and at the largest batch: thread CPU ms per frame on the
CPU; CUDA-event ms per frame on a GPU. The server's /readyz features (CUDA graphs, warm-up passes, nvJPEG self-test)
are recorded too. JSON is written after every cell to `--out` (default bench/results/). """

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.client import Client  # noqa: E402
from server.protocol import ImageFormat, OutputFlag, unpack_output  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PROMPT = "a portrait photo, detailed"


# --- the video ----------------------------------------------------------------------------------------------------

def webcam_video(frames: int = 48, width: int = 640, height: int = 480, quality: int = 80) -> list[bytes]:
    """A moving scene as a webcam films it: a lit background with texture, a face-sized disc and a bar moving across,
    sensor noise; JPEG q80 (the page's camera quality).  Consecutive frames always differ."""
    import simplejpeg

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
        out.append(simplejpeg.encode_jpeg(scene.clip(0, 255).astype(np.uint8), quality, "RGB", "420"))
    return out


# --- the server process --------------------------------------------------------------------------------------------

def name_os_threads() -> None:
    """Give every thread started from now on its Python name at the OS level too (/proc/PID/task/TID/comm), so the
    benchmark can split the server's CPU time by thread: event loop, staging, model, codec."""
    import ctypes

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

    from server.config import parse_config
    from server.routes import create_app, make_server, uvicorn_options

    config = parse_config(argv)
    wrap = None
    if null_model:
        from bench.nullmodel import nullify

        wrap = nullify
    app = create_app(config, wrap)
    make_server(app, **uvicorn_options(config)).run()


def spawn(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", *(["--null-model"] if args.null_model else []),
               "--", "--model", args.model, "--device", args.device, "--dtype", args.dtype,
               "--port", str(port), "--host", "127.0.0.1", "--gradio", "false", "--log-level", "warning",
               "--max-sessions", str(max(args.clients)), "--max-sessions-per-client", "10000", "--max-queue", "0",
               "--idle-timeout-s", "0", "--session-time-limit-s", "0", "--max-batch", str(args.max_batch),
               *(["--resolution", str(args.resolution)] if args.resolution else []), *args.server_args]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def wait_ready(http: str, process: subprocess.Popen, timeout: float) -> tuple[dict, dict]:
    """(/config.json, /readyz) once ready; exits at once when the server exits or /readyz says `failed`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            ready = httpx.get(http + "/readyz", timeout=5)
            if ready.status_code == 200:
                return httpx.get(http + "/config.json", timeout=5).json(), ready.json()
            if ready.json().get("stage") == "failed":
                raise SystemExit(f"server failed to load: {ready.json().get('error')}")
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("server not ready in time")


# --- clients -------------------------------------------------------------------------------------------------------

async def stream(url: str, video: list[bytes], mode: str, fps: float, duration: float, stats: dict) -> None:
    """One webcam session: at every tick, send the next video frame unless max_in_flight frames are unanswered."""
    client = await Client.open(url, {"params": {"mode": mode, "prompt": PROMPT, "seed": 1}, "output_format": "jpeg"})
    ws, limit = client.ws, client.welcome["limits"]["max_in_flight"]
    in_flight: list[int] = []
    counts = {"generated": 0, "reused": 0, "skipped": 0, "errors": 0}
    start = time.perf_counter()

    async def receive() -> None:
        while True:
            message = await ws.recv()
            now = time.perf_counter() * 1000.0
            if isinstance(message, bytes):
                frame = unpack_output(message)
                acknowledged = frame.frame_id
                if frame.flags & OutputFlag.REUSED:  # answered from the cache: no inference, not counted
                    counts["reused"] += 1
                elif frame.flags & OutputFlag.SKIPPED:  # the skip filter repeated a picture: not counted either
                    counts["skipped"] += 1
                else:
                    counts["generated"] += 1
                    stats["latencies"].append(now - frame.client_ts)
                    t = frame.timings
                    stats["timings"].append((t.queue_ms, t.decode_ms, t.inference_ms, t.encode_ms, t.server_ms,
                                             frame.batch_size))
            else:
                obj = json.loads(message)
                if obj.get("type") != "error" or obj.get("frame_id") is None:
                    continue
                counts["errors"], acknowledged = counts["errors"] + 1, obj["frame_id"]
            while in_flight and in_flight[0] <= acknowledged:
                in_flight.pop(0)

    reader = asyncio.create_task(receive())
    tick, n, sent = 1.0 / fps, 0, 0
    while time.perf_counter() - start < duration:
        if len(in_flight) < limit:  # a new frame every time: consecutive inputs always differ
            in_flight.append(await client.send_frame(video[sent % len(video)], ImageFormat.JPEG))
            sent += 1
        n += 1
        await asyncio.sleep(max(0.0, start + n * tick - time.perf_counter()))
    await asyncio.sleep(0.5)  # answers still on their way
    reader.cancel()
    await client.close()
    stats["sessions"].append({**counts, "sent": sent, "generated_fps": counts["generated"] / duration})


async def cell(url: str, video: list[bytes], mode: str, clients: int, fps: float, duration: float) -> dict:
    stats = {"sessions": [], "latencies": [], "timings": []}
    await asyncio.gather(*(stream(url, video, mode, fps, duration, stats) for _ in range(clients)))
    return stats


class GpuSampler:
    """GPU utilisation and memory in use over a cell (nvidia-smi, every 100 ms); None without a GPU."""

    def __init__(self) -> None:
        self.busy: list[float] = []
        self.memory_mib: list[float] = []
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                             "--format=csv,noheader,nounits", "-lms", "100", "-i", "0"],
                                            stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and all(p.replace(".", "").isdigit() for p in parts):
                self.busy.append(float(parts[0]))
                self.memory_mib.append(float(parts[1]))

    def stop(self) -> tuple[float | None, float | None]:
        if self.process is None:
            return None, None
        self.process.terminate()
        if not self.busy:
            return None, None
        return round(float(np.mean(self.busy)) / 100, 3), max(self.memory_mib)


def measure(url: str, pid: int, video: list[bytes], mode: str, clients: int, args: argparse.Namespace) -> dict:
    proc = psutil.Process(pid)
    cpu0, threads0, load0 = proc.cpu_times(), thread_cpu(pid), os.getloadavg()[0]
    gpu = GpuSampler()
    stats = asyncio.run(cell(url, video, mode, clients, args.fps, args.duration))
    busy, memory = gpu.stop()
    cpu1, threads1 = proc.cpu_times(), thread_cpu(pid)
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    sessions = stats["sessions"]
    generated = sum(s["generated"] for s in sessions)
    reused = sum(s["reused"] for s in sessions)
    skipped = sum(s["skipped"] for s in sessions)
    per_thread = {k: round(1000 * (v - threads0.get(k, 0.0)) / generated, 3) if generated else None
                  for k, v in sorted(threads1.items())}
    timings = np.array(stats["timings"]) if stats["timings"] else np.zeros((0, 6))
    p50 = lambda col: round(float(np.median(timings[:, col])), 2) if len(timings) else None  # noqa: E731
    fps = [s["generated_fps"] for s in sessions]
    return {
        "mode": mode, "clients": clients, "sent": sum(s["sent"] for s in sessions), "generated": generated,
        "reused": reused, "skipped": skipped, "errors": sum(s["errors"] for s in sessions),
        "valid": reused == 0 and skipped == 0,  # answers without inference measure the cache, not the model
        "generated_fps": round(sum(fps), 2), "stream_fps_mean": round(float(np.mean(fps)), 2),
        "stream_fps_min": round(min(fps), 2),
        "latency_ms": {f"p{q}": round(float(np.percentile(stats["latencies"], q)), 1) if generated else None
                       for q in (50, 95)},
        "server_cpu_ms_per_frame": round(1000 * cpu_s / generated, 3) if generated else None,
        "server_cpu_ms_per_frame_by_thread": per_thread,
        "header_p50_ms": {"queue": p50(0), "decode": p50(1), "inference": p50(2), "encode": p50(3), "server": p50(4)},
        "mean_batch": round(float(timings[:, 5].mean()), 2) if len(timings) else None,
        "gpu_busy": busy, "gpu_memory_mib_max": memory, "loadavg_1m": round(load0, 2),
    }


# --- the stage breakdown, in this process ---------------------------------------------------------------------------

class StageClock:
    """Per-stage milliseconds: thread CPU time on the CPU; on CUDA the GPU time between events recorded on the stream
    each stage queues its work on (the decode stream, the staging stream, the default stream)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, stream=None):
        if not self.cuda:
            start = time.thread_time()
            yield
            self.ms[name] = self.ms.get(name, 0.0) + (time.thread_time() - start) * 1000
            return
        import torch

        stream = stream or torch.cuda.current_stream()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        yield
        end.record(stream)
        end.synchronize()
        self.ms[name] = self.ms.get(name, 0.0) + begin.elapsed_time(end)


def breakdown(args: argparse.Namespace, video: list[bytes], modes: list[str], iters: int) -> dict:
    """Milliseconds per frame of each stage outside the protocol (decode, stage, models + postprocess, encode), at
    batch 1 and at the largest batch, in this process: one frame path, the server's own functions."""
    import torch

    from sdxs import GenerationParams, GenerationRequest, SDXSPipeline
    from server import codec
    from server.loading import device_features, keep_freed_memory

    keep_freed_memory()  # as the server does
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        torch.set_num_threads(1)
    pipe = SDXSPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype, size=args.resolution)
    if args.null_model:
        from bench.nullmodel import nullify

        nullify(pipe)
    cuda = pipe.device.type == "cuda"
    gpu = device_features(pipe).gpu
    limits, size, out = codec.ImageLimits(), pipe.size, {}
    for batch in sorted({1, args.max_batch}):
        for mode in modes:
            params = GenerationParams(mode=mode, prompt=PROMPT, seed=1)
            clock = StageClock(cuda)
            for i in range(iters + 2):
                if i == 2:  # two warm-up rounds
                    clock.ms.clear()
                frames = [codec.probe(video[(i * batch + j) % len(video)], ImageFormat.JPEG, limits)
                          for j in range(batch)]
                with clock("decode", getattr(gpu, "stream", None)):
                    images = codec.decode_frames(frames, size, gpu)
                with clock("stage", pipe.staging_stream):
                    staged = pipe.stage([GenerationRequest(params, image) for image in images])
                with clock("models+postprocess"):
                    rows = pipe.to_host(pipe.run(staged)).arrays()
                with clock("encode"):
                    for row in rows:
                        codec.encode(row, ImageFormat.JPEG, 80)
            stages = {k: round(v / iters / batch, 3) for k, v in clock.ms.items()}
            stages["total"] = round(sum(stages.values()), 3)
            out[f"{mode}/b{batch}"] = stages
    return out


# --- the run -------------------------------------------------------------------------------------------------------

HEAD = (f"{'mode':>6} {'N':>3} {'gen fps':>8} {'fps/str':>8} {'p50 ms':>8} {'p95 ms':>8} {'reused':>6} {'valid':>5} "
        f"{'cpu ms/fr':>9} {'loop':>5} {'stage':>5} {'model':>5} {'codec':>5} {'batch':>5} {'gpu':>5} {'err':>4}")


def row(r: dict) -> str:
    lat, gpu = r["latency_ms"], "-" if r["gpu_busy"] is None else f"{r['gpu_busy']:.2f}"
    threads = r["server_cpu_ms_per_frame_by_thread"] or {}
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    return (f"{r['mode']:>6} {r['clients']:>3} {r['generated_fps']:>8.1f} {r['stream_fps_mean']:>8.1f} "
            f"{fmt(lat['p50'], '>8.1f')} {fmt(lat['p95'], '>8.1f')} {r['reused']:>6} {str(r['valid']):>5} "
            f"{fmt(r['server_cpu_ms_per_frame'], '>9.2f')}"
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
    parser.add_argument("--modes", default="image,edges,sketch")
    parser.add_argument("--clients", default="1,4,16,64", help="client counts, one cell each")
    parser.add_argument("--fps", type=float, default=30.0, help="frames each client offers per second")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--breakdown-iters", type=int, default=20, help="0: skip the in-process stage breakdown")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--name", default=None, help="label for the JSON file name")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON file")
    parser.add_argument("server_args", nargs="*", help="after --: more app.py flags")
    args = parser.parse_args(argv)
    args.modes = args.modes.split(",")
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


def run(args: argparse.Namespace, argv: list[str], video: list[bytes]) -> Path:
    """Start the server, measure every cell (JSON rewritten after each), then the breakdown; returns the JSON path."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = spawn(args, port)
    url, http = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}"
    device = "cuda" if "cuda" in args.device or (args.device == "auto" and shutil.which("nvidia-smi")) else "cpu"
    name = args.name or ("null" if args.null_model else Path(args.model).name)
    path = args.out / f"server-{name}-{device}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    result = {"null_model": args.null_model, "size": args.resolution, "device": args.device, "fps_offered": args.fps,
              "duration_s": args.duration, "cells": [], "cpu_count": os.cpu_count(),
              "loadavg_start": os.getloadavg(), "command": " ".join(["python", "bench/server.py", *argv])}
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        config, ready = wait_ready(http, process, args.ready_timeout)
        result.update(model=config["model"], devices=ready.get("devices"))
        for entry in ready.get("devices") or []:
            print(f"device {entry['device']}: {json.dumps(entry.get('features'))}", flush=True)
        asyncio.run(cell(url, video, "image", 1, args.fps, min(2.0, args.duration)))  # warm-up, not recorded
        print(HEAD, flush=True)
        for mode in args.modes:
            for clients in args.clients:
                result["cells"].append(measure(url, process.pid, video, mode, clients, args))
                print(row(result["cells"][-1]), flush=True)
                save(path, result)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    if args.breakdown_iters:
        result["stage_breakdown_ms_per_frame"] = stages = breakdown(args, video, args.modes, args.breakdown_iters)
        unit = "CUDA-event" if device == "cuda" else "thread CPU"
        print(f"\n{unit + ' ms per frame':<28}" + "".join(f"{k:>20}" for k in next(iter(stages.values()))))
        for key, values in stages.items():
            print(f"{key:<28}" + "".join(f"{v:>20.3f}" for v in values.values()))
    result["loadavg_end"] = os.getloadavg()
    save(path, result)
    invalid = [f"{c['mode']}/{c['clients']}" for c in result["cells"] if not c["valid"]]
    if invalid:
        print(f"INVALID cells (outputs reused from the cache): {', '.join(invalid)}")
    return path


def save(path: Path, result: dict) -> None:
    path.write_text(json.dumps({**result, "time": time.strftime("%FT%TZ", time.gmtime())}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        rest = argv[1:]
        null = bool(rest) and rest[0] == "--null-model"
        rest = rest[1:] if null else rest
        return serve(rest[1:] if rest[:1] == ["--"] else rest, null)
    args = parse_args(argv)
    path = run(args, argv, webcam_video())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
