"""Load test: N concurrent WebSocket sessions for T seconds against a server; prints a table, writes JSON.

    python bench/load.py --spawn "--model tiny" --sessions 1,4,8 --duration 20
    python bench/load.py --url ws://127.0.0.1:7860/ws --sessions 8 --duration 300      # a running server

`--spawn ARGS` starts `python app.py ARGS` on a free port and stops it afterwards (all sessions come from one
address, so it raises `--max-sessions-per-client`; start a server for `--url` with a high cap too).
Each session streams synthetic webcam-like JPEG frames (a moving disc on a gradient, every frame different, so
nothing is answered from the reuse cache) keeping `--in-flight` frames unanswered, as the browser does. Before the
load runs, one session with one frame in flight measures the server's overhead: end-to-end latency minus inference.

Only generated frames count: outputs flagged REUSED (answered from the server's cache) or SKIPPED (the skip filter
repeated a picture) are counted apart and make the run invalid (`valid: false`). Reported per run: per-session FPS,
aggregate FPS, end-to-end latency p50/p95/p99 (client send -> output received, same clock), inference p50, overhead
p50, fairness (slowest session FPS / fastest, counted in the window where every session streams;
`fairness_whole_sessions` counts each session's own run), mean batch size, errors and server RSS at start and end
(from /metrics, sampled ~30 times per run; growth is counted from 20% into the run). JSON goes to
bench/results/load-<name>-<time>.json. """

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.client import Client  # noqa: E402
from server.protocol import ImageFormat, OutputFlag, OutputFrame  # noqa: E402

RESULTS = ROOT / "bench" / "results"


@dataclass
class SessionStats:
    outputs: int = 0  # generated frames only
    reused: int = 0  # outputs answered from the server's cache (flag REUSED): counted apart, never as frames
    skipped: int = 0  # outputs the skip filter repeated (flag SKIPPED): counted apart, never as frames
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    output_times: list[float] = field(default_factory=list)  # perf_counter() seconds at each output
    started: float = 0.0
    duration_s: float = 0.0

    def fps_within(self, start: float, end: float) -> float:
        """Outputs per second between two perf_counter() times."""
        inside = sum(start <= t < end for t in self.output_times)
        return inside / (end - start) if end > start else 0.0

    @property
    def fps(self) -> float:
        return self.outputs / self.duration_s if self.duration_s else 0.0


def webcam_frames(size: int, count: int = 24) -> list[bytes]:
    """JPEG q80 frames of a disc moving over a colour gradient (uint8 RGB, size x size)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames = []
    for i in range(count):
        angle = 2 * np.pi * i / count
        cx, cy = 0.5 + 0.25 * np.cos(angle), 0.5 + 0.25 * np.sin(angle)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < 0.02).astype(np.float32)
        rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + angle)], -1) * 200 + disc[..., None] * 55
        buffer = io.BytesIO()
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=80)
        frames.append(buffer.getvalue())
    return frames


async def run_session(url: str, frames: list[bytes], duration: float, in_flight: int, params: dict) -> SessionStats:
    client = await Client.open(url, {"params": params, "output_format": "jpeg"})
    if client.welcome["state"] != "active":
        await client.expect("state", timeout=duration + 60)
    stats, unanswered = SessionStats(), collections.deque()
    start = stats.started = time.perf_counter()
    i = 0
    while time.perf_counter() - start < duration:
        while len(unanswered) < in_flight:
            unanswered.append(await client.send_frame(frames[i % len(frames)], ImageFormat.JPEG))
            i += 1
        message = await client.recv(timeout=60)
        now_ms = time.perf_counter() * 1000.0
        frame_id = message.frame_id if isinstance(message, OutputFrame) else message.get("frame_id")
        if frame_id is None:
            continue
        while unanswered and unanswered[0] <= frame_id:
            unanswered.popleft()
        if isinstance(message, OutputFrame) and message.flags & OutputFlag.REUSED:
            stats.reused += 1
        elif isinstance(message, OutputFrame) and message.flags & OutputFlag.SKIPPED:
            stats.skipped += 1
        elif isinstance(message, OutputFrame):
            stats.outputs += 1
            stats.output_times.append(now_ms / 1000.0)
            stats.latencies_ms.append(now_ms - message.client_ts)
            stats.inference_ms.append(message.timings.inference_ms)
            stats.batch_sizes.append(message.batch_size)
        else:
            stats.errors += 1
    stats.duration_s = time.perf_counter() - start
    await client.close()
    return stats


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def server_rss_mb(http: str) -> float:
    text = httpx.get(http + "/metrics", timeout=10).text
    match = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) / 2**20 if match else float("nan")


def summarize(sessions: int, in_flight: int, stats: list[SessionStats], rss: tuple[float, float]) -> dict:
    latencies = [v for s in stats for v in s.latencies_ms]
    inference = [v for s in stats for v in s.inference_ms]
    overhead = [lat - inf for s in stats for lat, inf in zip(s.latencies_ms, s.inference_ms, strict=True)]
    fps = [s.fps for s in stats]
    # fairness over the window in which every session streamed: sessions start a little apart (admission, welcome)
    # and the first to finish leave the rest a lighter server, which says nothing about how batches are shared
    common = (max(s.started for s in stats), min(s.started + s.duration_s for s in stats))
    shared = [s.fps_within(*common) for s in stats]
    batches = [b for s in stats for b in s.batch_sizes]
    return {
        "sessions": sessions, "in_flight": in_flight, "per_session_fps": [round(f, 3) for f in fps],
        "aggregate_fps": round(sum(fps), 3),
        "fairness": round(min(shared) / max(shared), 3) if max(shared) else 0.0,
        "fairness_whole_sessions": round(min(fps) / max(fps), 3) if max(fps) else 0.0,
        "common_window_s": round(common[1] - common[0], 1),
        "latency_ms": {q: round(percentile(latencies, int(q[1:])), 1) for q in ("p50", "p95", "p99")},
        "inference_ms_p50": round(percentile(inference, 50), 1),
        "overhead_ms_p50": round(percentile(overhead, 50), 1),
        "mean_batch": round(float(np.mean(batches)), 2) if batches else 0.0,
        "outputs": sum(s.outputs for s in stats), "reused": sum(s.reused for s in stats),
        "skipped": sum(s.skipped for s in stats), "valid": not any(s.reused or s.skipped for s in stats),
        "errors": sum(s.errors for s in stats),
        "rss_mb_start": round(rss[0], 1), "rss_mb_end": round(rss[1], 1),
    }


async def sample_rss(http: str, every_s: float, samples: list[tuple[float, float]]) -> None:
    """Append (seconds since start, server RSS MB) every `every_s` until cancelled."""
    start = time.perf_counter()
    while True:
        rss = await asyncio.to_thread(server_rss_mb, http)
        samples.append((round(time.perf_counter() - start, 1), round(rss, 1)))
        await asyncio.sleep(every_s)


async def measure(url: str, http: str, sessions: int, in_flight: int, duration: float, frames: list[bytes],
                  params: dict) -> dict:
    samples: list[tuple[float, float]] = []
    sampler = asyncio.create_task(sample_rss(http, max(1.0, duration / 30), samples))
    stats = await asyncio.gather(*(run_session(url, frames, duration, in_flight, params) for _ in range(sessions)))
    sampler.cancel()
    result = summarize(sessions, in_flight, list(stats), (samples[0][1], server_rss_mb(http)))
    # growth after warm-up: from the first sample past 20% of the run to the end
    warm = next((rss for t, rss in samples if t >= duration * 0.2), samples[0][1])
    result["rss_mb_growth_after_20pct"] = round(result["rss_mb_end"] - warm, 1)
    result["rss_samples"] = samples
    return result


def spawn(args: str, port: int) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "app.py"), *shlex.split(args), "--port", str(port), "--host", "127.0.0.1",
               "--gradio", "false", "--log-level", "warning", "--max-sessions-per-client", "1000"]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def wait_ready(http: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(http + "/readyz", timeout=5)
            if ready.status_code == 200:
                return httpx.get(http + "/config.json", timeout=5).json()
            if ready.json().get("stage") == "failed":
                raise SystemExit(f"server failed to load: {ready.json()['error']}")
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("server not ready in time")


def print_table(runs: list[dict]) -> None:
    head = (f"{'sessions':>8} {'inflight':>8} {'agg fps':>8} {'fps/sess':>9} {'fair':>5} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8} {'inf p50':>8} {'ovh p50':>8} {'batch':>6} {'err':>4} {'rss MB start->end':>18}")
    print(head)
    print("-" * len(head))
    for r in runs:
        lat = r["latency_ms"]
        print(f"{r['sessions']:>8} {r['in_flight']:>8} {r['aggregate_fps']:>8.2f} "
              f"{r['aggregate_fps'] / r['sessions']:>9.2f} {r['fairness']:>5.2f} {lat['p50']:>8.1f} {lat['p95']:>8.1f} "
              f"{lat['p99']:>8.1f} {r['inference_ms_p50']:>8.1f} {r['overhead_ms_p50']:>8.1f} {r['mean_batch']:>6.2f} "
              f"{r['errors']:>4} {r['rss_mb_start']:>8.0f} -> {r['rss_mb_end']:<7.0f}"
              + ("" if r["valid"] else f"  INVALID: {r['reused']} reused, {r['skipped']} skipped"))


async def main_async(args: argparse.Namespace, url: str, http: str, config: dict) -> dict:
    size = config["model"]["size"]
    frames = webcam_frames(size)
    params = {"mode": "image", "prompt": "a portrait photo, detailed", "strength": 0.5}
    runs, load_start = [], os.getloadavg()
    if not args.skip_overhead:  # one session, one frame in flight: nothing waits for another batch
        runs.append(await measure(url, http, 1, 1, args.overhead_duration or args.duration, frames, params))
    for n in args.sessions:
        runs.append(await measure(url, http, n, args.in_flight, args.duration, frames, params))
    by_n = {r["sessions"]: r for r in runs if r["in_flight"] == args.in_flight}
    ratio = None
    if 1 in by_n and len(by_n) > 1:
        top = max(by_n)
        ratio = round(by_n[top]["aggregate_fps"] / by_n[1]["aggregate_fps"], 2)
    return {"model": config["model"], "size": size, "duration_s": args.duration, "runs": runs,
            "throughput_ratio_max_over_1": ratio, "cpu_count": os.cpu_count(),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "time": time.strftime("%FT%TZ", time.gmtime()), "command": " ".join(sys.argv)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="ws://host:port/ws of a running server")
    target.add_argument("--spawn", help="arguments for `python app.py` (e.g. \"--model tiny\")")
    parser.add_argument("--sessions", default="1,4,8", help="comma-separated session counts, one run each")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--in-flight", type=int, default=2, help="frames each session keeps unanswered")
    parser.add_argument("--skip-overhead", action="store_true", help="skip the 1-session, 1-in-flight run")
    parser.add_argument("--overhead-duration", type=float, default=None, help="seconds of it (default: --duration)")
    parser.add_argument("--name", default=None, help="label for the JSON file name")
    args = parser.parse_args(argv)
    args.sessions = [int(n) for n in args.sessions.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    process = None
    if args.spawn is not None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        process = spawn(args.spawn, port)
        url = f"ws://127.0.0.1:{port}/ws"
    else:
        url = args.url
    http = url.replace("ws://", "http://").replace("wss://", "https://").rsplit("/ws", 1)[0]
    try:
        config = wait_ready(http)
        result = asyncio.run(main_async(args, url, http, config))
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    print_table(result["runs"])
    if result["throughput_ratio_max_over_1"] is not None:
        print(f"aggregate throughput, {max(args.sessions)} sessions over 1: {result['throughput_ratio_max_over_1']}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.name or Path(str(result["model"]["id"])).name
    path = RESULTS / f"load-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
