"""Teacher ControlNet variants on the miniature's teacher: 25-step edge F1, FD and accuracy on held-out controls.

    python -m training.mini.teacher_controlnet 400:uniform 400:cubic 800:cubic [--per-class 30]

Each variant is ``STEPS:TIMESTEPS`` (``training.stages.common.sample_timesteps``).  Trains the VAE and teacher UNet
into ``--work`` once (the miniature's settings, about 5 minutes), then one ControlNet per variant with
``prepare.train_teacher_controlnet``; "none" rows score the teacher without a ControlNet.  Prints one JSON line per
variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from training.control import extract_control
from training.mini import data as mdata
from training.mini import prepare
from training.mini import run as mini
from training.mini.metrics import cached_classifier, edge_f1
from training.models import load_part, load_text_encoder


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="STEPS:TIMESTEPS (e.g. 800:cubic) or none")
    parser.add_argument("--work", default="/tmp/sdxs-mini-teacher")
    parser.add_argument("--per-class", type=int, default=30, help="evaluation samples per digit class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="digit split, teacher, ControlNet, classifier, evaluation (one --work per seed)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the VAE and UNet step counts (tests)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    digits = mdata.digits(32, seed=args.seed)
    captions = [mdata.PROMPT.format(int(k)) for k in digits.train_labels]
    if not (work / "teacher").exists():
        steps = mini.scaled_steps(args.scale) | {"teacher_controlnet": 0}
        photos_train, _ = mini.decoder_photos(args.seed)
        mixed = torch.cat([digits.train, photos_train])
        prepare.build_teacher(work, digits.train, captions, mixed, steps, seed=args.seed)

    unet, vae = load_part(work / "teacher", "unet"), load_part(work / "teacher", "vae")
    text = load_text_encoder(work / "teacher", torch.device("cpu"))
    latents, embeds, uncond = prepare.encode(vae, digits.train), text(captions), text([""])
    controls = extract_control(digits.train, prepare.CONTROL_KIND)
    mini.EVAL_PER_CLASS = args.per_class
    classifier = cached_classifier(work, digits.train, digits.train_labels, seed=args.seed)
    evaluator = mini.Evaluator(work, classifier, digits, args.seed)
    held_out = mini.eval_controls(digits)
    rows = []
    for variant in args.variants:
        started, row = time.time(), {"variant": variant}
        if variant == "none":
            latents_out = evaluator.multistep(unet)
        else:
            steps, timesteps = variant.split(":")
            controlnet, _ = prepare.train_teacher_controlnet(
                unet, latents, embeds, controls, uncond, int(steps), seed=args.seed, timesteps=timesteps
            )
            row["train_s"] = round(time.time() - started)
            latents_out = evaluator.multistep(unet, controlnet=controlnet, control=held_out)
        row.update(evaluator.score(variant, latents_out), edge_f1=edge_f1(evaluator.samples[variant], held_out))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
