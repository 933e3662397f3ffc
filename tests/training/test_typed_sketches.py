"""The validation sketches of sketch mode (typed digits redrawn as pen strokes) and the rule that picks its notes."""

from __future__ import annotations

import numpy as np
import pytest

from sdxs.loading import MINI_DIR
from training.mini import typed_sketches as ts


def _row(scale: float, pen: float, legible_accuracy: float) -> dict:
    return {"control_scale": scale, "pen_width": pen, "legible_accuracy": legible_accuracy}


def test_the_best_setting_wins_and_a_tie_keeps_the_current_notes():
    rows = [_row(1.0, 0.1, 0.80), _row(1.0, 0.1, 0.82), _row(0.8, 0.1, 0.90), _row(0.8, 0.1, 0.92)]
    assert ts.choose(rows, (1.0, 0.1))["control_scale"] == 0.8  # 0.91 against 0.81 on the mean of two models
    close = [_row(1.0, 0.1, 0.810), _row(0.8, 0.075, 0.815)]
    choice = ts.choose(close, (1.0, 0.1))
    assert (choice["control_scale"], choice["pen_width"]) == (1.0, 0.1)  # within the tolerance: keep the notes
    assert choice["table"] == {"0.8@0.075": 0.815, "1.0@0.1": 0.81}


def _fonts():
    try:
        return ts.installed_fonts()
    except SystemExit as missing:
        pytest.skip(str(missing))


def test_a_typed_digit_becomes_strokes_of_the_pen_width():
    font = _fonts()[0]
    thin, thick = ts.typed_sketch(7, font, 0.05), ts.typed_sketch(7, font, 0.15)
    assert thin.shape == (ts.RENDER, ts.RENDER, 3) and thin.dtype == np.uint8
    assert set(np.unique(thin)) == {0, 255}  # black ink on white paper, as the page's canvas
    ink_thin, ink_thick = (thin[..., 0] == 0).mean(), (thick[..., 0] == 0).mean()
    assert 0.01 < ink_thin < ink_thick < 0.5
    rows, cols = np.nonzero(thin[..., 0] == 0)
    assert rows.max() - rows.min() > 0.6 * ts.RENDER  # about HEIGHT of the side tall
    controls = ts.served_controls([thin, thick])
    assert controls.shape == (2, 3, 32, 32) and 0 <= controls.min() and controls.max() <= 1
    assert controls[1].mean() > controls[0].mean()  # white strokes on black: more ink, more light


def test_the_shipped_model_follows_the_typed_sketches_only_with_its_controlnet():
    fonts = _fonts()[:2]
    follows, ignores = ts.score(MINI_DIR, [1.0, 0.0], [0.1], [0], fonts)
    assert follows["of"] == 20 and follows["legible"] >= 5
    # the neutral prompt names no digit: without the ControlNet's pull the output is whatever digit the noise gives
    assert follows["legible_accuracy"] >= ignores["legible_accuracy"] + 0.3, (follows, ignores)
