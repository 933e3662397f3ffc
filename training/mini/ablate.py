"""One ablation of stage 4, 5 or the decoder fine-tune (stage 2 again) on a finished miniature run, scored like the
full run.

    python -m training.mini.ablate NAME '{"fm_weight": 4.0, "fm_decay": "constant"}'           # stage 4
    python -m training.mini.ablate NAME '{"from_scratch": true, "warmup_steps": 600}'         # stage 4, new warm-up
    python -m training.mini.ablate NAME '{"from_warmup_weights": true, "ema_decay": 0.99}'     # stage 4, phase (b)
    python -m training.mini.ablate NAME '{"fm_weight": 4.0}' --stage 5
    python -m training.mini.ablate NAME '{"lr": 0.001, "gan_weight": 0.05}' --stage 2   # the decoder fine-tune

Reads the run's stage config from ``--work`` (``python -m training.mini.run`` leaves it in ``/tmp/sdxs-mini``),
applies the JSON overrides and trains into ``--out/NAME``.  Stage 4 resumes the run's warm-up checkpoint (so only the
Diff-Instruct phase changes) unless ``from_scratch`` is true; ``from_warmup_weights`` starts phase (b) from the
warm-up's weights instead of its checkpoint (for settings that add state the checkpoint lacks: an EMA, a GAN head).
Stage 2 fine-tunes the run's stage-2 decoder with the run's fine-tune config (``decoder_onestep``) and scores the run's
one-step student with and without its ControlNet through it, and its PSNR on held-out real latents.  Prints one JSON
line (FD, accuracy and, for stages 5 and 2, edge F1 with and without the ControlNet) and appends it to
``--out/results.jsonl``.  ``--seed`` gives the ablation's training another seed (trajectory noise); the digit split,
classifier and evaluation noise stay the run's (its ``--seed``, read from its configs), so rows compare with its table.
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
from training.mini.folders import fresh_folder
from training.mini.metrics import cached_classifier, edge_f1, psnr
from training.mini.prepare import encode
from training.models import load_controlnet, load_part, load_tiny_vae
from training.stages import distill_decoder, onestep, onestep_controlnet
from training.stages.common import decode_unet_samples


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("overrides", help="JSON object of stage-config overrides")
    parser.add_argument("--stage", type=int, choices=[2, 4, 5], default=4)
    parser.add_argument("--work", default="/tmp/sdxs-mini")
    parser.add_argument("--out", default="/tmp/sdxs-ablations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the run's)")
    parser.add_argument(
        "--eval-per-class", type=int, default=100, help="samples per digit class (FD, accuracy, edge F1)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out) / args.name
    overrides = json.loads(args.overrides)
    from_scratch = overrides.pop("from_scratch", False)
    from_weights = overrides.pop("from_warmup_weights", False)
    fresh_folder(out, "--out/NAME")
    config_name = {2: "decoder_onestep.yaml", 4: "onestep.yaml", 5: "onestep_controlnet.yaml"}[args.stage]
    cfg = yaml.safe_load((work / "configs" / config_name).read_text())
    if args.stage == 2:  # the same teacher samples as the run's decoders
        shutil.copytree(work / "decoder" / "cache", out / "cache")
    if args.stage == 4 and not (from_scratch or from_weights):
        name = f"step_{cfg['warmup_steps']:07d}"
        shutil.copytree(work / "onestep" / "checkpoints" / name, out / "checkpoints" / name)
    run_seed = int(cfg.get("seed", 0))
    cfg.update(overrides, output_dir=str(out))
    if args.seed is not None and args.seed != run_seed and args.stage != 2:
        cfg.update(seed=args.seed, pairs_path=str(out / "cache" / "pairs.pt"))  # the teacher's pairs depend on it
    elif args.seed is not None:
        cfg["seed"] = args.seed
    if args.stage == 4 and from_weights:  # phase (b) only, from the warm-up's weights (fresh optimiser, EMA, GAN head)
        cfg.update(
            student=str(work / "onestep_warmup_final" / "unet"),
            max_steps=cfg["max_steps"] - cfg["warmup_steps"],
            warmup_steps=0,
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    started = time.time()
    {2: distill_decoder, 4: onestep, 5: onestep_controlnet}[args.stage].main(["--config", str(out / "config.yaml")])
    result = {
        "name": args.name,
        "stage": args.stage,
        "seed": cfg.get("seed", run_seed),
        "overrides": overrides,
        "from_scratch": from_scratch,
        "from_warmup_weights": from_weights,
        "train_s": round(time.time() - started),
    }

    mini.EVAL_PER_CLASS = args.eval_per_class
    digits = mdata.digits(32, seed=run_seed)
    classifier = cached_classifier(work, digits.train, digits.train_labels, seed=run_seed)
    evaluator = mini.Evaluator(work, classifier, digits, run_seed)
    if args.stage == 4:
        result["onestep"] = evaluator.score("onestep", evaluator.onestep(load_part(out / "final", "unet")))
    elif args.stage == 2:
        result.update(score_decoder(evaluator, work, load_tiny_vae(str(out / "final" / "vae")), digits))
    else:
        unet = load_part(Path(cfg["student"]).parent, "unet")
        controlnet = load_controlnet(str(out / "final" / "controlnet"))
        result.update(with_and_without_controlnet(evaluator, unet, controlnet, digits))
    print(json.dumps(result), flush=True)
    with open(Path(args.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def with_and_without_controlnet(evaluator: mini.Evaluator, unet, controlnet, digits: mdata.Digits, tiny=None) -> dict:
    """One-step samples of ``unet`` with and without ``controlnet`` on the evaluation controls, scored; edge F1 of the
    teacher decodes or, with ``tiny``, of ``tiny``'s decodes (``edge_f1_tiny_decoder``)."""
    control = mini.eval_controls(digits)
    result = {}
    for key, kwargs in (("with_controlnet", dict(controlnet=controlnet, control=control)), ("without", {})):
        latents = evaluator.onestep(unet, **kwargs)
        scored = evaluator.score(key, latents)
        if tiny is None:
            result[key] = {"edge_f1": edge_f1(evaluator.samples[key], control), **scored}
        else:
            result[key] = {"edge_f1_tiny_decoder": edge_f1(evaluator.decode(tiny, latents), control), **scored}
    return result


def score_decoder(evaluator: mini.Evaluator, work: Path, tiny, digits: mdata.Digits) -> dict:
    """The run's one-step student with and without its ControlNet through ``tiny`` (FD, accuracy, edge F1 of the
    tiny decodes) and ``tiny``'s PSNR against the teacher decoder on held-out digits and photos."""
    evaluator.tiny_vaes = {"tiny_decoder": tiny}
    unet = load_part(work / "onestep" / "final", "unet")
    controlnet = load_controlnet(str(work / "onestep_controlnet" / "final" / "controlnet"))
    result = with_and_without_controlnet(evaluator, unet, controlnet, digits, tiny)
    latents = encode(evaluator.vae, torch.cat([digits.test, mini.decoder_photos(0)[1]]))
    result["psnr"] = psnr(decode_unet_samples(tiny, latents), decode_unet_samples(evaluator.vae, latents))
    return result


if __name__ == "__main__":
    main()
