"""Teacher ControlNet variants on the miniature's teacher: 25-step edge F1, FD and accuracy on held-out controls,
sketch accuracy on the held-out digits drawn with the page's pen, and legible accuracy on the typed sketches.

    python -m training.mini.teacher_controlnet given 800:cubic 800:cubic:slanted1 1600:cubic [--per-class 30]

Each variant is ``STEPS:TIMESTEPS[:slantedK]`` (``training.stages.common.sample_timesteps``; ``slantedK`` adds K
slanted copies of the train digits to the ControlNet's rows, ``data.sketch_rows``).  Trains the VAE and teacher UNet
into ``--work`` once (the miniature's settings, about 5 minutes), then one ControlNet per variant with
``prepare.train_teacher_controlnet``; "none" rows score the teacher without a ControlNet and "given" rows with the
one ``--work`` holds (a miniature run's).  Scores on the **validation** digits (``--split``) and on the typed
sketches (``training.mini.typed_sketches``, which needs a packaged model's classifier: ``--judge``, else the typed
scores are left out).  A ``--work`` that already holds a teacher keeps its digit split and givens seed; ``--seed``
still seeds the ControlNets.  Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import ControlNetModel

from training.control import extract_control
from training.mini import data as mdata
from training.mini import prepare, typed_sketches
from training.mini.evaluation import SKETCH, Evaluator
from training.mini.metrics import edge_f1
from training.mini.recipe import Givens, scaled_steps
from training.models import load_text_encoder


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="STEPS:TIMESTEPS (e.g. 800:cubic) or none")
    parser.add_argument("--work", default="/tmp/sdxs-mini-teacher")
    parser.add_argument("--per-class", type=int, default=30, help="evaluation samples per digit class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="ControlNets; and teacher, classifier of a new --work")
    parser.add_argument("--split-seed", type=int, default=0, help="the digit split of a new --work")
    parser.add_argument("--split", choices=["validation", "test"], default="validation", help="the digits scored")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the VAE and UNet step counts (tests)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--judge", type=Path, help="a packaged miniature whose classifier reads the typed sketches")
    parser.add_argument("--out", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if (work / "teacher").exists():
        givens = Givens.load(work)
    else:
        givens = Givens(work, args.split_seed, args.seed, args.scale)
        build_teacher(givens, args.device)
    digits = givens.digits()
    evaluator = Evaluator(
        givens.teacher,
        givens.classifier(digits),
        digits,
        split=args.split,
        eval_per_class=args.per_class,
        device=args.device,
    )
    unet, text = evaluator.teacher, load_text_encoder(givens.teacher, evaluator.device)
    uncond = text([""])
    held_out, sketches = evaluator.controls(), evaluator.controls(SKETCH)
    rows = []
    teacher = typed_sketches.Teacher(unet, evaluator.vae, text, dict(evaluator.scheduler.config))
    for variant in args.variants:
        started, row = time.time(), {"variant": variant}
        controlnet = None
        if variant == "given":
            controlnet = ControlNetModel.from_pretrained(givens.teacher_controlnet).to(evaluator.device).eval()
        elif variant != "none":
            steps, timesteps, *extra = variant.split(":")
            copies = int(extra[0].removeprefix("slanted")) if extra else 0
            pixels, captions = mdata.sketch_rows(digits.train, digits.train_labels, copies, seed=givens.seed)
            controlnet, _ = prepare.train_teacher_controlnet(
                unet,
                prepare.encode(evaluator.vae, pixels),
                text(captions),
                extract_control(pixels, prepare.CONTROL_KIND).to(evaluator.device),
                uncond,
                int(steps),
                seed=args.seed,
                timesteps=timesteps,
            )
            row["train_s"] = round(time.time() - started)
        control = None if controlnet is None else held_out
        latents_out = evaluator.multistep(unet, controlnet=controlnet, control=control)
        row.update(evaluator.score(variant, latents_out), edge_f1=edge_f1(evaluator.samples[variant], held_out))
        if controlnet is not None:
            sketched = evaluator.score(
                f"{variant} sketch", evaluator.multistep(unet, controlnet=controlnet, control=sketches, neutral=True)
            )
            row.update(sketch_fd=sketched["fd"], sketch_accuracy=sketched["accuracy"])
        if controlnet is not None and args.judge:
            fonts = typed_sketches.installed_fonts()
            typed = typed_sketches.score_teacher(
                teacher, controlnet, args.judge, mdata.SKETCH_PEN_WIDTH, [0, 1, 2], fonts, name=variant
            )
            row.update(typed_legible_accuracy=typed["legible_accuracy"], typed_legible=typed["legible"])
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


def build_teacher(givens: Givens, device: str) -> None:
    """The miniature's VAE and teacher UNet (no ControlNet) into ``givens.work``."""
    digits, photos = givens.digits(), givens.photos()
    rows = mdata.with_neutral_rows(digits.train, digits.train_labels)
    control_rows = (digits.train, mdata.sketch_captions(digits.train_labels))
    steps = scaled_steps(givens.scale) | {"teacher_controlnet": 0}
    mixed = torch.cat([digits.train, photos["train"]])
    prepare.build_teacher(givens.work, rows, control_rows, mixed, steps, seed=givens.seed, device=device)
    givens.save()


if __name__ == "__main__":
    main()
