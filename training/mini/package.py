"""Package a miniature run's export as the model the app serves offline: ``python -m training.mini.package``.

Reads a finished ``python -m training.mini.run`` (its ``--work`` and ``--out`` folders) and writes ``models/sdxs-mini``
from the run's first training seed (``--seed`` picks another):

* the export in the released layout (one-step UNet, tiny decoder, one-step ControlNet, text encoder, tokenizer),
  exactly as stage 6 wrote it;
* ``sdxs_model.json``: what the page says about the model and the prompts it knows (``sdxs.loading.model_notes``);
* ``digit_classifier.safetensors``: the run's digit classifier (``training.mini.metrics.DigitClassifier``, one of the
  givens every seed shares), which scored the run and lets tests tell a right picture from a wrong one;
* ``training_configs/``: every stage's YAML as the run used it, and ``README.md``, the model card with the run's
  scores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import save_file

from training.mini import data as mdata
from training.mini.evaluation import FINAL, SKETCH_ROW
from training.mini.recipe import Givens
from training.strokes import TRAIN_WIDTHS

ROOT = Path(__file__).resolve().parents[2]
NOTES = {
    "notice": "Miniature model, trained on a 2-core CPU by this project's own code (training/mini): it draws "
    'handwritten digits at 32x32, shown upscaled, and nothing else. Prompts name a digit, e.g. "7: a photo '
    'of the digit 7"; sketch a digit, or hold one up to the webcam in edges mode. For SDXS-512 the '
    "server needs the Hugging Face Hub or a local copy (--model).",
    "example_prompts": [mdata.PROMPT.format(k) for k in range(10)],
    # the page's sketch: the pen its ControlNet learned (strokes 0.05-0.15 of the side), a prompt that names no digit,
    # so the drawing decides, and the control scale stage 5 trained at (docs/protocol.md, section 1)
    "sketch": {"pen_width": mdata.SKETCH_PEN_WIDTH, "prompt": mdata.NEUTRAL_PROMPT, "control_scale": 1.0},
    "display": {"upscale": "pixelated"},  # 32x32 pictures: sharp pixels, not a blur
}


def classifier_weights(work: Path) -> dict[str, torch.Tensor]:
    """The run's digit classifier: the one it kept in ``work`` (or a deterministic retraining with its givens)."""
    model = Givens.load(work).classifier()
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def copy_configs(run: Path, work: Path, out: Path) -> list[str]:
    """The stage configs of one seed's ``run`` folder with the run's scratch folder replaced by ``<work>``."""
    out.mkdir()
    names = []
    for path in sorted((run / "configs").glob("*.yaml")):
        (out / path.name).write_text(path.read_text().replace(str(work), "<work>"))
        names.append(path.name)
    return names


def checks_text(checks: dict | None, seeds: list[int], seed: int) -> str:
    """What the product checks measured on the run's seeds, as the card says it: every seed's result, never a claim
    that was not measured.  ``checks``: {"needed": 9, "of": 10, "what": ..., "seeds": {"0": {"right": 10}, ...}}
    (``python -m training.mini.package --checks FILE``), or None."""
    if not checks:
        return (
            f"The product checks (tests/browser/test_mini_page.py) were not recorded for this run's seeds; this "
            f"is seed {seed}, so its own scores below are one seed's, not an estimate of the recipe's."
        )
    per_seed = checks["seeds"]
    results = ", ".join(
        f"seed {s}: {per_seed[str(s)]['right']}/{checks['of']}" if str(s) in per_seed else f"seed {s}: not run"
        for s in seeds
    )
    passed = [s for s in seeds if str(s) in per_seed and per_seed[str(s)]["right"] >= checks["needed"]]
    if len(passed) == len(seeds):
        verdict = f"every seed of the run passes (at least {checks['needed']} of {checks['of']})"
    else:
        failed = ", ".join(str(s) for s in seeds if s not in passed)
        verdict = (
            f"**not every seed passes** (at least {checks['needed']} of {checks['of']} needed; seed(s) "
            f"{failed} do not), so the recipe does not reliably pass it"
        )
    return f"Product check ({checks['what']}): {results}; {verdict}. This model is seed {seed}."


def model_card(results: dict, results_md: str, configs: list[str], commit: str, seed: int,
               checks: dict | None = None) -> str:  # fmt: skip
    own = results["per_seed"][str(seed)]
    shipped = own["generation"]["rows"][FINAL]
    control = own["controlnet"]["one-step student + one-step ControlNet (stage 5)"]
    plain = own["controlnet"]["one-step student without ControlNet"]
    sketch = own.get("sketch", {}).get(SKETCH_ROW)
    table = results_md.split("\n", 1)[1].strip()  # without its title
    checked = checks_text(checks, results["seeds"], seed)
    sketched = "" if sketch is None else (
        f"; test digits redrawn with the page's pen, with the neutral prompt, come back as that digit "
        f"{sketch['accuracy']:.1%} of the time through the teacher decoder")  # fmt: skip
    widths = f"{min(TRAIN_WIDTHS)}-{max(TRAIN_WIDTHS)}"
    neutral, pen = mdata.NEUTRAL_PROMPT, mdata.SKETCH_PEN_WIDTH
    minutes = f"about {results['total_minutes']:.0f} minutes"
    if results.get("resumed_from_stage"):
        minutes += (
            f" for {results['resumed_from_stage']} and the stages after it; the givens (teacher, teacher ControlNet, "
            "classifier) and the earlier stages are an earlier run's, trained with the same steps"
        )
    elif results.get("givens_reused"):
        minutes += " after the givens (teacher, teacher ControlNet, classifier), which an earlier run built"
    return f"""---
library_name: diffusers
license: apache-2.0
tags: [sdxs, one-step, controlnet, miniature, digits]
---

# sdxs-mini: a one-step SDXS model in miniature

The model `python app.py` serves when the Hugging Face Hub cannot be reached (`--model mini`). It was trained from
scratch on a 2-core CPU by this repository's own code (`python -m training.mini.run`, commit `{commit}`, {minutes}):
a teacher latent diffusion model on scikit-learn's handwritten digits
(upscaled to 32x32) and small photo crops, then the SDXS paper's stages on it: block-removal distillation of the
UNet, a tiny image decoder, ControlNet distillation, the one-step stage (feature-matching warm-up, then segmented
Diff-Instruct), a very-low-rank LoRA fine-tune with a Projected GAN and the one-step ControlNet, exported in the
released models' layout by stage 6.

* Pictures are 32x32; the page shows them upscaled, pixelated (`sdxs_model.json`: `display.upscale`).  Prompts name
  a digit: `7: a photo of the digit 7`.
* One step at t=999, guidance 0, like the released SDXS models.  `vae/` is the tiny decoder (fine-tuned on the
  one-step model's own latents), `vae_large/` the teacher's VAE, `controlnet/` the one-step ControlNet, trained on
  two kinds of control in turn (white on black, the released sketch ControlNet's convention): the digits' skeletons
  redrawn as round pen strokes {widths} of the side wide, resized and inverted as the server does with the page's
  canvas (sketch mode), and Canny edges (edges mode).
* Sketch mode's prompt is `{neutral}`, which names no digit, so the drawing alone decides it; half of the
  ControlNet stages' prompts are this one.  The page starts sketch mode with it and with a pen {pen} of the canvas
  side (`sdxs_model.json`: `sketch`).
* Modes: text, image, sketch (the canvas is inverted to white strokes on black) and edges.
* `digit_classifier.safetensors` is the small CNN (`training.mini.metrics.DigitClassifier`) that scored it below.

It is a test bed, not an image generator: it shows that the method and the serving path work end to end, and it lets
tests see a wrong picture (channel order, value range, latent scale, decoder mix-ups) that random weights cannot.

## Scores (test digits; the run's own table)

{checked}

Training seed {seed}'s own scores. Shipped model through its shipped tiny decoder: FD
{shipped["fd_tiny_decoder"]:.2f}, class accuracy {shipped["accuracy_tiny_decoder"]:.3f}; with the one-step ControlNet
on test digits' edges: edge F1 {control["edge_f1"]:.3f} against {plain["edge_f1"]:.3f} without it{sketched}.

The run's table, over all its training seeds:

{table}

## Training settings

Step counts: `{json.dumps(results["steps"])}`; training seed {seed}, digit split seed {results["split_seed"]}.
Each stage's full configuration is in `training_configs/` ({", ".join(configs)}), with the run's scratch folder
written as `<work>`.  Reproduce with

```bash
python -m training.mini.run --work /tmp/sdxs-mini --out training/results
python -m training.mini.package --work /tmp/sdxs-mini --results training/results --seed {seed}
```
"""


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", default="/tmp/sdxs-mini", help="the run's --work folder")
    parser.add_argument("--results", default="training/results", help="the run's --out folder (results.json)")
    parser.add_argument("--out", default=str(ROOT / "models" / "sdxs-mini"), help="the packaged model folder")
    parser.add_argument("--seed", type=int, default=None, help="which training seed to ship (default: the run's first)")
    parser.add_argument("--checks", default=None, help="JSON of the product checks on every seed, for the model card")
    args = parser.parse_args(argv)
    work, results_dir, out = Path(args.work), Path(args.results), Path(args.out)
    results = json.loads((results_dir / "results.json").read_text())
    seed = results["seeds"][0] if args.seed is None else args.seed
    run = Givens.load(work).seed_dir(seed)
    if out.exists():
        if any(out.iterdir()) and not (out / "sdxs_model.json").exists():
            raise ValueError(f"{out} is not empty and holds no packaged model; nothing was changed")
        shutil.rmtree(out)
    shutil.copytree(run / "export", out)
    (out / "sdxs_model.json").write_text(json.dumps(NOTES, indent=2) + "\n")
    save_file(classifier_weights(work), str(out / "digit_classifier.safetensors"))
    configs = copy_configs(run, work, out / "training_configs")
    commit = (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        or "unknown"
    )
    checks = json.loads(Path(args.checks).read_text()) if args.checks else None
    card = model_card(results, (results_dir / "results.md").read_text(), configs, commit, seed, checks)
    (out / "README.md").write_text(card)
    print(out)
    return out


if __name__ == "__main__":
    main()
