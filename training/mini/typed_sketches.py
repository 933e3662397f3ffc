"""Sketch-mode settings chosen on validation sketches that are not the test's: typed digits redrawn as pen strokes.

    python -m training.mini.typed_sketches MODEL_DIR [MODEL_DIR ...] [--scales 0.8,1,1.25] [--pens 0.075,0.1]

The miniature's browser check (tests/browser/test_mini_page.py) draws ten hand-made stroke digits
(tests/digit_strokes.py); tuning the model's sketch notes on those would tune on the test.  This tool scores the notes
(``sketch.control_scale`` and ``sketch.pen_width``) on other digits: each digit typed in every installed font of
``FONTS`` (Debian's fonts-dejavu-core and fonts-liberation), thinned to its skeleton and redrawn with a round pen of
the candidate width (``training.strokes``), then served as the page sends a sketch (a white canvas, black ink, the
model's sketch prompt), read back by the model's own digit classifier.  Prints one JSON line per (model, scale, pen)
and a summary: the setting with the best mean accuracy over the models (every training seed of a run, not a picked
one); ties go to the model's current notes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file

from training.mini.metrics import DigitClassifier, classify
from training.strokes import RENDER, redraw, skeleton

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerifCondensed-Italic.ttf",
    "DejaVuSansMono.ttf",
    "LiberationSans-Regular.ttf",
    "LiberationSans-Italic.ttf",
    "LiberationSansNarrow-Regular.ttf",
    "LiberationSerif-Regular.ttf",
    "LiberationSerif-Italic.ttf",
    "LiberationMono-Regular.ttf",
)
HEIGHT = 0.8  # a glyph's ink spans this fraction of the side, centred (the browser test's strokes span 0.1-0.9)


def installed_fonts() -> list[Path]:
    """The ``FONTS`` found in ``FONT_DIRS``; a clear error when none is installed."""
    found = [d / name for name in FONTS for d in FONT_DIRS if (d / name).exists()]
    if not found:
        raise SystemExit(
            f"no font of {FONTS} in {[str(d) for d in FONT_DIRS]}: install fonts-dejavu-core or fonts-liberation"
        )
    return found


def typed_ink(digit: int, font: Path, side: int = RENDER) -> np.ndarray:
    """float (side, side) in [0, 1]: ``digit`` typed in ``font``, white on black, ``HEIGHT`` of the side tall."""
    big = ImageFont.truetype(str(font), 4 * side)
    canvas = Image.new("L", (6 * side, 6 * side), 0)
    ImageDraw.Draw(canvas).text((side, side), str(digit), fill=255, font=big)
    glyph = canvas.crop(canvas.getbbox())
    scale = HEIGHT * side / glyph.height
    glyph = glyph.resize((max(1, round(glyph.width * scale)), round(glyph.height * scale)), Image.Resampling.LANCZOS)
    ink = Image.new("L", (side, side), 0)
    ink.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return np.asarray(ink, np.float32) / 255.0


def typed_sketch(digit: int, font: Path, pen_width: float) -> np.ndarray:
    """uint8 RGB (RENDER, RENDER, 3): the typed digit's skeleton drawn as the page's canvas draws, black strokes of
    ``pen_width`` (a fraction of the side) on white."""
    drawn = redraw(skeleton(typed_ink(digit, font)), pen_width)
    return np.repeat(np.where(drawn, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


class Judge:
    """The model's digit classifier, and which typed sketches it can read at all (its verdict on each control)."""

    def __init__(self, model_dir: Path):
        self.classifier = DigitClassifier()
        self.classifier.load_state_dict(load_file(str(model_dir / "digit_classifier.safetensors")))
        self.classifier.eval()

    def read(self, pictures: torch.Tensor | list[np.ndarray]) -> np.ndarray:
        """Digit classes of pictures: float (N, 3, 32, 32) in [0, 1], or uint8 RGB arrays (S, S, 3)."""
        if not isinstance(pictures, torch.Tensor):
            pictures = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255.0
        return classify(self.classifier, pictures)[1]


def served_controls(sketches: list[np.ndarray], size: int = 32) -> torch.Tensor:
    """The sketches as the server's ControlNet sees them (squared, resized, inverted): float (N, 3, S, S) in [0, 1]."""
    from sdxs import control
    from sdxs.frames import square_batch

    paper = torch.from_numpy(np.stack(sketches)).permute(0, 3, 1, 2).contiguous()
    return (control.sketch(square_batch(paper, size)).float() / 255.0).expand(-1, 3, -1, -1)


def scored(judge: Judge, labels: np.ndarray, legible: np.ndarray, outputs: list) -> tuple[float, float]:
    """(accuracy, legible accuracy) of one set of outputs."""
    right = judge.read(outputs) == labels
    return round(float(right.mean()), 4), round(float(right[legible].mean()), 4)


def row(name: str, scale: float, pen: float, results: list[tuple[float, float]], legible: np.ndarray) -> dict:
    out = {
        "model": name,
        "control_scale": scale,
        "pen_width": pen,
        "legible_accuracy": round(float(np.mean([r[1] for r in results])), 4),
        "accuracy": round(float(np.mean([r[0] for r in results])), 4),
        "legible": int(legible.sum()),
        "of": len(legible),
        "legible_per_noise_seed": [r[1] for r in results],
    }
    print(json.dumps(out), flush=True)
    return out


def typed_set(fonts: Sequence[Path], pen_width: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Every digit in every font as ``typed_sketch``es, and their digits (N,)."""
    sketches = [typed_sketch(d, f, pen_width) for f in fonts for d in range(10)]
    return sketches, np.array([d for _ in fonts for d in range(10)])


def score(
    model_dir: Path, scales: Sequence[float], pens: Sequence[float], noise_seeds: Sequence[int], fonts: Sequence[Path]
) -> list[dict]:
    """``model_dir``'s sketch mode (one step, through ``SDXSPipeline``) on the typed sketches, for every (control
    scale, pen width)."""
    from sdxs import GenerationParams, GenerationRequest
    from sdxs.loading import model_notes
    from sdxs.pipeline import SDXSPipeline

    pipe, judge = SDXSPipeline.from_pretrained(str(model_dir)), Judge(model_dir)
    prompt = model_notes(model_dir).get("sketch", {}).get("prompt", "")
    rows = []
    for pen in pens:
        sketches, labels = typed_set(fonts, pen)
        legible = judge.read(served_controls(sketches)) == labels
        for scale in scales:
            results = []
            for seed in noise_seeds:
                params = GenerationParams(prompt=prompt, mode="sketch", seed=seed, control_scale=scale)
                results.append(
                    scored(
                        judge, labels, legible, pipe([GenerationRequest(params, s) for s in sketches], output_type="np")
                    )
                )
            rows.append(row(str(model_dir), scale, pen, results, legible))
    return rows


class Teacher(NamedTuple):
    """A run's teacher as the typed check samples it (25 DDIM steps, guidance 2, the neutral prompt)."""

    unet: Any
    vae: Any
    text: Any  # ``training.models.TextEncoder``
    scheduler_config: dict


def load_teacher(work: Path) -> Teacher:
    """``work``'s givens teacher (the ``teacher/`` pipeline folder), on the CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from training.models import load_text_encoder

    teacher = work / "teacher"
    return Teacher(
        UNet2DConditionModel.from_pretrained(teacher / "unet").eval(),
        AutoencoderKL.from_pretrained(teacher / "vae").eval(),
        load_text_encoder(teacher, "cpu"),
        json.loads((teacher / "scheduler" / "scheduler_config.json").read_text()),
    )


def score_teacher(
    teacher: Teacher,
    controlnet,
    judge_dir: Path,
    pen: float,
    noise_seeds: Sequence[int],
    fonts: Sequence[Path],
    name: str = "teacher",
) -> dict:
    """``teacher`` with ``controlnet`` (at scale 1, on the teacher's device) on the typed sketches drawn ``pen`` wide:
    is a gap the students' or already the teacher's?"""
    from training.mini import data as mdata
    from training.mini.evaluation import GUIDANCE
    from training.sampling import ddim_sample
    from training.stages.common import decode_unet_samples

    judge = Judge(judge_dir)
    sketches, labels = typed_set(fonts, pen)
    controls = served_controls(sketches)
    legible = judge.read(controls) == labels
    device = teacher.unet.device
    results = []
    with torch.no_grad():
        neutral = teacher.text([mdata.NEUTRAL_PROMPT]).expand(len(labels), -1, -1)
        uncond = teacher.text([""])
        for seed in noise_seeds:
            noise = torch.randn((len(labels), 4, 8, 8), generator=torch.Generator().manual_seed(seed)).to(device)
            latents = ddim_sample(
                teacher.unet,
                teacher.scheduler_config,
                noise,
                neutral,
                uncond,
                25,
                GUIDANCE,
                controlnet,
                controls.to(device),
            )
            results.append(scored(judge, labels, legible, decode_unet_samples(teacher.vae, latents).float().cpu()))
    return row(name, 1.0, pen, results, legible)


def choose(rows: list[dict], current: tuple[float, float], tolerance: float = 0.01) -> dict:
    """The (scale, pen) with the best legible accuracy averaged over the models; a setting within ``tolerance`` of
    the best (about one sketch in a hundred) ties, and a tie goes to ``current``, then the lower scale and pen."""
    settings = sorted({(r["control_scale"], r["pen_width"]) for r in rows})
    mean = {
        s: float(np.mean([r["legible_accuracy"] for r in rows if (r["control_scale"], r["pen_width"]) == s]))
        for s in settings
    }
    best = max(mean.values())
    tied = [s for s in settings if mean[s] >= best - tolerance]
    pick = current if current in tied else tied[0]
    return {
        "control_scale": pick[0],
        "pen_width": pick[1],
        "mean_legible_accuracy": round(mean[pick], 4),
        "current": {
            "control_scale": current[0],
            "pen_width": current[1],
            "mean_legible_accuracy": round(mean.get(current, float("nan")), 4),
        },
        "table": {f"{s[0]}@{s[1]}": round(m, 4) for s, m in mean.items()},
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="packaged miniatures (training.mini.package)")
    parser.add_argument("--scales", default="0.8,1,1.25,1.5")
    parser.add_argument("--pens", default="0.075,0.1,0.125")
    parser.add_argument("--noise-seeds", default="0,1,2")
    parser.add_argument("--teacher", type=Path, help="also score this run's teacher (its --work) at the chosen pen")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the rows and the choice as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    floats = lambda text: [float(v) for v in text.split(",")]  # noqa: E731
    from sdxs.loading import model_notes

    notes = model_notes(args.models[0]).get("sketch", {})
    fonts = installed_fonts()
    seeds = [int(s) for s in args.noise_seeds.split(",")]
    rows = [r for m in args.models for r in score(m, floats(args.scales), floats(args.pens), seeds, fonts)]
    choice = choose(rows, (notes.get("control_scale", 1.0), notes.get("pen_width", 0.1)))
    summary = {"fonts": [f.name for f in fonts], "choice": choice, "rows": rows}
    if args.teacher:
        from diffusers import ControlNetModel

        controlnet = ControlNetModel.from_pretrained(args.teacher / "teacher_controlnet").eval()
        summary["teacher"] = score_teacher(
            load_teacher(args.teacher),
            controlnet,
            args.models[0],
            choice["pen_width"],
            seeds,
            fonts,
            name=f"teacher:{args.teacher}",
        )
    print(json.dumps(choice))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
