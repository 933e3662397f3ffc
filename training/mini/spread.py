"""How much of a miniature table is evaluation noise: re-score a finished run's generators with other noise seeds.

    python -m training.mini.spread [--work /tmp/sdxs-mini] [--seeds 1 2 3] [--eval-per-class 100]

Each seed draws new evaluation noise (the models and the held-out digits of the run's own ``--seed``, read from its
configs, stay); prints, per generator, FD and class
accuracy for every seed and their mean and standard deviation as one JSON object.  Training-trajectory noise is not
in it: that needs reruns (``training.mini.ablate``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from training.mini import data as mdata
from training.mini import run as mini
from training.mini.metrics import cached_classifier
from training.models import load_part

ONE_STEP = {
    "one-step student, after warm-up": "onestep_warmup_final",
    "one-step student, after segmented Diff-Instruct": "onestep/final",
    "one-step student, warm-up only (equal compute)": "onestep_fm_only/final",
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/sdxs-mini")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--eval-per-class", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mini.EVAL_PER_CLASS = args.eval_per_class
    work = Path(args.work)
    run_seed = int(yaml.safe_load((work / "configs" / "onestep.yaml").read_text()).get("seed", 0))
    digits = mdata.digits(32, seed=run_seed)
    classifier = cached_classifier(work, digits.train, digits.train_labels, seed=run_seed)
    students = {name: load_part(work / path, "unet") for name, path in ONE_STEP.items()}
    scores: dict[str, list[dict]] = {}
    for seed in args.seeds:
        ev = mini.Evaluator(work, classifier, digits, seed)
        scores.setdefault("teacher, 25 steps", []).append(ev.score("teacher", ev.multistep(ev.teacher)))
        for name, unet in students.items():
            scores.setdefault(name, []).append(ev.score(name, ev.onestep(unet)))
    summary = {
        name: {
            "seeds": args.seeds,
            **{
                f"{key}_{stat}": float(fn([r[key] for r in rows]))
                for key in ("fd", "accuracy")
                for stat, fn in (("mean", np.mean), ("std", lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0))
            },
            "per_seed": rows,
        }
        for name, rows in scores.items()
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
