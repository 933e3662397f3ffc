"""What the page says is true (issue 25, items 3 and 5), at desktop and phone sizes, against the shared default app: a
refused camera is said and stays said while the sketch streams, no readout keeps a number that no longer holds (waiting
for video, answers from the server's cache), the edge map is offered before Start when config.json lists it,
"Reconnecting in N s" counts down, and the style preset names what the prompt really ends with."""

from __future__ import annotations

import re

import pytest
from browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FAKE_UI,
    SIZES,
    draw_stroke,
    readouts,
    start,
    wait_frames,
    wait_status,
)

# The notice as a visitor sees it, every 50 ms for `ms`: its text, or null while it is hidden.
NOTICE_OVER = """async (ms) => { const seen = [], notice = document.getElementById('notice');
  for (const end = performance.now() + ms; performance.now() < end; await new Promise((r) => setTimeout(r, 50)))
    seen.push(notice.checkVisibility() ? document.getElementById('notice-text').textContent : null);
  return seen; }"""
# Every text the status pill shows, in order.
PILL_LOG = """() => { window.pills = []; const pill = document.getElementById('status');
  new MutationObserver(() => window.pills.push(pill.textContent))
    .observe(pill, {childList: true, subtree: true, characterData: true}); }"""
# A countdown seen: "Reconnecting in N s…" right followed by "Reconnecting in N-1 s…".
COUNTED_DOWN = r"""() => window.pills.map((t) => Number((/^Reconnecting in (\d+) s/.exec(t) || [])[1]))
  .some((n, i, all) => n >= 2 && all[i + 1] === n - 1)"""
# Each metrics tile shows its value on one line: all its <dd> boxes share one top.
TILES_ON_ONE_LINE = """() => [...document.querySelectorAll('#metrics > div')].every((tile) =>
  new Set([...tile.querySelectorAll('dd')].flatMap((dd) => [...dd.getClientRects()].map((r) => Math.round(r.top))))
    .size <= 1)"""


@pytest.fixture(scope="module")
def refusing_browser(browser):
    """Chromium as a visitor who did not allow the camera: without FAKE_UI nobody accepts the permission prompt and
    getUserMedia fails at once with NotAllowedError ("Permission denied")."""
    refusing = browser.browser_type.launch(executable_path=CHROMIUM, args=[a for a in CHROMIUM_ARGS if a != FAKE_UI])
    yield refusing
    refusing.close()


def open_at(open_page, url: str, size: str, **kwargs):
    viewport, phone = SIZES[size]
    page = open_page(url, viewport=viewport, phone=phone, **kwargs)
    page.wait_for_selector("#p-prompt")  # config.json came: the controls are built
    return page


def choose(page, source: str) -> None:
    page.click(f".tabs label:has(input[value='{source}'])")
    page.wait_for_function("(s) => window.sdxs.pump.source === s", arg=source)


@pytest.mark.parametrize("size", SIZES)
def test_a_refused_camera_is_said_and_the_notice_stays_while_the_sketch_streams(app, open_page, refusing_browser,
                                                                                 size):
    page = open_at(open_page, app.url, size, using=refusing_browser)
    start(page)
    wait_status(page, "Live")
    page.wait_for_function("() => window.sdxs.pump.source === 'sketch'")
    seen = page.evaluate(NOTICE_OVER, 2000)
    assert seen and all(text and text.startswith("Camera unavailable (Permission denied)") for text in seen), seen
    notice = page.locator("#notice").bounding_box()
    assert notice["y"] >= 0 and notice["y"] + notice["height"] <= SIZES[size][0][1], "the notice is off screen"
    wait_frames(page, 0)  # the sketch streams meanwhile
    choose(page, "text")  # another source: the camera's trouble is no longer news
    page.wait_for_selector("#notice", state="hidden")
    assert not page.errors


@pytest.mark.parametrize("size", SIZES)
def test_waiting_for_video_shows_no_latency_of_pictures_long_gone(app, open_page, size):
    page = open_at(open_page, app.url, size)
    start(page)
    wait_status(page, "Live")
    page.wait_for_function("() => /^\\d+ ms/.test(document.getElementById('m-server').textContent)")
    choose(page, "file")  # no file chosen yet: nothing to send
    wait_status(page, "Waiting for video")
    page.wait_for_timeout(700)  # the readouts render every 500 ms
    shown = readouts(page)
    assert (shown["latency"], shown["server"]) == ("–", "–"), shown
    assert shown["in"] == "0.0", shown
    assert not page.errors


@pytest.mark.parametrize("size", SIZES)
def test_an_unchanged_sketch_reads_unchanged_not_zero_fps_and_each_tile_keeps_one_line(app, open_page, size):
    page = open_at(open_page, app.url, size)
    choose(page, "sketch")
    start(page)
    wait_status(page, "Live")
    draw_stroke(page, [(0.3, 0.3), (0.7, 0.6)])
    wait_frames(page, 0)
    # The canvas stays as it is: the 1 s refreshes come back from the cache, and no new picture is made.
    page.wait_for_function("() => document.getElementById('m-out').textContent === 'unchanged'", timeout=15_000)
    output_tile = " ".join(page.inner_text("#metrics > div:has(#m-out)").split())
    assert output_tile == "Output unchanged", output_tile
    assert page.evaluate(TILES_ON_ONE_LINE), page.inner_text("#metrics")
    assert not page.errors


@pytest.mark.parametrize("size", SIZES)
def test_the_edge_map_is_offered_before_start_when_config_lists_it(app, open_page, size):
    page = open_at(open_page, app.url, size)
    assert "control" in page.evaluate("async () => (await (await fetch('config.json')).json()).features")
    page.select_option("#p-mode", "edges")
    page.check("#show-control")
    page.wait_for_timeout(600)  # the control image is refreshed every 500 ms
    if page.is_visible("#notice"):
        assert "does not send" not in page.inner_text("#notice-text"), page.inner_text("#notice-text")
    start(page)
    wait_status(page, "Live")
    page.wait_for_function("() => { const i = document.getElementById('control-image');"
                           " return !i.hidden && i.complete && i.naturalWidth > 0; }", timeout=10_000)
    assert page.evaluate("() => window.sdxs.output.params.mode") == "edges"
    assert not page.errors


@pytest.mark.parametrize("size", SIZES)
def test_reconnecting_counts_down(app, open_page, size):
    page = open_at(open_page, app.url, size)
    # Every WebSocket is closed as a restarting server would close it (1001): the page backs off 0.5, 1, 2, 4 s.
    page.route_web_socket(re.compile(r"/ws$"), lambda ws: ws.close(code=1001, reason="restarting"))
    page.evaluate(PILL_LOG)
    start(page)
    wait_status(page, "Reconnecting")
    page.wait_for_function(COUNTED_DOWN, timeout=12_000)
    assert not page.errors


@pytest.mark.parametrize("size", SIZES)
def test_the_style_preset_names_what_the_prompt_ends_with(app, open_page, size):
    page = open_at(open_page, app.url, size)
    page.select_option("#preset", "Anime")
    assert page.input_value("#p-prompt").endswith(" | anime style, cel shading, vibrant colors")
    page.fill("#p-prompt", "a photo of a cat")  # the visitor typed the style words away
    assert page.input_value("#preset") == ""
    page.fill("#p-prompt", "a dog | oil painting, thick brush strokes")  # or typed a preset's words
    assert page.input_value("#preset") == "Oil painting"
    assert not page.errors
