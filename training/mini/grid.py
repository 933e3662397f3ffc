"""The claims over teachers: ``python -m training.mini.grid RESULTS_DIR ... --out training/results/grid``.

Each RESULTS_DIR is one ``python -m training.mini.run`` on the test split for one teacher (a givens seed and a split
seed: the teacher VAE, LDM, ControlNet and classifier, and the digits they and the students see), with its training
seeds.  The verdicts, stated before the grid ran:

* **per teacher**: ``report.claim_holds`` over that teacher's training seeds (the mean over seeds, and a strict
  majority of them: both of two);
* **pooled**: a claim holds when it holds on the mean over teachers (each teacher's mean over its seeds, so a teacher
  with more seeds weighs the same) **and** for a strict majority of the teachers (3 of 4) by the per-teacher verdict.

Writes ``grid.json`` (every teacher's claims, the pooled verdicts, the runs' sides) and ``grid.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.mini.report import OPS, claim_holds

POOLED_RULE = (
    "Per teacher: the claim holds on the mean over its training seeds and in a strict majority of them. Pooled: it "
    "holds on the mean over teachers (each teacher's mean over its seeds) and for a strict majority of the teachers."
)


def teacher_name(results: dict) -> str:
    return f"givens {results['givens_seed']}, split {results['split_seed']}"


def pooled(teachers: list[dict]) -> dict:
    """Every claim's per-teacher verdicts and the pooled verdict (``POOLED_RULE``)."""
    out = {}
    for name in teachers[0]["claims"]:
        claims = [t["claims"][name] for t in teachers if name in t["claims"]]
        runs = [s for c in claims for s in c["per_seed"]]
        # each teacher's mean over its seeds, then the mean over teachers: a teacher with more seeds weighs the same
        left = float(np.mean([np.mean([s["left"] for s in c["per_seed"]]) for c in claims]))
        right = float(np.mean([np.mean([s["right"] for s in c["per_seed"]]) for c in claims]))
        on_mean = OPS[claims[0]["comparison"]](left, right)
        per_teacher = [bool(c["holds"]) for c in claims]
        out[name] = {
            "holds": claim_holds(on_mean, per_teacher),
            "comparison": claims[0]["comparison"],
            "mean": {"left": left, "right": right, "holds": on_mean},
            "teachers_holding": sum(per_teacher),
            "teachers": len(claims),
            "runs_holding": sum(bool(s["holds"]) for s in runs),
            "runs": len(runs),
        }
    return out


def _num(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 2 else f"{x:.2f}"


def markdown(grid: dict) -> str:
    teachers = grid["teachers"]
    names = [t["teacher"] for t in teachers]
    lines = [
        "# The miniature's claims over teachers (test split)",
        "",
        f"{len(teachers)} teachers, with their training seeds: "
        + "; ".join(f"{t['teacher']} (seeds {', '.join(str(s) for s in t['seeds'])})" for t in teachers)
        + f": {sum(len(t['seeds']) for t in teachers)} runs. "
        "Settings were chosen on the validation split before this grid ran; nothing was changed after it.",
        "",
        POOLED_RULE,
        "",
        "| claim | pooled | mean over teachers | teachers holding | runs holding | " + " | ".join(names) + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for name, p in grid["pooled"].items():
        cells = []
        for t in teachers:
            c = t["claims"].get(name)
            cells.append("-" if c is None else f"{'yes' if c['holds'] else '**no**'} "
                         f"({_num(c['mean']['left'])} {c['comparison']} {_num(c['mean']['right'])})")  # fmt: skip
        lines.append(
            f"| {name} | {'yes' if p['holds'] else '**no**'} | {_num(p['mean']['left'])} {p['comparison']} "
            f"{_num(p['mean']['right'])} | {p['teachers_holding']} of {p['teachers']} | {p['runs_holding']} of "
            f"{p['runs']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results folders of training.mini.run, one per teacher")
    parser.add_argument("--out", default="training/results/grid")
    args = parser.parse_args(argv)
    teachers = []
    for folder in args.results:
        r = json.loads((Path(folder) / "results.json").read_text())
        if r["eval_split"] != "test":
            raise ValueError(f"{folder} was scored on {r['eval_split']}: the grid judges claims on the test split")
        teachers.append({"teacher": teacher_name(r), "givens_seed": r["givens_seed"], "split_seed": r["split_seed"],
                         "seeds": r["seeds"], "claims": r["claims"], "folder": str(folder)})  # fmt: skip
    grid = {"rule": POOLED_RULE, "teachers": teachers, "pooled": pooled(teachers)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(grid, indent=1))
    (out / "grid.md").write_text(markdown(grid))
    print(markdown(grid))
    return grid


if __name__ == "__main__":
    main()
