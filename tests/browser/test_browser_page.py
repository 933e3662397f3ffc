"""The real-time page against the real app (tiny random model): webcam, prompt changes, sketching, Gradio."""

from __future__ import annotations

import re
import time
import urllib.request
from urllib.parse import urlparse

import pytest
from browser_helpers import (
    canvas_hash,
    draw_stroke,
    frames_drawn,
    free_port,
    readouts,
    start,
    wait_frames,
    wait_status,
)
from prefix_proxy import ProxyServer


def settled_output(page, after_frames: int, timeout_s: float = 30) -> int:
    """Wait for a REUSED frame newer than `after_frames`: the server saw the current input and parameters again, so
    the output canvas shows their result. Returns the output hash."""
    page.wait_for_function(
        "(n) => { const c = document.getElementById('output');"
        " return Number(c.dataset.frames || 0) > n && c.dataset.reused === 'true'; }",
        arg=after_frames, timeout=timeout_s * 1000)
    return canvas_hash(page)


def use_sketch(page) -> None:
    page.click("text=Sketch")
    page.wait_for_selector("#sketch", state="visible")
    page.wait_for_function("() => document.getElementById('p-mode')?.value === 'image' || "
                           "document.getElementById('p-mode')?.value === 'sketch'")


def test_webcam_frames_flow_and_readouts_show_numbers(app, open_page):
    hosts = set()
    page = open_page(app.url)
    page.on("request", lambda r: hosts.add(urlparse(r.url).hostname))
    start(page)
    wait_status(page, "Live")
    first = wait_frames(page, 0)
    before = canvas_hash(page)
    wait_frames(page, first + 3)
    assert canvas_hash(page) != before, "the output canvas did not change while the webcam streams"
    page.wait_for_function("() => parseFloat(document.getElementById('m-out').textContent) > 0", timeout=10_000)
    assert float(page.inner_text("#m-in")) > 0
    assert re.fullmatch(r"\d+ ms", page.inner_text("#m-latency"))
    assert re.match(r"\d+ ms \(\d+%\)", page.inner_text("#m-server"))
    assert page.is_visible("#model-banner"), "the tiny model has random weights: the page must say so"
    assert "random weights" in page.inner_text("#model-banner")
    assert hosts <= {"127.0.0.1"}, f"requests to other hosts: {hosts}"
    assert not page.errors


def test_page_works_behind_a_reverse_proxy_under_a_path_prefix(app, open_page):
    with ProxyServer("/some/prefix", app.url.rstrip("/"), free_port()) as proxy:
        page = open_page(proxy.url)
        start(page)
        wait_status(page, "Live")
        wait_frames(page, 1)
        assert not page.errors


def test_snapshot_carries_prompt_and_seed_and_recording_gives_webm(app, open_page):
    from PIL import Image

    page = open_page(app.url)
    start(page)
    wait_status(page, "Live")
    wait_frames(page, 0)
    with page.expect_download() as snap:
        page.click("#snapshot")
    with Image.open(snap.value.path()) as png:
        assert png.format == "PNG"
        assert png.text["prompt"] == page.input_value("#p-prompt") and png.text["seed"] == page.input_value("#p-seed")

    page.click("#record")
    wait_frames(page, frames_drawn(page) + 3)
    with page.expect_download() as rec:
        page.click("#record")
    with open(rec.value.path(), "rb") as webm:
        assert webm.read(4) == b"\x1aE\xdf\xa3", "not a WebM (EBML) file"
    assert not page.errors


def test_prompt_change_reaches_the_server_and_later_frames_use_it(app, open_page):
    page = open_page(app.url)
    start(page)
    wait_status(page, "Live")
    use_sketch(page)
    page.select_option("#stability", "off")  # with it on, a picture also remembers the ones before it
    page.wait_for_function("() => window.sdxs.output.params.feedback === 0 && window.sdxs.output.params.bank === 0")
    draw_stroke(page, [(0.2, 0.2), (0.8, 0.5), (0.3, 0.8)])
    cat = settled_output(page, frames_drawn(page))

    page.fill("#p-prompt", "a red bicycle on a beach")
    page.wait_for_function("() => window.sdxs.output.params.prompt === 'a red bicycle on a beach'")
    bicycle = settled_output(page, frames_drawn(page))
    assert bicycle != cat, "frames after the prompt change look the same as before"

    page.fill("#p-prompt", "a photo of a cat, highly detailed")
    page.wait_for_function("() => window.sdxs.output.params.prompt === 'a photo of a cat, highly detailed'")
    assert settled_output(page, frames_drawn(page)) == cat, "same input, prompt and seed gave another picture"
    assert not page.errors


def test_sketch_strokes_produce_output_undo_removes_one_and_idle_costs_nothing(app, open_page):
    page = open_page(app.url)
    start(page)
    wait_status(page, "Live")
    use_sketch(page)
    draw_stroke(page, [(0.1, 0.5), (0.9, 0.5)])
    one_stroke = canvas_hash(page, "sketch")
    out_one = settled_output(page, frames_drawn(page))

    draw_stroke(page, [(0.5, 0.1), (0.5, 0.9)])
    assert canvas_hash(page, "sketch") != one_stroke
    out_two = settled_output(page, frames_drawn(page))
    assert out_two != out_one, "a second stroke did not change the output"

    page.click("#undo")
    assert page.evaluate("() => window.sdxs.sketch.strokes.length") == 1
    assert canvas_hash(page, "sketch") == one_stroke, "undo did not restore the one-stroke sketch"
    assert settled_output(page, frames_drawn(page)) == out_one

    page.check("#show-control")  # the control image the ControlNet sees, from the server (or the page itself)
    page.wait_for_function("() => { const i = document.getElementById('control-image');"
                           " return !i.hidden && i.complete && i.naturalWidth > 0; }", timeout=10_000)

    # Idle canvas: the page keeps refreshing, the server answers from its cache, the model does not run.
    calls = app.metric("sdxs_inference_seconds_count")
    reused = app.metric("sdxs_frames_total", result="reused")
    time.sleep(3)
    assert app.metric("sdxs_inference_seconds_count") == calls, "an idle sketch canvas caused inference"
    assert app.metric("sdxs_frames_total", result="reused") > reused
    shown = readouts(page)  # answers from the cache are no new pictures: the output reads "unchanged", not 0 fps
    assert shown["out"] == "unchanged", shown
    assert not page.errors


def test_text_only_mode_generates_while_typing_and_sources_work_by_keyboard(app, open_page):
    page = open_page(app.url)
    start(page)
    wait_status(page, "Live")
    page.focus('input[name="source"][value="camera"]')
    page.keyboard.press("ArrowRight")  # a radio group: arrows move between sources
    page.wait_for_selector("#sketch", state="visible")
    page.click("text=Text only")
    page.wait_for_function("() => document.getElementById('p-mode').value === 'text'")
    before = frames_drawn(page)
    page.fill("#p-prompt", "a lighthouse at night")
    first = settled_output(page, before)
    page.fill("#p-prompt", "a lighthouse at dawn")
    page.wait_for_function("() => window.sdxs.output.params.prompt === 'a lighthouse at dawn'")
    assert settled_output(page, frames_drawn(page)) != first
    assert not page.errors


# Record the parameter messages the page sends, and report a frame in flight while window.__hold is true.
HOLD_FRAMES_AND_RECORD_PARAMS = """() => {
  const s = window.sdxs.session, send = s.sendParams.bind(s);
  window.__sent = []; window.__hold = true;
  s.sendParams = (p) => { window.__sent.push(p); return send(p); };
  const size = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(s.inFlight), "size").get;
  Object.defineProperty(s.inFlight, "size", { configurable: true,
    get() { return window.__hold ? Math.max(1, size.call(this)) : size.call(this); } });
}"""


def test_two_mode_changes_while_frames_are_in_flight_go_out_as_one_and_the_last_wins(app, open_page):
    """Webcam -> Sketch -> Text only, quicker than the frames in flight are answered: the page waits, then sends one
    parameter message with the last mode (two would race, and an image mode landing last would stall the page)."""
    page = open_page(app.url)
    start(page)
    wait_status(page, "Live")
    wait_frames(page, 0)
    page.evaluate(HOLD_FRAMES_AND_RECORD_PARAMS)
    page.click("text=Sketch")
    page.wait_for_selector("#sketch", state="visible")
    page.wait_for_timeout(60)  # a few polls of the drain loop
    page.click("text=Text only")
    page.wait_for_function("() => document.getElementById('p-mode').value === 'text'")
    page.fill("#p-prompt", "a lighthouse at noon")
    page.wait_for_timeout(300)  # past the controls' debounce: the prompt change joins the waiting mode change
    assert page.evaluate("() => window.__sent.length") == 0  # nothing goes out while a frame is in flight
    page.evaluate("() => { window.__hold = false; }")
    page.wait_for_function("() => window.sdxs.modes.server === 'text'")
    before = frames_drawn(page)
    # one message; leaving the webcam also turned its video settings (stability, skip filter) off (stability.js)
    (sent,) = page.evaluate("() => window.__sent")
    video = {k: v for k, v in sent.items() if k not in ("mode", "prompt")}
    assert sent["mode"] == "text" and sent["prompt"] == "a lighthouse at noon" and video, sent
    assert set(video) <= {"feedback", "bank", "skip_threshold"} and not any(video.values()), sent
    settled_output(page, before)  # frames flow again, in text mode
    assert page.evaluate("() => window.sdxs.output.params.prompt") == "a lighthouse at noon"
    assert not page.errors


def test_traced_sketch_guide_can_be_removed_and_the_page_has_a_favicon(app, open_page, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), "orange").save(tmp_path / "guide.png")
    page = open_page(app.url)
    use_sketch(page)
    assert page.is_hidden("#remove-guide")
    page.set_input_files("#trace-file", str(tmp_path / "guide.png"))
    page.wait_for_selector("#guide", state="visible")
    page.click("#remove-guide")
    page.wait_for_selector("#guide", state="hidden")
    assert page.is_hidden("#remove-guide") and not page.evaluate("() => window.sdxs.sketch.hasGuide")

    icon = page.evaluate("() => document.querySelector('link[rel~=icon]')?.href")
    assert icon and not icon.startswith("data:"), icon
    with urllib.request.urlopen(icon, timeout=5) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("image/")
        assert b"<svg" in r.read(), "the favicon is an SVG icon"
    assert not page.errors


def test_gradio_webcam_tab_streams_through_the_shared_worker(app, open_page):
    page = open_page(app.url + "gradio/")
    page.get_by_role("tab", name="Webcam (live)").click()
    page.get_by_text("Click to Access Webcam").click()
    calls = app.metric("sdxs_inference_seconds_count")
    page.get_by_role("button", name="capture photo").click()  # Gradio's label for "Record"
    page.wait_for_function("() => [...document.querySelectorAll('img')].some((i) => i.naturalWidth > 0)",
                           timeout=30_000)
    deadline = time.monotonic() + 20
    while app.metric("sdxs_inference_seconds_count") < calls + 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert app.metric("sdxs_inference_seconds_count") >= calls + 3, "the Gradio stream did not reach the worker"


def test_gradio_endpoints_answer_through_gradio_client(app, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image, ImageDraw

    calls = app.metric("sdxs_inference_seconds_count")
    sketch = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(sketch).line([(20, 20), (280, 180)], fill="black", width=6)
    sketch.save(tmp_path / "sketch.png")
    client = Client(app.url + "gradio/", verbose=False, download_files=str(tmp_path))
    try:
        outputs = [
            client.predict("a cat", 1, api_name="/text_to_image"),
            client.predict(handle_file(str(tmp_path / "sketch.png")), "a cat", 2, 0.5, api_name="/image_to_image"),
            client.predict(handle_file(str(tmp_path / "sketch.png")), "a cat", 3, 0.8, api_name="/sketch_to_image"),
        ]
        with pytest.raises(AppError, match="prompt"):
            client.predict("", 1, api_name="/text_to_image")
    finally:
        client.close()
    sizes = set()
    for path in outputs:
        with Image.open(path) as image:
            sizes.add(image.size)
    assert len(sizes) == 1 and next(iter(sizes))[0] == next(iter(sizes))[1]
    assert app.metric("sdxs_inference_seconds_count") >= calls + 3, "Gradio requests bypassed the shared worker"


def test_each_mode_shows_exactly_the_fields_the_schema_gives_it_and_sources_offer_the_schemas_modes(app, open_page):
    """Which settings apply in which mode, and which modes a source can feed, come from the parameter schema
    (`modes` per field, `inputs` of `mode`): the page shows a field exactly in the modes its schema names."""
    page = open_page(app.url)
    schema = page.evaluate("async () => (await (await fetch('config.json')).json()).schema")
    page.wait_for_selector("#p-mode")
    for mode in schema["$defs"]["Mode"]["enum"]:
        page.evaluate("""(mode) => { const s = document.querySelector('#p-mode');
                                     s.value = mode; s.dispatchEvent(new Event('input')); }""", mode)
        shown = set(page.evaluate("""() => [...document.querySelectorAll('[data-field]')]
                                       .filter((l) => !l.hidden).map((l) => l.dataset.field)"""))
        for field, prop in schema["properties"].items():
            if "modes" in prop:
                assert (field in shown) == (mode in prop["modes"]), (mode, field)
    inputs = schema["properties"]["mode"]["inputs"]
    page.click("label:has(input[value='sketch'])")
    offered = page.evaluate("() => [...document.querySelectorAll('#p-mode option')].filter((o) => !o.hidden)"
                            ".map((o) => o.value)")
    assert set(offered) == {m for m, kind in inputs.items() if kind in ("none", "picture", "drawing")}
    assert page.input_value("#p-mode") == "sketch"


def test_a_source_picked_before_the_schema_arrives_starts_in_its_own_mode(app, open_page):
    """The sketch tab chosen while config.json is still on its way: once the controls are built from the schema, the
    mode is the sketch's own (the modes a source feeds come from the schema, so before it there is nothing to fit)."""
    slow_config = """const fetch0 = window.fetch;
        window.fetch = (url, ...rest) => String(url).includes('config.json')
            ? new Promise((done) => setTimeout(() => done(fetch0(url, ...rest)), 1500)) : fetch0(url, ...rest);"""
    page = open_page(app.url, init_script=slow_config)
    page.check("input[name='source'][value='sketch']")
    assert page.evaluate("() => document.querySelectorAll('[data-field]').length") == 0  # no schema yet
    page.wait_for_function("() => document.getElementById('p-mode')?.value === 'sketch'", timeout=15000)
    assert not page.errors
