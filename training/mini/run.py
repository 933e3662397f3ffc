"""The miniature reproduction, one command: ``python -m training.mini.run [--seeds 0,1,2] [--scale 1.0]
[--out training/results] [--device cuda|cpu]``.

0. data: sklearn digits (32x32, prompts "k: a photo of the digit k") split into train / validation / test by the
   split seed, and scikit-image photo crops (decoder only)
1. givens, built once and shared by every seed: teacher VAE, teacher LDM, teacher ControlNet
   (``training.mini.prepare``) and a digit classifier (``metrics.cached_classifier``)
2. per training seed, in ``--work/seed-<k>``: the paper's stages 1-6 through their real entry points
   (``training.mini.recipe``), then that seed's scores on the **test** split (``training.mini.evaluation``)
3. ``results.json`` (every seed's results, their mean and sd, the claims), ``results.md`` (mean ± sd tables, the
   claims with every seed's numbers), sample grids and loss plots under ``--out`` (``training.mini.report``)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from training.mini import report
from training.mini.evaluation import Evaluator, check_export, evaluate_seed, tiny_decoders
from training.mini.folders import fresh_folder
from training.mini.prepare import log, rebuild_teacher_controlnet
from training.mini.recipe import (
    STAGES,
    Givens,
    Recipe,
    prepare_givens,
    sampler_steps,
    scaled_steps,
    stage_device,
)

# the stage runs whose loss curves are plotted (the first seed's)
STAGE_RUNS = (
    "unet_kd",
    "unet_nokd",
    "decoder",
    "controlnet",
    "onestep",
    "onestep_fm_only",
    "lora_gan",
    "onestep_controlnet",
    "decoder_onestep",
)


def seed_list(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2] (distinct seeds, in the order given)."""
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds wants distinct integers like 0,1,2; got {text!r}")
    return seeds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="training/results")
    parser.add_argument("--work", default="/tmp/sdxs-mini")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count (tests: 0.01)")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="training seeds of stages 1-6, e.g. 0,1,2")
    parser.add_argument("--split-seed", type=int, default=0, help="the train / validation / test split of the digits")
    parser.add_argument("--givens-seed", type=int, default=0, help="teacher VAE, LDM, ControlNet and classifier")
    parser.add_argument(
        "--split",
        choices=["test", "validation"],
        default="test",
        help="the digits every seed is scored on: test for the claims table; validation to choose settings",
    )
    parser.add_argument(
        "--givens-only",
        action="store_true",
        help="build the givens in --work and stop (a later run takes them with --reuse-givens)",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="stages 1 and 4 save snapshots along their steps and stage 4 logs each loss term's gradient norms "
        "(python -m training.mini.diagnose scores them on validation)",
    )
    parser.add_argument(
        "--eval-per-class", type=int, default=100, help="samples per digit class (FD, accuracy, edge F1)"
    )
    parser.add_argument(
        "--reuse-givens",
        action="store_true",
        help="keep --work's teacher, ControlNet, classifier and data from an earlier run with the same split seed, "
        "givens seed and scale (they do not depend on the student stages); every seed's stages run anew",
    )
    parser.add_argument(
        "--rebuild-teacher-controlnet",
        action="store_true",
        help="with --reuse-givens: train the teacher ControlNet anew (the recipe's steps), keeping the VAE, teacher "
        "UNet and classifier: after a change to the ControlNet's settings",
    )
    parser.add_argument(
        "--from-stage",
        choices=STAGES[1:],
        help="with --reuse-givens: keep every seed's earlier stages from a run in the same --work (their steps "
        "checked against the recipe's) and train this stage and the later ones anew: after a change to those only",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds trained at once, a process each with one torch thread (CPU: cores)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads; 0: 1 when the machine is busier than its cores (OpenMP spin-waits make "
        "2 threads ~10x slower than 1 on an oversubscribed 2-core box), else all cores",
    )
    return parser.parse_args(argv)


def run_seed(givens: Givens, seed: int, args, digits, photos, classifier, out: Path) -> dict:
    """Stages 1-6 of one training seed, the export check and the seed's scores on ``args.split`` (test: the claims)."""
    torch.manual_seed(seed)
    recipe = Recipe(givens, seed, scaled_steps(args.scale), args.scale, diagnose=args.diagnose)
    trained = recipe.run(args.from_stage)
    started = time.time()
    seed_dir = givens.seed_dir(seed)
    export = check_export(seed_dir / "export")
    ev = Evaluator(
        givens.teacher,
        classifier,
        digits,
        split=args.split,
        eval_per_class=args.eval_per_class,
        tiny_decoder_dirs=tiny_decoders(seed_dir),
        device=args.device,
        multistep_steps=sampler_steps(args.scale),
    )
    grids = out / "grids" / f"seed-{seed}"
    scores = evaluate_seed(ev, seed_dir, givens.teacher_controlnet, digits, photos[args.split], grids)
    trained["timings_s"]["evaluation"] = round(time.time() - started, 1)
    return {**scores, "export": export, **trained}


def _seed_job(work: Path, seed: int, args, out: Path) -> dict:
    """``run_seed`` in a worker process (one torch thread): the givens are read back from ``work``."""
    torch.set_num_threads(1)
    givens = Givens.load(work)
    with stage_device(args.device):
        digits = givens.digits()
        return run_seed(givens, seed, args, digits, givens.photos(), givens.classifier(digits), out)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.rebuild_teacher_controlnet and not args.reuse_givens:
        raise SystemExit("--rebuild-teacher-controlnet goes with --reuse-givens (a new --work trains one anyway)")
    if args.from_stage and (not args.reuse_givens or args.rebuild_teacher_controlnet):
        raise SystemExit(
            "--from-stage goes with --reuse-givens and without --rebuild-teacher-controlnet (a new "
            "teacher ControlNet changes stages 3 and 5: run every stage)"
        )
    threads = args.threads or (1 if os.getloadavg()[0] > os.cpu_count() else os.cpu_count())
    torch.set_num_threads(threads)
    steps = scaled_steps(args.scale)
    out, work = Path(args.out), Path(args.work)
    givens = Givens(work, args.split_seed, args.givens_seed, args.scale)
    if not args.reuse_givens:
        fresh_folder(work, "--work")
    out.mkdir(parents=True, exist_ok=True)
    started, timings = time.time(), {}

    with stage_device(args.device):
        # 1. givens, shared by every seed
        torch.manual_seed(args.givens_seed)
        if args.reuse_givens:
            prepare_losses = givens.reuse(args.seeds, keep_students=bool(args.from_stage))
            if args.rebuild_teacher_controlnet:
                prepare_losses["teacher_controlnet"] = rebuild_teacher_controlnet(
                    work, givens.control_rows(), steps["teacher_controlnet"], seed=args.givens_seed, device=args.device
                )
        else:
            prepare_losses = prepare_givens(givens, steps, args.device)
        digits, photos = givens.digits(), givens.photos()
        classifier = givens.classifier(digits)
        timings["data_and_givens"] = round(time.time() - started, 1)
        if args.givens_only:
            givens.save()
            log(f"givens in {work} after {timings['data_and_givens']} s")
            return {"givens": str(work), "timings_s": timings}

        # 2. the students of every seed, scored on ``--split`` (``--jobs`` seeds at once, a process each)
        per_seed = {}
        if args.jobs > 1 and len(args.seeds) > 1:
            givens.save()
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(args.jobs, len(args.seeds)), mp_context=context) as pool:
                futures = {seed: pool.submit(_seed_job, work, seed, args, out) for seed in args.seeds}
                per_seed = {str(seed): future.result() for seed, future in futures.items()}
        else:
            for seed in args.seeds:
                per_seed[str(seed)] = run_seed(givens, seed, args, digits, photos, classifier, out)
        for seed in args.seeds:
            timings[f"seed-{seed}"] = round(sum(per_seed[str(seed)]["timings_s"].values()), 1)

    # 3. report
    seeds_results = [per_seed[str(s)] for s in args.seeds]
    agg = report.aggregate(seeds_results)
    results = {
        "seeds": args.seeds,
        "split_seed": args.split_seed,
        "givens_seed": args.givens_seed,
        "givens_reused": args.reuse_givens,
        "resumed_from_stage": args.from_stage,  # the earlier stages (and their timings) kept from a previous run
        "split_sizes": " / ".join(str(len(digits.split(s)[1])) for s in ("train", "validation", "test")),
        "eval_split": args.split,
        "claim_rule": report.claim_rule(len(args.seeds)),
        "claims": report.settle_claims(seeds_results, agg["mean"]),
        "aggregate": agg,
        "per_seed": per_seed,
        "steps": steps,
        "scale": args.scale,
        "device": args.device,
        "threads": threads,
        "timings_s": timings,
        "total_minutes": round((time.time() - started) / 60, 1),
    }
    curves = report.loss_curves(givens.seed_dir(args.seeds[0]), STAGE_RUNS)
    report.plot_losses(curves, prepare_losses, out / "losses.png")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report.markdown(results))
    log(f"done in {results['total_minutes']} min; {out / 'results.md'}")
    print((out / "results.md").read_text())
    return results


if __name__ == "__main__":
    main()
