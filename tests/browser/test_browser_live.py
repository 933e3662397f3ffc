"""Live video on the page (issue 23): a still camera with sensor noise (a y4m file played by Chromium as the webcam)
on the page's defaults (stability steady, the skip filter on): the page counts skipped frames apart from generated
ones, and the picture does not jump."""

from __future__ import annotations

import numpy as np
import pytest
from browser_helpers import start, wait_frames, wait_status, write_y4m

CAMERA_FPS = 10
SPIKE = 8.0  # grey levels: a picture unlike the one before (blank, foreign, unblended); still frames change by ~1

FRAME_LOG = """() => { window.frameLog = [];
  window.sdxs.session.addEventListener('frame', (e) => window.frameLog.push(
    {skipped: e.detail.skipped, reused: e.detail.reused, settling: e.detail.settling})); }"""


def still_scene(seed: int, w: int = 640, h: int = 480) -> np.ndarray:
    """A gradient and a disc, the same in every frame but for Gaussian noise (sigma 3 levels), as a still webcam."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 200 + 30, y / h * 180 + 40, np.full_like(x, 120)], -1)
    base[(x - w * 0.45) ** 2 + (y - h * 0.5) ** 2 < (h * 0.22) ** 2] = (220, 190, 60)
    return np.clip(base + np.random.default_rng(seed).normal(0, 3, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def chromium_args(chromium_args, tmp_path_factory):
    y4m = write_y4m(tmp_path_factory.mktemp("camera") / "still.y4m", fps=CAMERA_FPS, w=640, h=480,
                    frames=[still_scene(seed) for seed in range(12)])
    return [*chromium_args, f"--use-file-for-fake-video-capture={y4m}"]


def test_a_still_noisy_camera_is_mostly_skipped_counted_apart_and_does_not_flicker(app, open_page):
    page = open_page(app.url)
    page.evaluate(FRAME_LOG)
    assert page.evaluate("() => window.sdxs.controls.values.skip_threshold") > 0, "the skip filter is off"
    assert page.input_value("#stability") == "steady"
    skipped_before = app.metric("sdxs_frames_total", result="skipped")
    start(page)
    wait_status(page, "Live")
    wait_frames(page, 0)
    page.wait_for_function("() => window.frameLog.filter((f) => f.skipped).length >= 15", timeout=40_000)
    log = page.evaluate("() => window.frameLog")
    shown = page.evaluate("() => ({skipped: document.getElementById('m-skipped').textContent, "
                          "out: document.getElementById('m-out').textContent, "
                          "changes: window.sdxs.metrics.changes.map((c) => c.value), "
                          "snapshot: window.sdxs.metrics.snapshot()})")
    generated = [f for f in log if not f["skipped"] and not f["reused"]]
    assert len(log) - len(generated) >= 15 and float(shown["skipped"]) > 0, shown
    assert shown["snapshot"]["outFps"] < shown["snapshot"]["skippedFps"], shown["snapshot"]  # counted apart
    assert app.metric("sdxs_frames_total", result="skipped") > skipped_before
    assert shown["changes"] and max(shown["changes"]) < SPIKE, shown["changes"]
    assert not page.errors
