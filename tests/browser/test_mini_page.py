"""The shipped miniature model (`--model mini`) in a real browser: the page says what it is, and digits sketched with
the mouse come back as those digits, checked by the miniature's own classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from browser_helpers import draw_stroke, frames_drawn, start, wait_status
from digit_strokes import STROKES, WIDTH
from safetensors.torch import load_file

from sdxs.loading import MINI_DIR
from training.mini import data as mdata
from training.mini.metrics import DigitClassifier

OUTPUT_PIXELS = """() => {
  const c = document.getElementById('output');
  return { w: c.width, h: c.height, data: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data) };
}"""


@pytest.fixture(scope="module")
def mini_app(app_factory):
    return app_factory("--model", "mini")


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    model = DigitClassifier()
    model.load_state_dict(load_file(str(MINI_DIR / "digit_classifier.safetensors")))
    return model.eval()


def output_digit(page, classifier: DigitClassifier) -> int:
    shown = page.evaluate(OUTPUT_PIXELS)
    rgb = np.array(shown["data"], np.uint8).reshape(shown["h"], shown["w"], 4)[..., :3]
    unit = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        return int(classifier(unit)[1].argmax(1))


def settled(page) -> None:
    """Wait until the output shows the current sketch and parameters: a REUSED answer (input and parameters unchanged
    since the last output) sent after the drawing ended.  Twice: a refresh already in flight while the last stroke
    was drawn may be a REUSED answer to the sketch before it.  While waiting, the pump is asked to send at once
    (``touch``) instead of at its 1 s refresh; the server answers an unchanged sketch from its cache."""
    for _ in range(2):
        page.wait_for_function(
            "(n) => { const c = document.getElementById('output');"
            " if (Number(c.dataset.frames || 0) > n && c.dataset.reused === 'true') return true;"
            " window.sdxs.pump.touch(); return false; }",
            arg=frames_drawn(page), timeout=30_000, polling=50)


def test_the_page_says_what_the_miniature_is(mini_app, open_page):
    page = open_page(mini_app.url)
    page.wait_for_selector("#model-banner", state="visible")
    assert "Miniature" in page.inner_text("#model-banner")
    page.wait_for_selector("#preset")
    assert page.input_value("#p-prompt") in [mdata.PROMPT.format(k) for k in range(10)]
    assert not page.errors


def test_sketched_digits_come_back_as_those_digits(mini_app, open_page, classifier):
    page = open_page(mini_app.url)
    page.check("input[name='source'][value='sketch']")
    page.wait_for_selector("#sketch", state="visible")
    start(page)
    wait_status(page, "Live")
    page.wait_for_function("() => document.getElementById('p-mode').value === 'sketch'")
    brush = round(WIDTH * page.locator("#sketch").bounding_box()["width"])  # in screen pixels, as the slider is
    page.eval_on_selector("#brush-size", "(r, v) => { r.value = v; r.dispatchEvent(new Event('input')); }", brush)
    seen = []
    for digit in range(10):
        page.click("#clear")
        page.select_option("#preset", mdata.PROMPT.format(digit))
        for stroke in STROKES[digit]:
            draw_stroke(page, stroke)
        settled(page)
        seen.append(output_digit(page, classifier))
    right = sum(s == d for d, s in enumerate(seen))
    assert right >= 8, f"sketched 0-9 came back as {seen}"
    assert not page.errors
