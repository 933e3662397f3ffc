"""Layout at phone (390x844, touch) and desktop (1280x800) sizes: the output and the prompt on the first screen, the
input as picture in picture on phones (in sketch mode canvas and result both visible, nothing lying on the canvas),
tap targets of at least 44 px on phones, no control wider than its column, no readout wrapped or cut. Screenshots of
every state land in $SDXS_ARTIFACTS (tmp/artifacts/browser) as layout-*.png."""

from __future__ import annotations

import pytest
from browser_helpers import ARTIFACTS, SIZES, draw_stroke, start, wait_frames, wait_status

PHONE = (390, 844)
DESKTOP = (1280, 800)
MIN_TAP_PX = 44

# Every visible control with the box a finger hits: a checkbox, radio or file input counts by its label.
TAP_TARGETS = """() => [...document.querySelectorAll('button, select, textarea, input, a[href]')]
  .filter((el) => el.getClientRects().length && getComputedStyle(el).visibility !== 'hidden')
  .map((el) => {
    const small = el.matches('input[type=checkbox], input[type=radio], input[type=file]');
    const box = ((small && el.closest('label')) || el).getBoundingClientRect();
    return { what: el.id || el.name || el.textContent.trim() || el.outerHTML.slice(0, 60),
             w: box.width, h: box.height };
  })"""


# Dark pixels of the sketch canvas within `region` = [x0, y0, x1, y1], fractions of the canvas.
INK_IN = """(region) => { const c = document.getElementById('sketch');
  const [x0, y0, x1, y1] = region.map((v) => Math.round(v * c.width));
  const d = c.getContext('2d').getImageData(x0, y0, x1 - x0, y1 - y0).data; let ink = 0;
  for (let i = 0; i < d.length; i += 4) ink += d[i] < 128; return ink; }"""
# What lies on top at each point (page coordinates): its id, or its tag.
TOP_AT = """(points) => points.map(([x, y]) => {
  const e = document.elementFromPoint(x, y); return e && (e.id || e.tagName); })"""
# Boxes wider than their content allows: an element whose content overflows it sideways, or one past the screen.
OVERFLOWS = """() => [...document.querySelectorAll('body *')].filter((e) => e.getClientRects().length)
  .filter((e) => e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX === 'visible'
    || e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
  .map((e) => `${e.id || e.className || e.tagName}: ${e.scrollWidth} px in ${e.clientWidth}`)"""
TILES_ON_ONE_LINE = """() => [...document.querySelectorAll('#metrics > div')].every((tile) =>
  new Set([...tile.querySelectorAll('dd')].flatMap((dd) => [...dd.getClientRects()].map((r) => Math.round(r.top))))
    .size <= 1)"""
CORNERS = {  # a short stroke from each corner inwards, and the corner's region
    "top left": ([(0.02, 0.02), (0.1, 0.1)], [0, 0, 0.15, 0.15]),
    "top right": ([(0.98, 0.02), (0.9, 0.1)], [0.85, 0, 1, 0.15]),
    "bottom left": ([(0.02, 0.98), (0.1, 0.9)], [0, 0.85, 0.15, 1]),
    "bottom right": ([(0.98, 0.98), (0.9, 0.9)], [0.85, 0.85, 1, 1]),
}


def box(page, selector: str) -> dict:
    b = page.locator(selector).bounding_box()
    assert b, f"{selector} is not displayed"
    return b


def on_first_screen(page, selector: str, height: int) -> bool:
    b = box(page, selector)
    return b["y"] >= 0 and b["y"] + b["height"] <= height and b["width"] > 0


def inside(inner: dict, outer: dict) -> bool:
    return (inner["x"] >= outer["x"] - 1 and inner["y"] >= outer["y"] - 1
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 1
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 1)


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"layout-{name}.png"))


def small_targets(page) -> list[dict]:
    return [t for t in page.evaluate(TAP_TARGETS) if t["w"] < MIN_TAP_PX - 0.5 or t["h"] < MIN_TAP_PX - 0.5]


def choose(page, source: str) -> None:
    page.click(f".tabs label:has(input[value='{source}'])")
    page.wait_for_function("(s) => window.sdxs.pump.source === s", arg=source)


@pytest.fixture(scope="module")
def phone_page(app, browser):
    """One live phone page for the phone tests (they only look and switch tabs)."""
    context = browser.new_context(viewport={"width": PHONE[0], "height": PHONE[1]}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.goto(app.url)
    page.wait_for_selector("#p-prompt")
    yield page
    context.close()


def test_phone_not_started_every_control_is_a_44px_target(phone_page):
    shoot(phone_page, "phone-not-started")
    assert small_targets(phone_page) == []
    assert on_first_screen(phone_page, "#start", PHONE[1])


def test_phone_webcam_output_prompt_and_camera_pip_on_the_first_screen(phone_page):
    start(phone_page)
    wait_status(phone_page, "Live")
    wait_frames(phone_page, 0)
    shoot(phone_page, "phone-webcam")
    for selector in ("#output-view", "#p-prompt", "#input-view"):
        assert on_first_screen(phone_page, selector, PHONE[1]), f"{selector} is below the first screen"
    pip, out = box(phone_page, "#input-view"), box(phone_page, "#output-view")
    assert inside(pip, out) and pip["width"] < out["width"] / 2, "the camera is no picture in picture"
    prompt = box(phone_page, "#p-prompt")
    assert 0 <= prompt["y"] - (out["y"] + out["height"]) < 60, "the prompt is not right under the output"
    assert small_targets(phone_page) == []


def test_phone_sketch_canvas_and_result_together(phone_page):
    choose(phone_page, "sketch")
    shoot(phone_page, "phone-sketch")
    for selector in ("#sketch", "#output", "#p-prompt"):
        assert on_first_screen(phone_page, selector, PHONE[1]), f"{selector} is below the first screen"
    assert box(phone_page, "#sketch")["width"] > PHONE[0] * 0.8, "the canvas is too small to draw on"
    assert small_targets(phone_page) == []
    phone_page.click("#swap")  # the visitor may want the result big instead
    assert box(phone_page, "#output")["width"] > PHONE[0] * 0.8
    assert on_first_screen(phone_page, "#sketch", PHONE[1])
    phone_page.click("#swap")


def test_phone_video_tab_drop_zone(phone_page):
    choose(phone_page, "file")
    shoot(phone_page, "phone-video-file")
    assert on_first_screen(phone_page, "#drop-zone", PHONE[1])
    assert small_targets(phone_page) == []
    choose(phone_page, "text")
    shoot(phone_page, "phone-text")
    assert on_first_screen(phone_page, "#output-view", PHONE[1]) and on_first_screen(phone_page, "#p-prompt", PHONE[1])
    assert small_targets(phone_page) == []
    assert not phone_page.errors


def test_desktop_output_and_prompt_on_the_first_screen(app, open_page):
    page = open_page(app.url, viewport=DESKTOP)
    shoot(page, "desktop-not-started")
    start(page)
    wait_status(page, "Live")
    wait_frames(page, 0)
    shoot(page, "desktop-webcam")
    for selector in ("#output-view", "#p-prompt", "#input-view", "#start", "#m-latency"):
        assert on_first_screen(page, selector, DESKTOP[1]), f"{selector} is below the first screen"
    choose(page, "sketch")
    shoot(page, "desktop-sketch")
    for selector in ("#sketch", "#output", "#p-prompt"):
        assert on_first_screen(page, selector, DESKTOP[1]), f"{selector} is below the first screen"
    assert not page.errors


def open_at(open_page, url: str, size: str):
    viewport, phone = SIZES[size]
    page = open_page(url, viewport=viewport, phone=phone)
    page.wait_for_selector("#p-prompt")
    return page


def corners_draw(page) -> dict[str, tuple]:
    """Per corner of the sketch canvas: what lies on top there, and the ink a stroke starting there left."""
    b = box(page, "#sketch")
    found = {}
    for corner, (stroke, region) in CORNERS.items():
        points = [(b["x"] + fx * b["width"], b["y"] + fy * b["height"]) for fx, fy in stroke[:1]]
        before = page.evaluate(INK_IN, region)
        draw_stroke(page, stroke)
        found[corner] = (page.evaluate(TOP_AT, points)[0], page.evaluate(INK_IN, region) - before)
    return found


@pytest.mark.parametrize("size", SIZES)
def test_nothing_lies_on_the_sketch_canvas_and_a_stroke_in_every_corner_draws(app, open_page, size):
    page = open_at(open_page, app.url, size)
    choose(page, "sketch")
    drawn = corners_draw(page)
    shoot(page, f"{size}-sketch-corners")
    for corner, (top, ink) in drawn.items():
        assert top == "sketch" and ink > 0, f"{corner}: {top} lies there, the stroke left {ink} dark pixels"
    if page.is_visible("#swap"):  # phones: the result big, the canvas small; still nothing on the canvas
        page.click("#swap")
        assert box(page, "#output")["width"] > box(page, "#sketch")["width"]
        drawn = corners_draw(page)
        shoot(page, f"{size}-sketch-corners-swapped")
        for corner, (top, ink) in drawn.items():
            assert top == "sketch" and ink > 0, f"swapped, {corner}: {top} lies there, the stroke left {ink} pixels"
    assert not page.errors


@pytest.mark.parametrize("size", SIZES)
def test_the_page_fits_the_screen_and_no_control_or_readout_is_wrapped_or_cut(app, open_page, size):
    page = open_at(open_page, app.url, size)
    width = SIZES[size][0][0]
    page.fill("#p-seed", "4294967295")  # the largest seed: ten digits
    for source in ("camera", "sketch", "file", "text"):
        choose(page, source)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width, f"{source}: wider than the screen"
        assert page.evaluate(OVERFLOWS) == [], source
    seed = page.eval_on_selector("#p-seed", "(s) => [s.scrollWidth, s.clientWidth]")
    assert seed[0] <= seed[1], f"the seed is cut: {seed[0]} px of digits in {seed[1]} px"
    choose(page, "camera")
    start(page)
    wait_status(page, "Live")
    page.wait_for_function("() => /^\\d+ ms \\(\\d+%\\)$/.test(document.getElementById('m-server').textContent)")
    page.evaluate("() => window.sdxs.metrics.render()")
    assert page.evaluate(TILES_ON_ONE_LINE), page.inner_text("#metrics")
    assert page.evaluate(OVERFLOWS) == []
    assert not page.errors
