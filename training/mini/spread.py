"""How much of a miniature table is evaluation noise: re-score a finished run's generators with other noise seeds.

    python -m training.mini.spread [--work /tmp/sdxs-mini] [--run-seed 0] [--seeds 1 2 3] [--eval-per-class 100]

Each noise seed k draws new evaluation noise (the split's own noise seed + k); the models of the run's training seed
``--run-seed``, its digit split and classifier stay.  Scores the **validation** split unless ``--split test``.
Prints, per generator, FD and class accuracy for every noise seed and their mean and standard deviation as one JSON
object.  Training-trajectory noise is not in it: the run's other training seeds (``--seeds`` of
``training.mini.run``) and ``training.mini.ablate --seed`` measure that.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from training.mini.evaluation import FINAL, Evaluator, tiny_decoders
from training.mini.recipe import Givens

ONE_STEP = {
    "one-step student, after warm-up": "onestep_warmup_final",
    "one-step student, after segmented Diff-Instruct": "onestep/final",
    "one-step student, warm-up only (equal compute)": "onestep_fm_only/final",
    FINAL: "lora_gan/final",
}


def summarize(scores: dict[str, list[dict]], seeds: list[int]) -> dict:
    """Per generator: every seed's scores and the mean and sample sd of FD and accuracy over them."""
    sd = lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0  # noqa: E731
    return {
        name: {
            "seeds": seeds,
            **{
                f"{key}_{stat}": float(fn([r[key] for r in rows]))
                for key in ("fd", "accuracy")
                for stat, fn in (("mean", np.mean), ("std", sd))
            },
            "per_seed": rows,
        }
        for name, rows in scores.items()
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/sdxs-mini")
    parser.add_argument("--run-seed", type=int, default=0, help="which of the run's training seeds to score")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="evaluation noise seeds")
    parser.add_argument("--eval-per-class", type=int, default=100)
    parser.add_argument("--split", choices=["validation", "test"], default="validation", help="the digits scored")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    givens = Givens.load(Path(args.work))
    digits, run = givens.digits(), givens.seed_dir(args.run_seed)
    classifier = givens.classifier(digits)
    scores: dict[str, list[dict]] = {}
    for seed in args.seeds:
        ev = Evaluator(
            givens.teacher,
            classifier,
            digits,
            split=args.split,
            eval_per_class=args.eval_per_class,
            tiny_decoder_dirs=tiny_decoders(run),
            noise_offset=seed,
            device=args.device,
        )
        scores.setdefault("teacher, 25 steps", []).append(ev.score("teacher", ev.multistep(ev.teacher)))
        for name, path in ONE_STEP.items():
            scores.setdefault(name, []).append(ev.score(name, ev.onestep(ev.load_unet(run / path))))
    summary = summarize(scores, args.seeds)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
