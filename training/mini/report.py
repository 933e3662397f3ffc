"""The miniature's report: claims, their aggregation over training seeds, ``results.md`` and the loss plot.

A seed's results are ``{"generation", "decoder", "controlnet", ...}`` (``evaluation.evaluate_seed``); the run's are
every seed's plus their ``aggregate`` (mean and sd of every number) and the settled ``claims``.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path

import numpy as np

from training.mini.evaluation import FINAL, ONE_STEP, SKETCH_ROW


def claim_rule(n_seeds: int) -> str:
    """The rule in words, with the strict majority of ``n_seeds`` spelt out."""
    return (
        "A claim holds when it holds on the mean over seeds and in a strict majority of the seeds "
        f"({n_seeds // 2 + 1} of {n_seeds} seed{'s' * (n_seeds != 1)})."
    )


SKETCH_ACCURACY = 0.9  # the product check's 9 of 10 sketched digits
OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}
WITH_CN, WITHOUT_CN = "one-step student + one-step ControlNet (stage 5)", "one-step student without ControlNet"


def claim_sides(r: dict) -> dict[str, tuple[float, str, float]]:
    """Each claim of one results dict (a seed's, or the mean over seeds) as (left, comparison, right)."""
    rows, cn, d = r["generation"]["rows"], r["controlnet"], r["decoder"]
    # the product claims are the final model's (stage 4c); what stage 4b adds is judged on stage 4's own output
    one, segmented, t25 = rows[FINAL], rows[ONE_STEP], rows["teacher, 25 steps"]
    return {
        "one-step FD <= teacher 25-step FD": (one["fd"], "<=", t25["fd"]),
        "one-step FD <= teacher 1-step FD / 4": (one["fd"], "<=", rows["teacher, 1 step"]["fd"] / 4),
        "one-step accuracy >= teacher 25-step accuracy": (one["accuracy"], ">=", t25["accuracy"]),
        "KD student beats no-KD student (FD)": (
            rows["student KD, 25 steps"]["fd"],
            "<",
            rows["student no KD, 25 steps"]["fd"],
        ),
        "segmented Diff-Instruct beats the equal-compute warm-up-only control (FD)": (
            segmented["fd"],
            "<",
            rows["one-step student, warm-up only (equal compute)"]["fd"],
        ),
        "tiny decoder >= bilinear + 3 dB": (d["tiny_decoder_psnr"], ">=", d["bilinear_psnr"] + 3),
        "edge F1 with ControlNet >= 2x without": (cn[WITH_CN]["edge_f1"], ">=", 2 * cn[WITHOUT_CN]["edge_f1"]),
        # the product's, not the paper's: a digit sketched with the page's pen and the neutral prompt comes back
        f"sketch: accuracy with the one-step ControlNet >= {SKETCH_ACCURACY}": (
            r["sketch"][SKETCH_ROW]["accuracy"],
            ">=",
            SKETCH_ACCURACY,
        ),
    }


def claim_holds(on_mean: bool, per_seed: list[bool]) -> bool:
    """The rule: true on the mean and in a strict majority of the seeds."""
    return bool(on_mean) and 2 * sum(map(bool, per_seed)) > len(per_seed)


def settle_claims(per_seed: list[dict], mean: dict) -> dict:
    """Every claim with its sides and verdict on the mean and on each seed, and whether it holds (``claim_holds``)."""
    sides_mean, sides_seeds = claim_sides(mean), [claim_sides(r) for r in per_seed]
    settled = {}
    for name, (left, op, right) in sides_mean.items():
        seeds = [dict(left=s[name][0], right=s[name][2], holds=OPS[op](s[name][0], s[name][2])) for s in sides_seeds]
        on_mean = OPS[op](left, right)
        settled[name] = {
            "holds": claim_holds(on_mean, [s["holds"] for s in seeds]),
            "comparison": op,
            "mean": dict(left=left, right=right, holds=on_mean),
            "per_seed": seeds,
        }
    return settled


def aggregate(per_seed: list[dict]) -> dict:
    """{"mean": ..., "sd": ...}: the seeds' results with every number replaced by its mean / sample sd over seeds
    (0 for one seed); other leaves (flags, text, lists) are left out."""

    def walk(values: list, stat):
        if isinstance(values[0], dict):
            out = {k: walk([v[k] for v in values], stat) for k in values[0] if all(k in v for v in values)}
            return {k: v for k, v in out.items() if v not in (None, {})} or None
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return float(stat(values))
        return None

    sd = lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0  # noqa: E731
    return {"mean": walk(per_seed, np.mean), "sd": walk(per_seed, sd)}


def _num(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 2 else f"{x:.2f}"


class _Cells:
    """Table cells as "mean ± sd" (just the value for one seed) from the aggregate."""

    def __init__(self, agg: dict, n: int):
        self.mean, self.sd, self.n = agg["mean"], agg["sd"], n

    def __call__(self, *path: str, fmt: str = ".2f") -> str:
        m, s = self.mean, self.sd
        for key in path:
            m, s = m[key], s[key]
        return f"{m:{fmt}}" if self.n == 1 else f"{m:{fmt}} ± {s:{fmt}}"

    def tiny(self, *path: str) -> str:
        """A row's tiny-decoder cells, shipped then stage 2's ("-" where the evaluator did not score one)."""
        row = self.mean
        for key in path:
            row = row[key]
        return " | ".join(
            f"{self(*path, f'fd_{k}')} / {self(*path, f'accuracy_{k}', fmt='.3f')}" if f"fd_{k}" in row else "-"
            for k in ("tiny_decoder", "stage2_decoder")
        )


TINY_HEADER = "FD / accuracy, shipped tiny decoder | FD / accuracy, stage-2 tiny decoder"


def _split_lines(split: str) -> list[str]:
    if split == "test":
        return ["Every setting was chosen on the validation split; these tables score the **test** split, with"]
    return ["These tables score the **validation** split (settings are chosen there; claims are judged on test), with"]


def markdown(r: dict) -> str:
    """``results.md`` of a run: its tables as mean ± sd over seeds, then the claims with every seed's numbers."""
    seeds, cell = r["seeds"], _Cells(r["aggregate"], len(r["seeds"]))
    first, split = r["per_seed"][str(seeds[0])], r["eval_split"]
    spread = "Every number is the mean ± sd over the seeds." if len(seeds) > 1 else "One seed: no spread."
    lines = [
        "# SDXS miniature reproduction",
        "",
        f"Training seeds: {', '.join(map(str, seeds))}. Stages 1-6 ran once per seed; the givens (teacher VAE, LDM and",
        f"ControlNet, digit classifier; seed {r['givens_seed']}) are shared. The digits are split by split seed "
        f"{r['split_seed']} into train / validation / test ({r['split_sizes']}).",
        *_split_lines(r["eval_split"]),
        f"its own evaluation noise. {spread}",
        "",
        f"Total {r['total_minutes']} min on {r['device']} (scale {r['scale']}); steps {r['steps']}.",
        *(
            [
                f"Resumed at {r['resumed_from_stage']}: every seed's earlier stages (and their timings) were kept from "
                "an earlier run in the same work folder, trained with the same steps; this stage and the later ones, "
                "and every score, are this run's."
            ]
            if r.get("resumed_from_stage")
            else []
        ),
        "",
        f"Frechet distance in the digit classifier's features vs the {split} digits; floor (train vs {split} digits): "
        f"{cell('generation', 'fd_floor_train_vs_held_out')}.",
        "",
        "Each row's latents are decoded by the teacher's decoder (FD, accuracy: the claims use it, they are about the",
        "UNets), by the tiny decoder the export ships (stage 2's, fine-tuned on the one-step model's latents) and by",
        "stage 2's own tiny decoder.",
        "",
        f"| model | FD | class accuracy | {TINY_HEADER} |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {cell('generation', 'rows', k, 'fd')} | {cell('generation', 'rows', k, 'accuracy', fmt='.3f')} "
        f"| {cell.tiny('generation', 'rows', k)} |"
        for k in first["generation"]["rows"]
    ]
    lines += [
        "",
        f"| decoder (vs teacher decoder, {split} digits + photos) | PSNR dB | decoder params |",
        "|---|---|---|",
        f"| tiny decoder, shipped (stage 2 + fine-tune on one-step latents) | {cell('decoder', 'tiny_decoder_psnr')} "
        f"| {first['decoder']['tiny_decoder_params']:,} |",
    ]
    if "stage2_decoder_psnr" in first["decoder"]:
        lines.append(
            f"| tiny decoder, stage 2 only | {cell('decoder', 'stage2_decoder_psnr')} "
            f"| {first['decoder']['tiny_decoder_params']:,} |"
        )
    lines += [
        f"| bilinear baseline (linear latent->RGB + bilinear up) | {cell('decoder', 'bilinear_psnr')} | 15 |",
        f"| teacher decoder | - | {first['decoder']['teacher_decoder_params']:,} |",
        "",
        f"| ControlNet (controls: edges of {split} digits, fresh noise) | edge F1 | FD | accuracy | {TINY_HEADER} |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {cell('controlnet', k, 'edge_f1', fmt='.3f')} | {cell('controlnet', k, 'fd')} "
        f"| {cell('controlnet', k, 'accuracy', fmt='.3f')} | {cell.tiny('controlnet', k)} |"
        for k in first["controlnet"]
    ]
    lines += [
        "",
        "| sketch mode (the split's digits drawn with the page's pen, neutral prompt) | FD | accuracy "
        f"| {TINY_HEADER} |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {cell('sketch', k, 'fd')} | {cell('sketch', k, 'accuracy', fmt='.3f')} | {cell.tiny('sketch', k)} |"
        for k in first["sketch"]
    ]
    lines += ["", *claims_table(r["claims"], seeds), "", *footer(r, seeds)]
    return "\n".join(lines)


def claims_table(claims: dict, seeds: list[int]) -> list[str]:
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = [claim_rule(len(seeds)), "", f"| claim | holds | mean | {head} |", "|---|---|---|" + "---|" * len(seeds)]
    for name, c in claims.items():
        per_seed = " | ".join(_side(x, c["comparison"]) for x in c["per_seed"])
        mean = _side(c["mean"], c["comparison"])
        lines.append(f"| {name} | {'yes' if c['holds'] else '**no**'} | {mean} | {per_seed} |")
    return lines


def _side(x: dict, op: str) -> str:
    return f"{_num(x['left'])} {op} {_num(x['right'])}: {'yes' if x['holds'] else 'no'}"


def footer(r: dict, seeds: list[int]) -> list[str]:
    per_seed = [r["per_seed"][str(s)] for s in seeds]
    control = ", ".join(
        f"seed {s}: {x['equal_compute_control_steps']} steps (a Diff-Instruct step costs "
        f"{x['diff_instruct_cost_ratio']:.2f} warm-up steps)"
        for s, x in zip(seeds, per_seed)
    )
    return [
        f"Equal-compute warm-up-only control: {control}.",
        f"Export (seed {seeds[0]}, the one `training.mini.package` ships): {json.dumps(per_seed[0]['export'])}",
        "",
        f"Timings (s): {json.dumps(r['timings_s'])}",
        "",
    ]


def loss_curves(run_dir: Path, names) -> dict:
    curves = {}
    for name in names:
        path = run_dir / name / "losses.jsonl"
        if path.exists():
            curves[name] = [json.loads(line) for line in path.read_text().splitlines()]
    return curves


def plot_losses(curves: dict, prepare_losses: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(prepare_losses.items()) + [(n, None) for n in curves]
    fig, axes = plt.subplots((len(panels) + 3) // 4, 4, figsize=(16, 3.2 * ((len(panels) + 3) // 4)))
    for ax, (name, values) in zip(axes.flat, panels):
        if values is not None:
            ax.plot(np.convolve(values, np.ones(20) / 20, mode="valid"))
        else:
            rows = curves[name]
            for key in sorted({k for r in rows for k in r} - {"step", "fm_weight", "alpha", "score_fraction"}):
                pts = [(r["step"], r[key]) for r in rows if key in r]
                ax.plot(*zip(*pts), label=key)
            ax.legend(fontsize=6)
        ax.set_title(name, fontsize=9)
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
