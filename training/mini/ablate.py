"""One ablation of stage 1, 4, 4c (the LoRA + Projected-GAN fine-tune), 5 or the decoder fine-tune (stage 2 again)
on a finished miniature run, scored like the full run.

    python -m training.mini.ablate NAME '{"denoise_weight": 1.0}' --stage 1   # the KD student, scored at 25 steps
    python -m training.mini.ablate NAME '{"lora_rank": 8}' --stage 4c   # the run's stage 4c, another rank
    python -m training.mini.ablate NAME '{"fm_weight": 4.0, "fm_decay": "constant"}'           # stage 4
    python -m training.mini.ablate NAME '{"from_scratch": true, "warmup_steps": 600}'         # stage 4, new warm-up
    python -m training.mini.ablate NAME '{"from_warmup_weights": true, "ema_decay": 0.99}'     # stage 4, phase (b)
    python -m training.mini.ablate NAME '{"fm_weight": 4.0}' --stage 5
    python -m training.mini.ablate NAME '{"lr": 0.001, "gan_weight": 0.05}' --stage 2   # the decoder fine-tune
    python -m training.mini.ablate NAME '{"discriminator": "patch"}' --stage 2s   # stage 2's own decoder, anew

Reads the stage config of the run's training seed ``--run-seed`` from ``--work`` (``python -m training.mini.run``
leaves it in ``/tmp/sdxs-mini/seed-<k>``), applies the JSON overrides and trains into ``--out/NAME``.  Stage 4
resumes the run's warm-up checkpoint (so only the Diff-Instruct phase changes) unless ``from_scratch`` is true;
``from_warmup_weights`` starts phase (b) from the warm-up's weights instead of its checkpoint (for settings that add
state the checkpoint lacks: an EMA, a GAN head).
Stage 2 fine-tunes the run's stage-2 decoder with the run's fine-tune config (``decoder_onestep``); stage 2s trains
stage 2's own decoder anew with the run's stage-2 config (``decoder``).  Both score the run's final one-step student
with and without its ControlNet through the decoder, and its PSNR on held-out real latents.  Prints one JSON
line (FD, accuracy and, for stages 5 and 2, edge F1 with and without the ControlNet) and appends it to
``--out/results.jsonl``.  ``--seed`` gives the ablation's training another seed (trajectory noise; default: the run
seed's).  Scores are on the **validation** split (``--split``; the test split is for the run's claims table only),
with the run's digit split, classifier and validation noise, so rows compare with each other and with
``python -m training.mini.spread``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from training.mini.evaluation import SKETCH, Evaluator, final_unet_dir, tiny_decoders, with_and_without_controlnet
from training.mini.folders import fresh_folder
from training.mini.metrics import psnr
from training.mini.prepare import encode
from training.mini.recipe import Givens, stage_device
from training.models import load_tiny_vae
from training.stages import distill_decoder, distill_unet, lora_gan, onestep, onestep_controlnet
from training.stages.onestep_pairs import CONTROL_PAIR_SETTINGS, PAIR_SETTINGS

CONFIGS = {
    "1": "unet_kd.yaml",
    "2": "decoder_onestep.yaml",
    "2s": "decoder.yaml",
    "4": "onestep.yaml",
    "4c": "lora_gan.yaml",
    "5": "onestep_controlnet.yaml",
}
STAGES = {
    "1": distill_unet,
    "2": distill_decoder,
    "2s": distill_decoder,
    "4": onestep,
    "4c": lora_gan,
    "5": onestep_controlnet,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("overrides", help="JSON object of stage-config overrides")
    parser.add_argument("--stage", choices=sorted(STAGES), default="4")
    parser.add_argument("--work", default="/tmp/sdxs-mini")
    parser.add_argument("--out", default="/tmp/sdxs-ablations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run-seed", type=int, default=0, help="which of the run's training seeds to start from")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the run seed's)")
    parser.add_argument(
        "--eval-per-class", type=int, default=100, help="samples per digit class (FD, accuracy, edge F1)"
    )
    parser.add_argument("--split", choices=["validation", "test"], default="validation", help="the digits scored")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    givens = Givens.load(Path(args.work))
    work, out = givens.seed_dir(args.run_seed), Path(args.out) / args.name
    overrides = json.loads(args.overrides)
    from_scratch = overrides.pop("from_scratch", False)
    from_weights = overrides.pop("from_warmup_weights", False)
    fresh_folder(out, "--out/NAME")
    cfg = configure(args, work, out, overrides, from_scratch, from_weights)
    started = time.time()
    with stage_device(args.device):
        STAGES[args.stage].main(["--config", str(out / "config.yaml")])
    result = {
        "name": args.name,
        "stage": args.stage,
        "run_seed": args.run_seed,
        "seed": cfg["seed"],
        "split": args.split,
        "overrides": overrides,
        "from_scratch": from_scratch,
        "from_warmup_weights": from_weights,
        "train_s": round(time.time() - started),
        **score(args, givens, work, out, cfg),
    }
    print(json.dumps(result), flush=True)
    with open(Path(args.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def configure(args, work: Path, out: Path, overrides: dict, from_scratch: bool, from_weights: bool) -> dict:
    """The run seed's stage config with ``overrides``, its starting point copied into ``out``; writes
    ``out/config.yaml``."""
    path = work / "configs" / CONFIGS[args.stage]
    if not path.exists():
        raise SystemExit(
            f"{path} not found: seed {args.run_seed} of --work has not run that stage (an unfinished run, "
            "or one from before stage 4c joined the recipe: rerun python -m training.mini.run)"
        )
    cfg = yaml.safe_load(path.read_text())
    if args.stage in ("2", "2s"):  # the same teacher samples as the run's decoders
        shutil.copytree(work / "decoder" / "cache", out / "cache")
    if args.stage == "4" and not (from_scratch or from_weights):
        name = f"step_{cfg['warmup_steps']:07d}"
        shutil.copytree(work / "onestep" / "checkpoints" / name, out / "checkpoints" / name)
    run_seed = int(cfg.get("seed", 0))
    cfg.update(overrides, output_dir=str(out), seed=run_seed)
    if set(overrides) & {*PAIR_SETTINGS, *CONTROL_PAIR_SETTINGS, "pairs_teacher"}:  # other pairs: made anew, here
        cfg["pairs_path"] = str(out / "cache" / "pairs.pt")
    if args.seed is not None and args.seed != run_seed and args.stage in ("4", "4c", "5"):
        cfg.update(seed=args.seed, pairs_path=str(out / "cache" / "pairs.pt"))  # the teacher's pairs depend on it
    elif args.seed is not None:
        cfg["seed"] = args.seed
    if args.stage == "4" and from_weights:  # phase (b) only, from the warm-up's weights (fresh optimiser, EMA, GAN)
        cfg.update(
            student=str(work / "onestep_warmup_final" / "unet"),
            max_steps=cfg["max_steps"] - cfg["warmup_steps"],
            warmup_steps=0,
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def score(args, givens: Givens, work: Path, out: Path, cfg: dict) -> dict:
    """The ablation's trained model on ``args.split``: the one-step student (stage 4), with and without its ControlNet
    (stage 5) or the fine-tuned decoder (stage 2)."""
    digits = givens.digits()
    ev = Evaluator(
        givens.teacher,
        givens.classifier(digits),
        digits,
        split=args.split,
        eval_per_class=args.eval_per_class,
        tiny_decoder_dirs=tiny_decoders(work),
        device=args.device,
    )
    if args.stage == "1":
        return {"student_25_steps": ev.score("kd_25", ev.multistep(ev.load_unet(out / "final" / "unet")))}
    if args.stage in ("4", "4c"):
        return {"onestep": ev.score("onestep", ev.onestep(ev.load_unet(out / "final")))}
    if args.stage in ("2", "2s"):
        tiny = load_tiny_vae(str(out / "final" / "vae")).to(ev.device)
        return score_decoder(ev, work, tiny, givens.photos()[args.split])
    unet = ev.load_unet(Path(cfg["student"]).parent)
    controlnet = ev.load_controlnet(out / "final" / "controlnet")
    sketch = ev.score("sketch", ev.onestep(unet, controlnet=controlnet, control=ev.controls(SKETCH), neutral=True))
    return {**with_and_without_controlnet(ev, unet, controlnet), "sketch": sketch}


def score_decoder(ev: Evaluator, seed_dir: Path, tiny, photos: torch.Tensor) -> dict:
    """The run seed's one-step student with and without its ControlNet through ``tiny`` (FD, accuracy, edge F1 of the
    tiny decodes) and ``tiny``'s PSNR against the teacher decoder on the split's digits and ``photos``."""
    ev.tiny_vaes = {"tiny_decoder": tiny}
    unet = ev.load_unet(final_unet_dir(seed_dir))
    controlnet = ev.load_controlnet(seed_dir / "onestep_controlnet" / "final" / "controlnet")
    result = with_and_without_controlnet(ev, unet, controlnet, tiny)
    latents = encode(ev.vae, ev.psnr_images(photos).to(ev.device))
    result["psnr"] = psnr(ev.decode(tiny, latents), ev.decode(ev.vae, latents))
    return result


if __name__ == "__main__":
    main()
