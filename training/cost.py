"""The cost sheet of a paper-scale run: ``python -m training.cost`` measures a training step of every stage and
projects the GPU-hours of the schedule in ``training/configs/*_sd15.yaml``.

Each stage runs through its real entry point (``training.stages.<stage>.main``) on its paper-scale example config,
with a few steps at each batch size: an SD 1.5-shaped teacher (UNet 859.5M, SD's VAE, a 768-d CLIP text encoder and a
ControlNet, random weights: the Hub is not needed and the numbers do not depend on the weights), the SDXS-512
(dreamshaper) student cut from it, 512x512 images, the config's mixed precision.  Measured per stage and batch size:
the steady step time (the mean after the first step, ``Runner`` timing; stage 4 separately for a warm-up step and a
Diff-Instruct step with its fake-score updates), peak GPU memory, and the teacher's 25-step ODE sample time, which
prices the one-off pairs and decoder samples.  The table projects each stage's steps x processes x step time (taken
at the config's batch or, beyond the largest measured batch, scaled per sample from it) plus its one-off samples.

    python -m training.cost --out training/results/cost                      # GPU: real shapes, bf16
    python -m training.cost --dry-run --out /tmp/cost --batch-sizes 2        # CPU: the toy teacher, same code path

``--dry-run`` runs every stage on the miniature's untrained toy teacher at 32x32 on the CPU: it checks the script end
to end in CI, and its times say nothing about the real run.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import time
from pathlib import Path

import torch
import yaml

from training.stages import (
    distill_controlnet,
    distill_decoder,
    distill_unet,
    lora_gan,
    onestep,
    onestep_controlnet,
)

CONFIGS = Path(__file__).resolve().parent / "configs"
# stage -> (module, example config); in the order the paper chains them (later stages use stage 1's student)
STAGES = {
    "1 UNet KD": (distill_unet, "distill_unet_sd15.yaml"),
    "2 decoder": (distill_decoder, "distill_decoder_sd15.yaml"),
    "2b decoder on one-step latents": (distill_decoder, "distill_decoder_onestep_sd15.yaml"),
    "3 ControlNet KD": (distill_controlnet, "distill_controlnet_sd15.yaml"),
    "4 one-step": (onestep, "onestep_sd15.yaml"),
    "4c LoRA + GAN": (lora_gan, "lora_gan_sd15.yaml"),
    "5 one-step ControlNet": (onestep_controlnet, "onestep_controlnet_sd15.yaml"),
}
MEASURED_STEPS = 4  # per run: the first is warm-up, the others give the steady step time


# ---- the models and data -----------------------------------------------------------------------------------------


def write_sd15_teacher(root: Path) -> tuple[Path, Path]:
    """An SD 1.5-shaped teacher pipeline folder (random weights, fp16 files) and its ControlNet."""
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from sdxs.configs import SD15_UNET
    from sdxs.inventory import text_encoder_config
    from sdxs.tiny import char_level_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_encoder_config(768)), tokenizer=char_level_tokenizer(77), unet=unet,
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(torch.float16).save_pretrained(root / "teacher")  # fmt: skip
    ControlNetModel.from_unet(unet).to(torch.float16).save_pretrained(root / "teacher_controlnet")
    return root / "teacher", root / "teacher_controlnet"


def write_images(folder: Path, n: int, size: int) -> Path:
    """``n`` random pictures with captions (the images' content does not change a step's cost)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(f"a photo of thing number {i}")
    return folder


class Setup:
    """Where the measured runs read their models and data: the real shapes, or (``dry_run``) the toy teacher."""

    def __init__(self, root: Path, dry_run: bool, batch_sizes: list[int]):
        self.root, self.dry_run = root, dry_run
        if dry_run:
            from training.mini.models import RECIPE_DICT, write_random_teacher

            self.teacher, self.teacher_controlnet = write_random_teacher(root)
            self.size, self.recipe, self.precision = 32, RECIPE_DICT, "no"
            self.cn = dict(embedding_channels=[16, 32, 64], control_kind="sobel")
            self.decoder = dict(downsample=4, disc_channels=[8, 16], tiny_overrides={
                "encoder_block_out_channels": [8, 8, 8], "decoder_block_out_channels": [8, 8, 8],
                "num_encoder_blocks": [1, 1, 1], "num_decoder_blocks": [1, 1, 1]})  # fmt: skip
        else:
            self.teacher, self.teacher_controlnet = write_sd15_teacher(root)
            self.size, self.recipe, self.precision = 512, "sdxs-512-dreamshaper", None  # the configs' (bf16)
            self.cn, self.decoder = {}, {}
        self.data = write_images(root / "images", 2 * max(batch_sizes), self.size)

    def config(self, name: str, out: Path, batch: int) -> dict:
        """The stage's paper-scale example config, shortened to ``MEASURED_STEPS`` at ``batch`` on these models."""
        cfg = yaml.safe_load((CONFIGS / name).read_text())
        cfg.update(output_dir=str(out), teacher=str(self.teacher), batch_size=batch, max_steps=MEASURED_STEPS,
                   checkpoint_every=0, validate_every=0, num_validation=1, progress=False, log_every=1,
                   data={"kind": "folder", "path": str(self.data), "resolution": self.size,
                         "cache_dir": str(self.root / "cache")})  # fmt: skip
        if self.precision is not None:
            cfg["mixed_precision"] = self.precision
        if "recipe" in cfg:
            cfg["recipe"] = self.recipe
        return cfg


# ---- measuring ---------------------------------------------------------------------------------------------------


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak GPU memory since the last reset (CUDA), else the process's peak resident size (an upper bound)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def stage_overrides(stage: str, setup: Setup, student: Path, batch: int) -> dict:
    """What a stage needs beyond its config: stage 1's student, few pairs and samples, the toy's small parts."""
    pairs = dict(num_pairs=batch, pairs_path="")
    common = {
        "2 decoder": dict(teacher_samples=batch, gan_start=1, **setup.decoder),
        "2b decoder on one-step latents": dict(teacher_samples=batch, onestep_samples=batch, tiny_vae="",
                                               onestep_unet=str(student), onestep_controlnet="", **setup.decoder),
        "3 ControlNet KD": dict(student=str(student), teacher_controlnet=str(setup.teacher_controlnet), **setup.cn),
        "4 one-step": dict(student=str(student), warmup_steps=MEASURED_STEPS, **pairs),
        "4c LoRA + GAN": dict(student=str(student), **pairs),
        "5 one-step ControlNet": dict(student=str(student), teacher_controlnet=str(setup.teacher_controlnet),
                                      student_controlnet="", warmup_steps=MEASURED_STEPS, **pairs, **setup.cn),
    }.get(stage, {})  # fmt: skip
    if stage in ("4 one-step", "5 one-step ControlNet"):  # a warm-up phase and a Diff-Instruct phase, each measured
        common["max_steps"] = 2 * MEASURED_STEPS
    return common


def measure(stage: str, setup: Setup, batch: int, student: Path) -> dict:
    """One short run of ``stage`` at ``batch``: its steady step time(s) and peak memory."""
    module, name = STAGES[stage]
    out = setup.root / "runs" / f"{re.sub(r'[^a-z0-9]+', '_', stage.lower())}_b{batch}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = {**setup.config(name, out, batch), **stage_overrides(stage, setup, student, batch)}
    path = out.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    device = torch.device("cuda" if torch.cuda.is_available() and not setup.dry_run else "cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    try:
        run = module.main(["--config", str(path)])
    except torch.OutOfMemoryError as error:
        return {"stage": stage, "batch": batch, "error": f"out of memory: {str(error).splitlines()[0]}"}
    timing = run.timing
    row = {"stage": stage, "batch": batch, "wall_s": round(time.perf_counter() - started, 1),
           "peak_memory_gb": peak_memory_gb(device), "step_s": timing.get("steady_step_seconds"),
           "first_step_s": timing.get("first_step_seconds")}  # fmt: skip
    for phase in ("warmup", "diff_instruct"):  # stage 4 / 5: the phases' own step times
        if timing.get(f"{phase}_steps"):
            row[f"{phase}_step_s"] = timing[f"{phase}_seconds"] / timing[f"{phase}_steps"]
    return row


def ode_seconds_per_sample(setup: Setup, batch: int) -> float:
    """The teacher's 25-step DDIM sample (guidance 7.5: two UNet passes per step), per sample at ``batch``: the
    price of stage 4's pairs and stage 2's teacher samples."""
    from training.models import load_part
    from training.sampling import ddim_sample

    device = torch.device("cuda" if torch.cuda.is_available() and not setup.dry_run else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    unet = load_part(setup.teacher, "unet").to(device, dtype).eval()
    scheduler = load_part(setup.teacher, "scheduler")
    latent = setup.size // 8 if not setup.dry_run else setup.size // 4
    noise = torch.randn(batch, 4, latent, latent, device=device)
    embeds = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    uncond = torch.zeros(1, 77, unet.config.cross_attention_dim, device=device)
    times = []
    for _ in range(2):
        began = time.perf_counter()
        ddim_sample(unet, scheduler.config, noise, embeds, uncond, 25, 7.5)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    return times[-1] / batch


# ---- the projection --------------------------------------------------------------------------------------------


def schedule(name: str) -> dict:
    """The example config's schedule: steps, per-process batch, processes (its ``--num_processes`` comment, else 1),
    fake updates, pairs and decoder samples."""
    text = (CONFIGS / name).read_text()
    cfg = yaml.safe_load(text)
    processes = re.search(r"--num_processes (\d+)", text)
    return {"steps": cfg["max_steps"], "warmup_steps": cfg.get("warmup_steps", 0), "batch": cfg["batch_size"],
            "processes": int(processes.group(1)) if processes else 1, "grad_accum": cfg.get("grad_accum", 1),
            # one-off teacher ODE samples: stage 4's and 5's own pairs (4c shares stage 4's), the decoder's samples
            "pairs": cfg.get("num_pairs", 0) if name.startswith("onestep") else 0,
            "samples": cfg.get("teacher_samples", 0)}  # fmt: skip


def per_step(rows: list[dict], key: str, batch: int) -> tuple[float, str] | None:
    """``key``'s step time at ``batch``: measured there, or scaled per sample from the largest measured batch."""
    good = sorted((r for r in rows if r.get(key)), key=lambda r: r["batch"])
    if not good:
        return None
    exact = [r for r in good if r["batch"] == batch]
    if exact:
        return exact[0][key], "measured"
    below = [r for r in good if r["batch"] <= batch] or good[:1]
    r = below[-1]
    return r[key] * batch / r["batch"], f"scaled from batch {r['batch']}"


def project(measured: list[dict], ode_s: float) -> list[dict]:
    """GPU-hours per stage: steps x grad_accum x processes x step time, plus the one-off teacher samples."""
    table = []
    for stage, (_, name) in STAGES.items():
        s, rows = schedule(name), [r for r in measured if r["stage"] == stage]
        scale = s["grad_accum"] * s["processes"] / 3600
        if stage in ("4 one-step", "5 one-step ControlNet"):
            w, d = per_step(rows, "warmup_step_s", s["batch"]), per_step(rows, "diff_instruct_step_s", s["batch"])
            if w is None or d is None:
                continue
            hours = (s["warmup_steps"] * w[0] + (s["steps"] - s["warmup_steps"]) * d[0]) * scale
            basis = f"warm-up {w[0]:.3f} s, Diff-Instruct {d[0]:.3f} s per step ({d[1]})"
        else:
            step = per_step(rows, "step_s", s["batch"])
            if step is None:
                continue
            hours, basis = s["steps"] * step[0] * scale, f"{step[0]:.3f} s per step ({step[1]})"
        one_off = (s["pairs"] + s["samples"]) * ode_s / 3600
        table.append({"stage": stage, **s, "basis": basis, "train_gpu_hours": hours, "one_off_gpu_hours": one_off,
                      "gpu_hours": hours + one_off})  # fmt: skip
    return table


def markdown(result: dict) -> str:
    lines = [
        "# Cost sheet: a training step of every stage at the paper's shapes",
        "",
        f"`python -m training.cost {' '.join(result['argv'])}` on {result['device']} (torch {result['torch']}). "
        + ("**Dry run: the toy teacher at 32x32 on the CPU; these times say nothing about the real run.**"
           if result["dry_run"] else "SD 1.5-shaped teacher, SDXS-512 student, 512x512, the configs' precision."),
        "",
        "| stage | batch | step s | warm-up / Diff-Instruct step s | first step s | peak memory GB |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["measured"]:
        if "error" in r:
            lines.append(f"| {r['stage']} | {r['batch']} | {r['error']} | | | |")
            continue
        phases = (f"{r['warmup_step_s']:.3f} / {r['diff_instruct_step_s']:.3f}" if "diff_instruct_step_s" in r
                  else "-")  # fmt: skip
        lines.append(f"| {r['stage']} | {r['batch']} | {r['step_s']:.3f} | {phases} | {r['first_step_s']:.3f} "
                     f"| {r['peak_memory_gb']:.2f} |")  # fmt: skip
    lines += [
        "",
        f"Teacher 25-step DDIM sample with guidance (pairs, decoder samples): {result['ode_seconds_per_sample']:.3f} s "
        "per sample.",
        "",
        "| stage (training/configs/*_sd15.yaml) | steps | batch x processes x accum | basis | training GPU-h "
        "| one-off samples GPU-h | total GPU-h |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for t in result["projection"]:
        lines.append(f"| {t['stage']} | {t['steps']} | {t['batch']} x {t['processes']} x {t['grad_accum']} "
                     f"| {t['basis']} | {t['train_gpu_hours']:.1f} | {t['one_off_gpu_hours']:.1f} "
                     f"| {t['gpu_hours']:.1f} |")  # fmt: skip
    total = sum(t["gpu_hours"] for t in result["projection"])
    lines += ["", f"Total: {total:.1f} GPU-hours.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="training/results/cost")
    parser.add_argument("--work", default="/tmp/sdxs-cost", help="scratch folder for the models, data and runs")
    parser.add_argument("--dry-run", action="store_true", help="the toy teacher on the CPU (CI)")
    parser.add_argument("--batch-sizes", default="1,4,8", help="comma-separated batch sizes per process")
    parser.add_argument("--stages", default=",".join(s.split()[0] for s in STAGES), help="e.g. 1,4,5")
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.dry_run:
        torch.set_num_threads(1)  # a busy 2-core box runs 2 OpenMP threads ~10x slower than 1
    wanted = set(args.stages.split(","))
    root, out = Path(args.work), Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    setup = Setup(root, args.dry_run, batch_sizes)
    measured = []
    student = None
    for stage in STAGES:
        for batch in batch_sizes:
            if stage.split()[0] not in wanted and not stage.startswith("1"):
                continue
            measured.append(measure(stage, setup, batch, student or setup.root))
            print(json.dumps(measured[-1]), flush=True)
            if stage.startswith("1") and student is None and "error" not in measured[-1]:
                student = setup.root / "runs" / f"1_unet_kd_b{batch}" / "final" / "unet"
    ode_s = ode_seconds_per_sample(setup, max(batch_sizes))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "cpu"
    result = {"argv": list(argv) if argv is not None else [], "device": device, "torch": torch.__version__,
              "dry_run": args.dry_run, "measured": measured, "ode_seconds_per_sample": ode_s,
              "projection": project(measured, ode_s)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(result, indent=1))
    (out / "cost.md").write_text(markdown(result))
    print((out / "cost.md").read_text())
    return result


if __name__ == "__main__":
    main()
