"""Diagnosis of a miniature run, stage by stage, on the **validation** split: ``python -m training.mini.diagnose``.

A run made with ``python -m training.mini.run --diagnose --split validation`` leaves 8 snapshots along every stage
(``snapshots/step_N``) and stage 4's per-term gradient norms in its ``losses.jsonl``.  This scores every snapshot of
one training seed (FD and accuracy in the digit classifier; edge F1 and sketch accuracy for the ControlNets; PSNR for
the decoders), puts stage 4's Diff-Instruct steps on the warm-up's compute axis (one Diff-Instruct step costs
``diff_instruct_cost_ratio`` warm-up steps, measured in CPU time with the two kinds of step alternating) and writes
``diagnose.json``.
``python -m training.mini.diagnose plot A.json B.json ... --out DIR`` draws the runs side by side (one per teacher):
``fd_along_stages.png`` and ``stage4_gradients.png``.

    python -m training.mini.diagnose score --work /tmp/mini-g5 --seed 0 --out /tmp/diag-g5.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from training.mini.evaluation import SKETCH, Evaluator, final_unet_dir
from training.mini.metrics import edge_f1, psnr
from training.mini.prepare import encode
from training.mini.recipe import Givens, stage_device
from training.models import load_tiny_vae

UNET_STAGES = {  # run folder -> how its UNet is sampled
    "unet_kd": "multistep",
    "unet_nokd": "multistep",
    "onestep": "onestep",
    "onestep_fm_only": "onestep",
}


def snapshots(run: Path, name: str) -> list[tuple[int, Path]]:
    """(step, folder of model ``name``) of a stage run: its snapshots, then its final (at the run's last step)."""
    found = []
    for folder in sorted((run / "snapshots").glob("step_*")):
        if (folder / name).is_dir():
            found.append((int(folder.name.split("_")[1]), folder / name))
    last = max([s for s, _ in found], default=0)
    config = run.parent / "configs" / f"{run.name}.yaml"
    if config.exists():
        last = max(last, int(re.search(r"max_steps: (\d+)", config.read_text()).group(1)))
    if (run / "final" / name).is_dir():
        found.append((last, run / "final" / name))
    return found


def cost_ratio(seed_dir: Path) -> float:
    """Warm-up steps one Diff-Instruct step cost in the run (stage 4's own timings, which size the equal-compute
    control)."""
    timing = json.loads((seed_dir / "onestep" / "timing.json").read_text())
    warmup = json.loads((seed_dir / "onestep_warmup_timing.json").read_text())
    di = timing["diff_instruct_seconds"] / timing["diff_instruct_steps"]
    return di / (warmup["warmup_seconds"] / warmup["warmup_steps"])


def measured_cost_ratio(seed_dir: Path, steps: int = 8) -> float:
    """Warm-up steps one Diff-Instruct step costs, measured now in CPU time with the run's stage-4 config: the two
    kinds of step alternate, so a busy machine slows both alike (runs made before the timings moved to CPU time
    sized their control by wall-clock time)."""
    import tempfile

    from training.config import from_dict
    from training.runner import Runner
    from training.stages.onestep import OneStepConfig, OneStepTrainer

    values = yaml.safe_load((seed_dir / "configs" / "onestep.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        values.update(output_dir=tmp, log_grad_norms=False, ema_decay=None)
        cfg = from_dict(OneStepConfig, values)
        trainer = OneStepTrainer(cfg, Runner(cfg, "cost_ratio"), controlnet_mode=False)
        spent = {"warmup": 0.0, "diff_instruct": 0.0}
        for i in range(2 * steps + 2):
            warmup = i % 2 == 0
            trainer.run.state.step = 0 if warmup else cfg.warmup_steps
            started = time.process_time()
            if warmup:
                trainer.warmup_step()
            else:
                for _ in range(cfg.fake_updates):
                    trainer.fake_step()
                trainer.score_step()
            if i >= 2:  # the first of each kind warms up
                spent["warmup" if warmup else "diff_instruct"] += time.process_time() - started
    return spent["diff_instruct"] / spent["warmup"]


def score_unet_stages(ev: Evaluator, seed_dir: Path, warmup_steps: int, ratio: float) -> dict:
    """FD / accuracy along stages 1 and 4 (and the warm-up-only control), with stage 4's compute axis."""
    out = {}
    for run_name, sampler in UNET_STAGES.items():
        rows = []
        for step, folder in snapshots(seed_dir / run_name, "unet"):
            unet = ev.load_unet(folder)
            scored = ev.score(f"{run_name}_{step}", getattr(ev, sampler)(unet))
            compute = step if step <= warmup_steps or run_name != "onestep" else warmup_steps + (
                step - warmup_steps) * ratio  # fmt: skip
            rows.append({"step": step, "compute": compute, **scored})
        out[run_name] = rows
    out["lora_gan"] = [{"step": 0, **ev.score("lora_gan", ev.onestep(ev.load_unet(final_unet_dir(seed_dir))))}]
    return out


def score_controlnets(ev: Evaluator, seed_dir: Path) -> dict:
    """Edge F1 (Canny controls, digit prompts) and sketch accuracy (``SKETCH`` strokes, neutral prompt) along stage 3
    (the KD student at 25 steps, as it is trained) and stage 5 (the final one-step UNet)."""
    edges, sketches = ev.controls(), ev.controls(SKETCH)
    kd_unet, one_unet = ev.load_unet(seed_dir / "unet_kd" / "final"), ev.load_unet(final_unet_dir(seed_dir))
    out = {}
    for run_name, unet, sampler in (("controlnet", kd_unet, ev.multistep), ("onestep_controlnet", one_unet,
                                                                             ev.onestep)):  # fmt: skip
        rows = []
        for step, folder in snapshots(seed_dir / run_name, "controlnet"):
            cn = ev.load_controlnet(folder)
            key = f"{run_name}_{step}"
            scored = ev.score(key, sampler(unet, controlnet=cn, control=edges))
            row = {"step": step, **scored, "edge_f1": edge_f1(ev.samples[key], edges)}
            sketch = ev.score(key + "_sketch", sampler(unet, controlnet=cn, control=sketches, neutral=True))
            rows.append({**row, "sketch_accuracy": sketch["accuracy"], "sketch_fd": sketch["fd"]})
        out[run_name] = rows
    return out


def score_decoders(ev: Evaluator, seed_dir: Path, photos: torch.Tensor) -> dict:
    """PSNR against the teacher decoder along stage 2 and its fine-tune (validation digits and photos)."""
    latents = encode(ev.vae, ev.psnr_images(photos).to(ev.device))
    reference = ev.decode(ev.vae, latents)
    return {
        run_name: [
            {"step": step, "psnr": psnr(ev.decode(load_tiny_vae(str(folder)).to(ev.device), latents), reference)}
            for step, folder in snapshots(seed_dir / run_name, "vae")
        ]
        for run_name in ("decoder", "decoder_onestep")
    }


def gradient_rows(seed_dir: Path) -> list[dict]:
    """Stage 4's logged rows that carry gradient norms (``log_grad_norms``), warm-up and Diff-Instruct."""
    rows = [json.loads(line) for line in (seed_dir / "onestep" / "losses.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("grad_norm/") for k in r)]


def score(args) -> dict:
    givens = Givens.load(Path(args.work))
    seed_dir = givens.seed_dir(args.seed)
    with stage_device(args.device):
        digits = givens.digits()
        ev = Evaluator(givens.teacher, givens.classifier(digits), digits, split="validation",
                       eval_per_class=args.per_class, device=args.device)  # fmt: skip
        warmup = json.loads((seed_dir / "onestep_warmup_timing.json").read_text())["warmup_steps"]
        ratio = measured_cost_ratio(seed_dir)  # the compute axis
        result = {
            "givens_seed": givens.seed, "split_seed": givens.split_seed, "seed": args.seed, "split": "validation",
            "per_class": args.per_class, "warmup_steps": warmup, "diff_instruct_cost_ratio": ratio,
            "run_cost_ratio": cost_ratio(seed_dir),  # what sized the run's own equal-compute control
            "teacher_25": ev.score("teacher_25", ev.multistep(ev.teacher)),
            "fd_floor": ev.floor(),
            "unets": score_unet_stages(ev, seed_dir, warmup, ratio),
            "controlnets": score_controlnets(ev, seed_dir),
            "decoders": score_decoders(ev, seed_dir, givens.photos()["validation"]),
            "gradients": gradient_rows(seed_dir),
        }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def _label(r: dict) -> str:
    return f"givens {r['givens_seed']}, split {r['split_seed']}"


def plot(runs: list[dict], out: Path) -> None:
    """``fd_along_stages.png`` (FD along stages 1, 4, 3/5 and PSNR along 2, one line per run) and
    ``stage4_gradients.png`` (each term's gradient norm and the score/feature cosine along stage 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for i, r in enumerate(runs):
        colour, label = f"C{i}", _label(r)
        u = r["unets"]
        for name, style in (("unet_kd", "-"), ("unet_nokd", ":")):
            axes[0].plot([x["step"] for x in u[name]], [x["fd"] for x in u[name]], style, color=colour,
                         label=f"{label}: {'KD' if name == 'unet_kd' else 'no KD'}")  # fmt: skip
        axes[0].axhline(r["teacher_25"]["fd"], color=colour, lw=0.8, ls="--")
        for name, style in (("onestep", "-o"), ("onestep_fm_only", ":")):
            pts = [(x["compute"], x["fd"]) for x in u[name]]
            axes[1].plot(
                *zip(*pts),
                style,
                ms=3,
                color=colour,
                label=f"{label}: {'warm-up, then Diff-Instruct' if name == 'onestep' else 'warm-up only'}",
            )
        axes[1].axvline(r["warmup_steps"], color="grey", lw=0.6)
        axes[1].axhline(r["teacher_25"]["fd"], color=colour, lw=0.8, ls="--")
        for name, style in (("controlnet", ":"), ("onestep_controlnet", "-")):
            c = r["controlnets"][name]
            axes[2].plot(
                [x["step"] for x in c],
                [x["edge_f1"] for x in c],
                style,
                color=colour,
                label=f"{label}: stage {3 if name == 'controlnet' else 5} edge F1",
            )
            axes[2].plot([x["step"] for x in c], [x["sketch_accuracy"] for x in c], style, color=colour, alpha=0.45)
        for name, style in (("decoder", "-"), ("decoder_onestep", ":")):
            d = r["decoders"][name]
            axes[3].plot([x["step"] for x in d], [x["psnr"] for x in d], style, color=colour, label=f"{label}: {name}")
    titles = ("stage 1: FD at 25 steps (dashed: teacher)", "stage 4: FD vs compute (warm-up steps)",
              "stages 3, 5: edge F1 (faint: sketch accuracy)", "stage 2: PSNR dB")  # fmt: skip
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
        ax.set_xlabel("step")
    axes[1].set_xlabel("compute (warm-up steps)")
    fig.tight_layout()
    fig.savefig(out / "fd_along_stages.png", dpi=90)
    plt.close(fig)
    plot_gradients(runs, out / "stage4_gradients.png")


def plot_gradients(runs: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for i, r in enumerate(runs):
        rows = r["gradients"]
        for term, style in (("sd", "-"), ("fm", "--"), ("latent", ":"), ("gan", "-.")):
            pts = [(x["step"], x[f"grad_norm/{term}"]) for x in rows if f"grad_norm/{term}" in x]
            if pts:
                axes[0].plot(*zip(*pts), style, color=f"C{i}", label=f"{_label(r)}: {term}")
        pts = [(x["step"], x["grad_cos/sd_fm"]) for x in rows if "grad_cos/sd_fm" in x]
        if pts:
            steps, cos = zip(*pts)
            k = min(5, len(cos))
            axes[1].plot(steps, np.convolve(cos, np.ones(k) / k, mode="same"), color=f"C{i}", label=_label(r))
    axes[0].set_yscale("log")
    axes[0].set_title("stage 4: gradient norm of each loss term on the student's weights", fontsize=9)
    axes[1].set_title("cosine between the score-distillation and feature-matching gradients (5-point mean)",
                      fontsize=9)  # fmt: skip
    axes[1].axhline(0, color="grey", lw=0.6)
    for ax in axes:
        ax.legend(fontsize=6)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score one seed's snapshots on validation")
    s.add_argument("--work", default="/tmp/sdxs-mini")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--per-class", type=int, default=30, help="validation samples per digit class")
    s.add_argument("--out", required=True, help="the JSON to write")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p = sub.add_parser("plot", help="draw scored runs side by side")
    p.add_argument("runs", nargs="+", help="diagnose.json files")
    p.add_argument("--out", required=True, help="folder for the figures")
    args = parser.parse_args(argv)
    if args.command == "score":
        torch.set_num_threads(args.threads)
        return score(args)
    plot([json.loads(Path(r).read_text()) for r in args.runs], Path(args.out))


if __name__ == "__main__":
    main()
