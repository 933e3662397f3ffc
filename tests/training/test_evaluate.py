"""The COCO-style evaluation command: generation on the shipped miniature, and clear errors where a metric's package
or weights are missing (clean-fid and open_clip are not installed here)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from PIL import Image

from training import evaluate


@pytest.fixture
def captions(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps({"caption": f"{k}: a photo of the digit {k}"}) + "\n" for k in range(5)))
    return path


def test_generates_one_image_per_caption_and_records_the_run(tmp_path, captions):
    out = tmp_path / "eval"
    scores = evaluate.main(
        [
            "--model",
            "mini",
            "--captions",
            str(captions),
            "--out",
            str(out),
            "--n",
            "3",
            "--batch",
            "2",
            "--metrics",
            "none",
            "--device",
            "cpu",
        ]
    )
    images = sorted((out / "images").glob("*.png"))
    assert [p.name for p in images] == ["00000.png", "00001.png", "00002.png"]
    with Image.open(images[0]) as first:
        assert first.size == (32, 32)
    assert scores["n"] == 3 and json.loads((out / "scores.json").read_text())["model"] == "mini"


def test_fid_needs_a_reference_and_unknown_metrics_are_refused(tmp_path, captions):
    for extra in (["--metrics", "fid"], ["--metrics", "fid,bleu"]):
        with pytest.raises(SystemExit) as exit_:
            evaluate.main(["--model", "mini", "--captions", str(captions), "--out", str(tmp_path), *extra])
        assert exit_.value.code == 2


@pytest.mark.parametrize(
    ("metric", "package", "hint"), [("clip", "open_clip", "open_clip_torch"), ("fid", "cleanfid", "clean-fid")]
)
def test_a_missing_metric_package_is_named_and_the_images_are_kept(tmp_path, captions, metric, package, hint):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here; its weights may be downloaded, which tests must not do")
    images = tmp_path / "eval" / "images"
    images.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (32, 32)).save(images / f"{i:05d}.png")
    with pytest.raises(SystemExit, match=f"pip install {hint}.*rerun with --skip-generation"):
        evaluate.main(
            [
                "--model",
                "mini",
                "--captions",
                str(captions),
                "--out",
                str(tmp_path / "eval"),
                "--n",
                "2",
                "--metrics",
                metric,
                "--reference",
                str(images),
                "--skip-generation",
            ]
        )
