"""Several devices in one server (`--devices`): fairness across devices, and a persistent fault on one of them.

    python bench/devices.py                                   # two CPU "devices", tiny model, 8 sessions
    python bench/devices.py --app-args "--model mini" --devices cpu:0,cpu:1 --duration 20
    python bench/devices.py --app-args "--model IDKiro/sdxs-512-dreamshaper" --devices all   # a multi-GPU machine

A server process (`python bench/devices.py --serve ...`: app.py's app, each device's pipeline wrapped so that it
fails every batch once a file `fault-<i>` exists in a scratch folder) gets `--sessions` WebSocket sessions that
stream webcam-like JPEG frames with `--in-flight` frames unanswered, as the page does.  After `--warmup` seconds, the
baseline window runs for `--duration` seconds; then the fault file of `--fault-device` is created and the fault
window runs as long.  Reported: per-session frames/s in each window; fairness (slowest session / fastest) in the
baseline, and across devices (mean session fps of the slower device / the faster: the sessions moved at the fault
were on the faulty device, so this needs two devices); the healthy device's sessions' frame rate under the fault
relative to their baseline; how long the faulty device's sessions took to be moved (the `state` message naming
their new device).  Targets (issue 18): fairness >= 0.9, healthy sessions >= 0.8 of their baseline, moved within 5 s.
JSON goes to bench/results/devices-<name>-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import wait_ready, webcam_frames  # noqa: E402
from server.client import Client  # noqa: E402
from server.protocol import ImageFormat, OutputFlag, OutputFrame  # noqa: E402

RESULTS = ROOT / "bench" / "results"


# --- the server side: a pipeline that fails while its fault file exists ---------------------------------------------


class FileFault:
    """Wraps one device's pipeline: every batch raises while `folder/fault-<index>` exists."""

    def __init__(self, pipe: Any, flag: Path):
        self.pipe, self.flag = pipe, flag

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def _check(self) -> None:
        if self.flag.exists():
            raise RuntimeError(f"injected fault ({self.flag.name})")

    def run(self, staged):
        self._check()
        return self.pipe.run(staged)

    def __call__(self, requests, output_type: str = "pil"):
        self._check()
        return self.pipe(requests, output_type=output_type)


def serve(port: int, folder: Path, app_args: list[str]) -> None:
    """Run app.py's app with every device's pipeline wrapped in a FileFault (devices in --devices order)."""
    from server.config import parse_config
    from server.routes import create_app, make_server, uvicorn_options

    config = parse_config([*app_args, "--port", str(port), "--host", "127.0.0.1"])
    counter = itertools.count()
    app = create_app(config, lambda pipe: FileFault(pipe, folder / f"fault-{next(counter)}"))
    make_server(app, **uvicorn_options(config)).run()


# --- the client side --------------------------------------------------------------------------------------------------


@dataclass
class Trace:
    """What one session saw: output times, error times, and the time and device of a move."""

    outputs: list[float] = field(default_factory=list)  # generated frames only
    reused: int = 0  # outputs without inference (flag REUSED or SKIPPED): counted apart, never as frames
    errors: list[float] = field(default_factory=list)
    moved: tuple[float, str] | None = None

    def fps(self, start: float, end: float) -> float:
        return sum(start <= t < end for t in self.outputs) / (end - start)


async def session(url: str, frames: list[bytes], until: float, in_flight: int, trace: Trace) -> None:
    client = await Client.open(url, {"params": {"mode": "image", "seed": 1}, "output_format": "jpeg"})
    unanswered: list[int] = []
    i = 0
    while time.monotonic() < until:
        while len(unanswered) < in_flight:
            unanswered.append(await client.send_frame(frames[i % len(frames)], ImageFormat.JPEG))
            i += 1
        message = await client.recv(timeout=60)
        now = time.monotonic()
        if isinstance(message, OutputFrame):
            if message.flags & (OutputFlag.REUSED | OutputFlag.SKIPPED):  # no inference: not a frame the model made
                trace.reused += 1
            else:
                trace.outputs.append(now)
            frame_id = message.frame_id
        elif message["type"] == "state" and message.get("device"):
            trace.moved = (now, message["device"])
            continue
        elif message["type"] == "error" and message.get("frame_id") is not None:
            trace.errors.append(now)
            frame_id = message["frame_id"]
        else:
            continue
        unanswered = [f for f in unanswered if f > frame_id]
    await client.close()


async def measure(url: str, folder: Path, args: argparse.Namespace, size: int) -> dict:
    frames = webcam_frames(size)
    traces = [Trace() for _ in range(args.sessions)]
    start = time.monotonic() + args.warmup
    fault_at = start + args.duration
    end = fault_at + args.duration

    async def inject() -> None:
        await asyncio.sleep(max(0.0, fault_at - time.monotonic()))
        (folder / f"fault-{args.fault_device}").touch()

    streams = [session(url, frames, end, args.in_flight, trace) for trace in traces]
    await asyncio.gather(inject(), *streams)
    return summarize(traces, start, fault_at, end)


def summarize(traces: list[Trace], start: float, fault_at: float, end: float) -> dict:
    base = [t.fps(start, fault_at) for t in traces]
    under = [t.fps(fault_at, end) for t in traces]
    moved = [i for i, t in enumerate(traces) if t.moved is not None]
    healthy = [i for i in range(len(traces)) if i not in moved]
    healthy_ratio = sum(under[i] for i in healthy) / max(1e-9, sum(base[i] for i in healthy))
    move_s = [traces[i].moved[0] - fault_at for i in moved]
    by_device = [sum(base[i] for i in group) / len(group) for group in (healthy, moved) if group]
    return {
        "sessions": len(traces),
        "baseline_fps": [round(f, 2) for f in base],
        "fault_fps": [round(f, 2) for f in under],
        "aggregate_fps_baseline": round(sum(base), 2),
        "aggregate_fps_fault": round(sum(under), 2),
        "fairness": round(min(base) / max(base), 3) if max(base) else 0.0,
        "device_fairness": round(min(by_device) / max(by_device), 3) if max(by_device) else 0.0,
        "moved_sessions": len(moved),
        "moved_ids": moved,
        "moved_to": sorted({traces[i].moved[1] for i in moved}),
        "move_s_max": round(max(move_s), 3) if move_s else None,
        "healthy_fps_ratio": round(healthy_ratio, 3),
        "errors_during_fault": sum(len(t.errors) for t in traces),
        "reused": sum(t.reused for t in traces),
        "valid": not any(t.reused for t in traces),  # frames answered from the cache would inflate the rates
    }


def print_table(result: dict) -> None:
    print(f"{'session':>7} {'base fps':>9} {'fault fps':>9} {'moved':>6}")
    for i, (b, f) in enumerate(zip(result["baseline_fps"], result["fault_fps"], strict=True)):
        print(f"{i:>7} {b:>9.2f} {f:>9.2f} {'yes' if i in result.get('moved_ids', []) else '':>6}")
    print(
        f"aggregate fps: baseline {result['aggregate_fps_baseline']}, under the fault {result['aggregate_fps_fault']}"
    )
    print(
        f"fairness (slowest/fastest session, baseline): {result['fairness']}   target >= 0.9; per device "
        f"(mean session fps, slower/faster device; the moved sessions were on the faulty one): "
        f"{result['device_fairness']}"
    )
    print(f"healthy device's sessions under the fault / baseline: {result['healthy_fps_ratio']}   target >= 0.8")
    print(
        f"sessions moved: {result['moved_sessions']} to {result['moved_to']}, slowest move "
        f"{result['move_s_max']} s   target <= 5 s; failed frames: {result['errors_during_fault']}"
    )
    if not result["valid"]:
        print(f"INVALID: {result['reused']} outputs were answered without inference (REUSED or SKIPPED)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--app-args",
        default="--model tiny --torch-threads 1",
        help="app.py options besides --devices (default: the tiny model, one thread per device)",
    )
    parser.add_argument("--devices", default="cpu:0,cpu:1")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of each window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--fault-device", type=int, default=1, help="index in --devices of the device that breaks")
    parser.add_argument("--max-failures", type=int, default=3, help="--device-max-failures of the server")
    parser.add_argument("--name", default=None, help="result file name part (default: from the devices)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--fault-dir", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        return serve(args.port, Path(args.fault_dir), shlex.split(args.app_args))
    app_args = [
        *shlex.split(args.app_args),
        "--devices",
        args.devices,
        "--device-max-failures",
        str(args.max_failures),
        "--gradio",
        "false",
        "--log-level",
        "warning",
        "--max-sessions",
        str(max(8, args.sessions)),
        "--max-sessions-per-client",
        "1000",
    ]
    port, folder = free_port(), Path(tempfile.mkdtemp(prefix="sdxs-faults-"))
    command = [
        sys.executable,
        __file__,
        "--serve",
        "--port",
        str(port),
        "--fault-dir",
        str(folder),
        "--app-args",
        shlex.join(app_args),
    ]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        config = wait_ready(f"http://127.0.0.1:{port}")
        result = asyncio.run(measure(f"ws://127.0.0.1:{port}/ws", folder, args, config["model"]["size"]))
        result["readyz"] = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
    finally:
        server.terminate()
        server.wait(30)
    result["config"] = {
        **{k: v for k, v in vars(args).items() if k not in ("serve", "port", "fault_dir")},
        "model": config["model"]["id"],
        "size": config["model"]["size"],
        "cpus": os.cpu_count(),
    }
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.name or args.devices.replace(",", "+").replace(":", "")
    path = RESULTS / f"devices-{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
