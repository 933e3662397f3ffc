"""A model folder's notes for the page (``sdxs_model.json``): read as written, and a ``sketch`` or ``display`` object
the page could not use refused at load, naming the field."""

import json

import pytest

from sdxs.loading import model_notes


def _folder(tmp_path, notes: dict):
    (tmp_path / "sdxs_model.json").write_text(json.dumps(notes))
    return tmp_path


def test_notes_are_read_as_written_and_optional(tmp_path):
    assert model_notes(tmp_path) == {}
    notes = {"notice": "n", "example_prompts": ["a"],
             "sketch": {"pen_width": 0.1, "prompt": "a photo of a digit", "control_scale": 1.0},
             "display": {"upscale": "pixelated"}}
    assert model_notes(_folder(tmp_path, notes)) == notes
    assert model_notes(_folder(tmp_path, {"sketch": {"prompt": "x"}, "display": {}}))["sketch"] == {"prompt": "x"}


@pytest.mark.parametrize("notes, field", [
    ({"sketch": {"pen_width": 0}}, "sketch.pen_width"),
    ({"sketch": {"pen_width": 0.8}}, "sketch.pen_width"),
    ({"sketch": {"pen_width": "thin"}}, "sketch.pen_width"),
    ({"sketch": {"prompt": "  "}}, "sketch.prompt"),
    ({"sketch": {"control_scale": 1.5}}, "sketch.control_scale"),
    ({"display": {"upscale": "nearest"}}, "display.upscale"),
])
def test_a_note_the_page_cannot_use_is_refused_naming_its_field(tmp_path, notes, field):
    with pytest.raises(ValueError, match=field):
        model_notes(_folder(tmp_path, notes))
