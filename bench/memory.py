"""Memory under legal but huge inputs: rounds of sessions sending distinct 4096x4096 PNGs, while one good session
streams small webcam JPEGs; the server's RSS per round and the good session's generated frames/s.

    python bench/memory.py --rounds 10                   # tiny model, 7 sessions x 3 PNGs a round (issue 25's case)

A PNG cannot be decoded at a reduced scale as a JPEG can; the server decodes it whole, squares it at once as the
pipeline would and keeps only that (server/codec.py), and glibc gives freed blocks of 16 MB and up
back to the system (server/loading.py `keep_freed_memory`).  Before that, 3 rounds took a tiny-model server from 585 MB
to 1857 MB and it kept it.  RSS comes from /metrics (`process_resident_memory_bytes`), sampled every 50 ms for the
peak.  JSON goes to bench/results/memory-<time>.json (or `--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.devices import free_port  # noqa: E402
from bench.load import wait_ready, webcam_frames  # noqa: E402
from server.client import Client  # noqa: E402
from server.protocol import ImageFormat, OutputFlag, OutputFrame  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def huge_png(seed: int, side: int = 4096) -> bytes:
    """A legal, compressible side x side RGB PNG (about 60 KB): paper with a few coloured strokes."""
    image = Image.new("RGB", (side, side), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        x, y = (int(v) for v in rng.integers(0, side - 100, 2))
        draw.line((x, y, x + 90, y + 90), fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=9)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def rss_mb(http: str) -> float:
    text = httpx.get(http + "/metrics", timeout=10).text
    return float(re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", text, re.M).group(1)) / 2**20


async def png_session(url: str, payloads: list[bytes]) -> int:
    client = await Client.open(url, {"params": {"mode": "image"}})
    for payload in payloads:
        await client.expect_output(await client.send_frame(payload, ImageFormat.PNG), timeout=120)
    await client.close()
    return len(payloads)


async def good_session(url: str, frames: list[bytes], stop: asyncio.Event, generated: list[float]) -> None:
    """Streams distinct JPEGs with one frame in flight; appends the time of every generated frame."""
    client = await Client.open(url, {"params": {"mode": "image"}, "output_format": "jpeg"})
    i = 0
    while not stop.is_set():
        frame_id = await client.send_frame(frames[i % len(frames)], ImageFormat.JPEG)
        i += 1
        out = await client.expect_output(frame_id, timeout=120)
        if isinstance(out, OutputFrame) and not out.flags & OutputFlag.REUSED:
            generated.append(time.monotonic())
    await client.close()


async def sample_peak(http: str, stop: asyncio.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], await asyncio.to_thread(rss_mb, http))
        await asyncio.sleep(0.05)


async def rounds(url: str, http: str, args: argparse.Namespace, pngs: list[bytes], frames: list[bytes]) -> list[dict]:
    out = []
    stop, generated = asyncio.Event(), []
    good = asyncio.create_task(good_session(url, frames, stop, generated))
    for r in range(args.rounds):
        peak, done = [0.0], asyncio.Event()
        sampler = asyncio.create_task(sample_peak(http, done, peak))
        start, before = time.monotonic(), len(generated)
        per = args.frames
        await asyncio.gather(*(png_session(url, [pngs[(s * per + k) % len(pngs)] for k in range(per)])
                               for s in range(args.sessions)))
        seconds = time.monotonic() - start
        done.set()
        await sampler
        out.append({"round": r, "seconds": round(seconds, 2), "rss_mb_peak": round(peak[0], 1),
                    "rss_mb_end": round(await asyncio.to_thread(rss_mb, http), 1),
                    "good_session_fps": round((len(generated) - before) / seconds, 2)})
        print(f"round {r}: {out[-1]}", flush=True)
    stop.set()
    await good
    return out


def measure(args: argparse.Namespace) -> dict:
    port = free_port()
    command = [sys.executable, str(ROOT / "app.py"), *args.app_args.split(), "--port", str(port), "--host", "127.0.0.1",
               "--gradio", "false", "--log-level", "warning", "--max-sessions-per-client", "100", "--max-sessions",
               str(args.sessions + 1)]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    http, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
    try:
        config = wait_ready(http)
        pngs = [huge_png(i) for i in range(args.distinct)]
        frames = webcam_frames(config["model"]["size"])
        warm = rss_mb(http)
        result = {"app_args": args.app_args, "sessions": args.sessions, "frames_per_session": args.frames,
                  "png_bytes": [len(p) for p in pngs], "rss_mb_warm": round(warm, 1),
                  "rounds": asyncio.run(rounds(url, http, args, pngs, frames))}
    finally:
        process.terminate()
        process.wait(30)
    result["rss_mb_kept"] = round(result["rounds"][-1]["rss_mb_end"] - warm, 1)
    result["rss_mb_peak_over_warm"] = round(max(r["rss_mb_peak"] for r in result["rounds"]) - warm, 1)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app-args", default="--model tiny --torch-threads 1")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=7)
    parser.add_argument("--frames", type=int, default=3, help="distinct PNGs each session sends per round")
    parser.add_argument("--distinct", type=int, default=21, help="distinct PNGs made (sessions take them in turn)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure(args)
    print(f"warm {result['rss_mb_warm']} MB; after {args.rounds} rounds +{result['rss_mb_kept']} MB kept, "
          f"+{result['rss_mb_peak_over_warm']} MB at the peak")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"memory-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
