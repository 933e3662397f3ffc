"""Page helpers for the real-browser tests (canvas hashes, waiting for frames and status, mouse strokes, readouts)
and the media files they play: a y4m file as the webcam, a WebM file as the "Video file" source."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# Screenshots: of every page of a failed test, and the layout tests' own (kept on success too).
ARTIFACTS = Path(os.environ.get("SDXS_ARTIFACTS", ROOT / "tmp" / "artifacts" / "browser"))
CHROMIUM = os.environ.get("SDXS_CHROMIUM", "/usr/bin/chromium")
# Fake media devices; the last flag also accepts every permission prompt (camera, screen) as a visitor would.
FAKE_UI = "--use-fake-ui-for-media-stream"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--use-fake-device-for-media-stream", FAKE_UI,
]
# The sizes every page test that depends on layout runs at: (viewport, phone: touch and mobile emulation).
SIZES = {"desktop": ((1280, 800), False), "phone": ((390, 844), True)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CANVAS_HASH = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let h = 2166136261;
  for (let i = 0; i < d.length; i += 1) { h ^= d[i]; h = Math.imul(h, 16777619) >>> 0; }
  return h;
}"""


def canvas_hash(page, canvas_id: str = "output") -> int:
    return page.evaluate(CANVAS_HASH, canvas_id)


def frames_drawn(page) -> int:
    return int(page.eval_on_selector("#output", "c => Number(c.dataset.frames || 0)"))


def wait_frames(page, more_than: int, timeout_s: float = 30) -> int:
    page.wait_for_function(f"() => Number(document.getElementById('output').dataset.frames || 0) > {more_than}",
                           timeout=timeout_s * 1000)
    return frames_drawn(page)


def status_text(page) -> str:
    return page.inner_text("#status")


def wait_status(page, pattern: str, timeout_s: float = 30) -> str:
    """Wait until the status pill matches `pattern` (a regular expression)."""
    page.wait_for_function("(p) => new RegExp(p).test(document.getElementById('status').textContent)",
                           arg=pattern, timeout=timeout_s * 1000)
    return status_text(page)


def draw_stroke(page, points, canvas="#sketch") -> None:
    """Draw with the mouse through `points`, given as fractions (x, y) of the canvas box."""
    box = page.locator(canvas).bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=4)
    page.mouse.up()



def start(page) -> None:
    """Press Start (the page asks for nothing before it)."""
    page.click("#start")
    page.wait_for_function("() => document.getElementById('start').getAttribute('aria-pressed') === 'true'")


def readouts(page) -> dict[str, str]:
    """The metrics readout as shown: {"in", "out", "latency", "server"}."""
    return page.evaluate("""() => Object.fromEntries(['in', 'out', 'latency', 'server'].map(
        (k) => [k, document.getElementById('m-' + k).textContent]))""")


def wait_until(predicate, timeout_s: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.2)
    return value


def pattern_frames(n: int, w: int, h: int) -> list[np.ndarray]:
    """`n` distinct RGB pictures: a bright bar moving down a background whose shade changes per frame."""
    frames = []
    for i in range(n):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[...] = (40 + 25 * i, 90, 160 - 15 * i)
        top = (i * h // n) % h
        rgb[top:top + h // 6] = (240, 240, 60)
        frames.append(rgb)
    return frames


def _half(plane: np.ndarray) -> np.ndarray:
    """2x2 mean: a full-resolution chroma plane -> 4:2:0."""
    h, w = plane.shape
    return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def write_y4m(path: Path, fps: int = 2, n: int = 6, w: int = 320, h: int = 240,
              frames: list[np.ndarray] | None = None) -> Path:
    """A YUV4MPEG2 (C420) file: Chromium's --use-file-for-fake-video-capture plays it, looping at `fps`, as the
    webcam: `frames` (uint8 RGB (h, w, 3) each), or `n` pattern frames."""
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames if frames is not None else pattern_frames(n, w, h):
            r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b  # BT.601 full range, as C420jpeg means
            u = (b - y) * 0.564 + 128
            v = (r - y) * 0.713 + 128
            f.write(b"FRAME\n")
            for plane in (y, _half(u), _half(v)):
                f.write(np.clip(plane.round(), 0, 255).astype(np.uint8).tobytes())
    return path


def write_webm(path: Path, fps: int = 4, n: int = 8, w: int = 160, h: int = 120) -> Path:
    """A small VP8 WebM that Chromium's <video> plays (OpenCV's FFmpeg writes it)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write VP8 WebM here"
    for rgb in pattern_frames(n, w, h):
        writer.write(rgb[..., ::-1].copy())
    writer.release()
    return path
