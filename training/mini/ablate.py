"""One ablation of stage 4 or 5 on a finished miniature run, scored like the full run.

    python -m training.mini.ablate NAME '{"fm_weight": 4.0, "fm_decay": "constant"}'           # stage 4
    python -m training.mini.ablate NAME '{"from_scratch": true, "warmup_steps": 600}'         # stage 4, new warm-up
    python -m training.mini.ablate NAME '{"from_warmup_weights": true, "ema_decay": 0.99}'     # stage 4, phase (b)
    python -m training.mini.ablate NAME '{"fm_weight": 4.0}' --stage 5

Reads the run's stage config from ``--work`` (``python -m training.mini.run`` leaves it in ``/tmp/sdxs-mini``),
applies the JSON overrides and trains into ``--out/NAME``.  Stage 4 resumes the run's warm-up checkpoint (so only the
Diff-Instruct phase changes) unless ``from_scratch`` is true; ``from_warmup_weights`` starts phase (b) from the
warm-up's weights instead of its checkpoint (for settings that add state the checkpoint lacks: an EMA, a GAN head).
Prints one JSON line (FD, accuracy and, for stage 5, edge F1 with and without the ControlNet) and appends it to
``--out/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from training.mini import data as mdata
from training.mini import run as mini
from training.mini.metrics import edge_f1, train_classifier
from training.models import load_controlnet, load_part
from training.stages import onestep, onestep_controlnet


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("overrides", help="JSON object of stage-config overrides")
    parser.add_argument("--stage", type=int, choices=[4, 5], default=4)
    parser.add_argument("--work", default="/tmp/sdxs-mini")
    parser.add_argument("--out", default="/tmp/sdxs-ablations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--eval-per-class", type=int, default=100, help="samples per digit class (FD, accuracy, edge F1)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out) / args.name
    overrides = json.loads(args.overrides)
    from_scratch = overrides.pop("from_scratch", False)
    from_weights = overrides.pop("from_warmup_weights", False)
    shutil.rmtree(out, ignore_errors=True)
    config_name = "onestep.yaml" if args.stage == 4 else "onestep_controlnet.yaml"
    cfg = yaml.safe_load((work / "configs" / config_name).read_text())
    if args.stage == 4 and not (from_scratch or from_weights):
        name = f"step_{cfg['warmup_steps']:07d}"
        shutil.copytree(work / "onestep" / "checkpoints" / name, out / "checkpoints" / name)
    cfg.update(overrides, output_dir=str(out))
    if args.stage == 4 and from_weights:  # phase (b) only, from the warm-up's weights (fresh optimiser, EMA, GAN head)
        cfg.update(
            student=str(work / "onestep_warmup_final" / "unet"),
            max_steps=cfg["max_steps"] - cfg["warmup_steps"],
            warmup_steps=0,
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    started = time.time()
    (onestep if args.stage == 4 else onestep_controlnet).main(["--config", str(out / "config.yaml")])
    result = {"name": args.name, "stage": args.stage, "overrides": overrides, "from_scratch": from_scratch,
              "from_warmup_weights": from_weights,
              "train_s": round(time.time() - started)}

    mini.EVAL_PER_CLASS = args.eval_per_class
    digits = mdata.digits(32, seed=0)
    evaluator = mini.Evaluator(work, train_classifier(digits.train, digits.train_labels, seed=0), digits, 0)
    if args.stage == 4:
        result["onestep"] = evaluator.score("onestep", evaluator.onestep(load_part(out / "final", "unet")))
    else:
        control = mini.eval_controls(digits)
        unet = load_part(Path(cfg["student"]).parent, "unet")
        controlnet = load_controlnet(str(out / "final" / "controlnet"))
        for key, kwargs in (("with_controlnet", dict(controlnet=controlnet, control=control)), ("without", {})):
            scored = evaluator.score(key, evaluator.onestep(unet, **kwargs))
            result[key] = {"edge_f1": edge_f1(evaluator.samples[key], control), **scored}
    print(json.dumps(result), flush=True)
    with open(Path(args.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
