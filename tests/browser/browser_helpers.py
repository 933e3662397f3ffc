"""Page helpers for the real-browser tests (canvas hashes, waiting for frames and status, mouse strokes)."""

from __future__ import annotations

import socket


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

