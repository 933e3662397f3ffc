"""Ray Serve's proxy against a direct connection: latency overhead, and that no frame is lost or misrouted.

    python bench/serve.py                      # tiny model on the CPU: app.py alone, then 2 Serve replicas
    python bench/serve.py --app-args "--model IDKiro/sdxs-512-dreamshaper" --num-gpus 1 --replicas 2   # GPUs

Needs Ray (`pip install -r requirements-ray.txt`).  The same app options run twice, one server at a time: `python
app.py` (direct) and `python -m server.serve --replicas N` (through the Serve proxy).  Against each:

* latency: one session, one frame in flight, `--frames` frames (two alternating pictures, so none is answered from
  the reuse cache); p50/p95 of send -> receive, and of that minus the server's own `server_ms` (the transport: what
  a proxy adds shows there without the model's variance).  Overhead = Serve's p50 minus direct p50.
* routing: `--sessions` sessions (arriving `--stagger` s apart) stream with 2 frames in flight, all of them for the
  last `--duration` s (the frame rates count that window); every frame carries a
  `client_ts` unique to its session and frame (session * 1e9 + frame id), and every output must echo one of its own
  session's, for a frame it sent; frames sent and never answered (nor superseded) at the end are counted as lost.

Target (issue 18): p50 overhead <= 5 ms, no frame lost or misrouted.  JSON goes to bench/results/serve-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.devices import free_port  # noqa: E402
from bench.load import wait_ready, webcam_frames  # noqa: E402
from server.client import Client  # noqa: E402
from server.protocol import ImageFormat, OutputFlag, OutputFrame, pack_input  # noqa: E402

RESULTS = ROOT / "bench" / "results"


async def latency(url: str, frames: list[bytes], count: int) -> dict:
    client = await Client.open(url, {"params": {"mode": "image"}, "output_format": "jpeg"})
    total, transport, reused = [], [], 0
    for i in range(count + 5):
        sent = time.perf_counter()
        frame_id = await client.send_frame(frames[i % 2], ImageFormat.JPEG)
        out = await client.expect_output(frame_id, timeout=60)
        ms = (time.perf_counter() - sent) * 1000.0
        if out.flags & (OutputFlag.REUSED | OutputFlag.SKIPPED):  # no inference: not a frame the model made
            reused += 1
        elif i >= 5:  # the first few warm the path
            total.append(ms)
            transport.append(ms - out.timings.server_ms)
    await client.close()
    pct = lambda values, q: round(float(np.percentile(values, q)), 2)  # noqa: E731
    return {
        "p50_ms": pct(total, 50),
        "p95_ms": pct(total, 95),
        "transport_p50_ms": pct(transport, 50),
        "transport_p95_ms": pct(transport, 95),
        "reused": reused,
        "valid": reused == 0,
    }


async def routed_session(url: str, index: int, frames: list[bytes], start: float, until: float, delay: float) -> dict:
    """After `delay` s, stream with 2 in flight; check that each output answers a frame this session sent, with its
    own stamp."""
    await asyncio.sleep(delay)
    client = await Client.open(url, {"params": {"mode": "image"}, "output_format": "jpeg"})
    sent: dict[int, float] = {}
    outputs = misrouted = reused = 0
    frame_id, answered = 0, 0
    while time.monotonic() < until or frame_id > answered:
        while frame_id - answered < 2 and time.monotonic() < until:
            frame_id += 1
            sent[frame_id] = index * 1e9 + frame_id
            await client.ws.send(pack_input(frame_id, sent[frame_id], ImageFormat.JPEG, frames[frame_id % 2]))
        message = await client.recv(timeout=60)
        if isinstance(message, OutputFrame) and message.flags & (OutputFlag.REUSED | OutputFlag.SKIPPED):
            reused += 1
            answered = max(answered, message.frame_id)
        elif isinstance(message, OutputFrame):
            outputs += time.monotonic() >= start
            misrouted += sent.get(message.frame_id) != message.client_ts
            answered = max(answered, message.frame_id)
        elif message.get("frame_id") is not None:
            answered = max(answered, message["frame_id"])
    await client.close()
    return {"sent": frame_id, "outputs": outputs, "reused": reused, "misrouted": misrouted, "lost": frame_id - answered}


async def routing(url: str, frames: list[bytes], sessions: int, duration: float, stagger: float) -> dict:
    start = time.monotonic() + stagger * sessions  # every session streams over the same window
    until = start + duration
    results = await asyncio.gather(
        *(routed_session(url, i, frames, start, until, i * stagger) for i in range(sessions))
    )
    fps = [r["outputs"] / duration for r in results]
    return {
        "sessions": sessions,
        "frames_sent": sum(r["sent"] for r in results),
        "outputs": sum(r["outputs"] for r in results),
        "misrouted": sum(r["misrouted"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "reused": sum(r["reused"] for r in results),
        "valid": not any(r["reused"] for r in results),
        "aggregate_fps": round(sum(fps), 2),
        "fairness": round(min(fps) / max(fps), 3) if max(fps) else 0.0,
        "session_fps": [round(f, 2) for f in fps],
    }


def start(kind: str, port: int, metrics: int, args: argparse.Namespace) -> subprocess.Popen:
    app = [
        *shlex.split(args.app_args),
        "--gradio",
        "false",
        "--log-level",
        "warning",
        "--max-sessions-per-client",
        "1000",
    ]
    if kind == "direct":
        command = [sys.executable, "app.py", *app, "--host", "127.0.0.1", "--port", str(port)]
    else:
        command = [
            sys.executable,
            "-m",
            "server.serve",
            "--replicas",
            str(args.replicas),
            "--num-gpus",
            str(args.num_gpus),
            "--num-cpus",
            "0.5",
            "--serve-port",
            str(port),
            "--metrics-port",
            str(metrics),
            *app,
        ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_proxy(port: int, timeout: float = 600) -> dict:
    """The Serve proxy answers 404/503 in plain text until a replica is up; then /config.json."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return httpx.get(f"http://127.0.0.1:{port}/config.json", timeout=5).json()
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit("Serve did not start")


def wait_replicas(first_port: int, count: int, timeout: float = 600) -> None:
    """Each replica serves its metrics (from `first_port` on) once its model is warm."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(
                httpx.get(f"http://127.0.0.1:{first_port + i}/metrics", timeout=2).status_code == 200
                for i in range(count)
            ):
                time.sleep(5)
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit("the replicas did not all start")


def measure(kind: str, args: argparse.Namespace) -> dict:
    port, metrics = free_port(), free_port()
    server = start(kind, port, metrics, args)
    try:
        config = wait_ready(f"http://127.0.0.1:{port}") if kind == "direct" else wait_proxy(port)
        if kind == "serve":  # /readyz answers with the first replica up: wait for all, and for the proxy to know them
            wait_replicas(metrics, args.replicas)
        frames = webcam_frames(config["model"]["size"])
        url = f"ws://127.0.0.1:{port}/ws"
        return {
            "latency": asyncio.run(latency(url, frames, args.frames)),
            "routing": asyncio.run(routing(url, frames, args.sessions, args.duration, args.stagger)),
        }
    finally:
        server.send_signal(signal.SIGINT)  # Serve's driver shuts its local Ray down
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--app-args", default="--model tiny --device cpu --torch-threads 1")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--num-gpus", type=float, default=0)
    parser.add_argument("--frames", type=int, default=100, help="frames of the latency run")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the routing run")
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="seconds between the sessions' arrivals (0: all "
        "at once; Serve's router may then put them unevenly on the replicas)",
    )
    args = parser.parse_args(argv)
    result = {"direct": measure("direct", args), "serve": measure("serve", args), "config": vars(args)}
    result["overhead_p50_ms"] = round(result["serve"]["latency"]["p50_ms"] - result["direct"]["latency"]["p50_ms"], 2)
    result["overhead_transport_p50_ms"] = round(
        result["serve"]["latency"]["transport_p50_ms"] - result["direct"]["latency"]["transport_p50_ms"], 2
    )
    print(
        f"{'':>7} {'p50 ms':>7} {'p95 ms':>7} {'transport p50':>13} {'agg fps':>8} {'fair':>5} {'sent':>6} "
        f"{'lost':>5} {'misrouted':>9}"
    )
    for kind in ("direct", "serve"):
        lat, rt = result[kind]["latency"], result[kind]["routing"]
        print(
            f"{kind:>7} {lat['p50_ms']:>7.2f} {lat['p95_ms']:>7.2f} {lat['transport_p50_ms']:>13.2f} "
            f"{rt['aggregate_fps']:>8.2f} {rt['fairness']:>5.2f} {rt['frames_sent']:>6} {rt['lost']:>5} "
            f"{rt['misrouted']:>9}"
        )
    print(
        f"Serve proxy overhead, p50: {result['overhead_p50_ms']} ms end to end, "
        f"{result['overhead_transport_p50_ms']} ms transport   target <= 5 ms"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"serve-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
