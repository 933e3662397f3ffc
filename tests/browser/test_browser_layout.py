"""Layout at phone (390x844, touch) and desktop (1280x800) sizes: the output and the prompt on the first screen, the
input as picture in picture on phones (in sketch mode canvas and result both visible), tap targets of at least
44 px on phones. Screenshots of every state land in $SDXS_ARTIFACTS (tmp/artifacts/browser) as layout-*.png."""

from __future__ import annotations

import pytest
from browser_helpers import ARTIFACTS, start, wait_frames, wait_status

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
