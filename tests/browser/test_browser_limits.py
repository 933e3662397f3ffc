"""Queueing, server full and reconnecting, against a real app limited to one session and a queue of one."""

from __future__ import annotations

import re

import pytest
from browser_helpers import ARTIFACTS, frames_drawn, readouts, start, wait_frames, wait_status, wait_until

# Mean brightness (0-255) of the output canvas as the visitor sees it (transparent counts as the black behind it).
OUTPUT_BRIGHTNESS = """() => { const c = document.getElementById('output');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let sum = 0;
  for (let i = 0; i < d.length; i += 4) sum += (d[i] + d[i + 1] + d[i + 2]) / 3 * d[i + 3] / 255;
  return sum / (d.length / 4); }"""


@pytest.fixture(scope="module")
def limited(app_factory):
    return app_factory("--max-sessions", "1", "--max-queue", "1")


def test_second_page_queues_third_sees_server_full_and_second_starts_when_first_leaves(limited, open_page):
    first = open_page(limited.url)
    start(first)
    wait_status(first, "Live")
    wait_frames(first, 0)

    second = open_page(limited.url)
    start(second)
    assert "1 of 1" in wait_status(second, "In line")
    notice = second.inner_text("#notice-text")
    assert "number 1 in line" in notice
    assert re.search(r"estimated wait at most \d+:\d\d", notice), notice
    # Queued: the output shows a preview of the camera, not a black square, and there is nothing to save yet.
    second.wait_for_function(f"() => ({OUTPUT_BRIGHTNESS})() > 20", timeout=10_000)
    assert second.is_visible("#output-hint") and "Preview" in second.inner_text("#output-hint")
    assert second.is_disabled("#snapshot") and second.is_disabled("#record")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    second.screenshot(path=str(ARTIFACTS / "layout-desktop-queued.png"))

    third = open_page(limited.url)
    start(third)
    wait_status(third, "Server full")
    assert "full" in third.inner_text("#notice-text")
    third.context.close()

    second.click("#start")  # Stop while queued frees the queue place
    wait_status(second, "Stopped")
    wait_until(lambda: limited.metric("sdxs_sessions", state="queued") == 0, timeout_s=5, what="queue place freed")
    start(second)  # and Start takes it again
    wait_status(second, "In line")

    first.context.close()  # the first visitor leaves: the queued page starts by itself
    wait_status(second, "Live", timeout_s=20)
    wait_frames(second, 0)
    assert second.is_enabled("#snapshot")
    assert not second.errors


def test_page_reconnects_after_the_server_restarts(limited, open_page):
    page = open_page(limited.url)
    start(page)
    wait_status(page, "Live", timeout_s=20)
    wait_frames(page, 0)
    limited.stop()
    wait_status(page, "Reconnecting", timeout_s=20)
    # No stale numbers while nothing flows, and the last picture is dimmed.
    assert set(readouts(page).values()) <= {"–", ""}, readouts(page)
    assert float(page.eval_on_selector("#output", "c => getComputedStyle(c).opacity")) < 0.6
    limited.start()
    wait_status(page, "Live", timeout_s=30)
    wait_frames(page, frames_drawn(page))
    assert float(page.eval_on_selector("#output", "c => getComputedStyle(c).opacity")) == 1
    assert not page.errors


def test_time_limit_shows_time_left_then_ends_and_start_again_rejoins(app_factory, open_page):
    short = app_factory("--session-time-limit-s", "4")
    page = open_page(short.url)
    start(page)
    wait_status(page, "Live")
    page.wait_for_function("() => document.getElementById('time-left').textContent"
                           ".includes('Time left in this session: 0:0')", timeout=5_000)  # its own message
    wait_status(page, "Stopped", timeout_s=15)
    assert "time is up" in page.inner_text("#notice-text")
    page.click("#notice-action")
    wait_status(page, "Live")
    assert not page.errors
