"""Queueing, server full and reconnecting, against a real app limited to one session and a queue of one."""

from __future__ import annotations

import pytest
from browser_helpers import frames_drawn, wait_frames, wait_status


@pytest.fixture(scope="module")
def limited(app_factory):
    return app_factory("--max-sessions", "1", "--max-queue", "1")


def test_second_page_queues_third_sees_server_full_and_second_starts_when_first_leaves(limited, open_page):
    first = open_page(limited.url)
    wait_status(first, "Live")
    wait_frames(first, 0)

    second = open_page(limited.url)
    assert "1 of 1" in wait_status(second, "In line")
    assert "number 1 in line" in second.inner_text("#notice-text")

    third = open_page(limited.url)
    wait_status(third, "Server full")
    assert "full" in third.inner_text("#notice-text")

    third.context.close()
    first.context.close()  # the first visitor leaves: the queued page starts by itself
    wait_status(second, "Live", timeout_s=20)
    wait_frames(second, 0)
    assert not second.errors


def test_page_reconnects_after_the_server_restarts(limited, open_page):
    page = open_page(limited.url)
    wait_status(page, "Live", timeout_s=20)
    wait_frames(page, 0)
    limited.stop()
    wait_status(page, "Reconnecting", timeout_s=20)
    limited.start()
    wait_status(page, "Live", timeout_s=30)
    wait_frames(page, frames_drawn(page))
    assert not page.errors


def test_time_limit_shows_time_left_then_ends_and_start_again_rejoins(app_factory, open_page):
    short = app_factory("--session-time-limit-s", "4")
    page = open_page(short.url)
    wait_status(page, "Live")
    assert "Time left in this session: 0:0" in page.inner_text("#time-left")
    wait_status(page, "Stopped", timeout_s=15)
    assert "time is up" in page.inner_text("#notice-text")
    page.click("#notice-action")
    wait_status(page, "Live")
    assert not page.errors
