"""The miniature's recipe: the givens every seed shares, and the paper's stages 1-6 for one training seed.

Work folder layout (``--work``)::

    givens.json, data/, teacher/, teacher_controlnet/, classifier/   built once (``prepare_givens``), shared
    seed-<k>/configs/, seed-<k>/<stage run>/, seed-<k>/cache/, seed-<k>/export/   one seed's students (``Recipe``)

Each stage runs through its real entry point (``training.stages.*.main``) on a config written as YAML.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

from training.mini import data as mdata
from training.mini import models
from training.mini.evaluation import GUIDANCE, final_unet_dir
from training.mini.metrics import cached_classifier
from training.mini.prepare import CONTROL_KIND, build_teacher, log
from training.stages import (
    distill_controlnet,
    distill_decoder,
    distill_unet,
    export,
    lora_gan,
    onestep,
    onestep_controlnet,
)

STEPS = dict(
    vae=400,
    teacher=800,
    # chosen on validation over two teachers (training/README.md, "The sketch gap is the teacher's"): 800 -> 1600
    # steps raised the teacher's sketch accuracy 0.890 -> 0.903 and 0.853 -> 0.917, its legible typed-sketch accuracy
    # 0.823 -> 0.871 and 0.617 -> 0.642, edge F1 0.495 -> 0.564 and 0.508 -> 0.532 (givens 0 / split 0, givens 5 /
    # split 3; ``python -m training.mini.teacher_controlnet given 1600:cubic``); slanted copies lowered every figure
    teacher_controlnet=1600,
    # chosen on validation over two teachers (training/README.md, "Settings chosen on validation"): at 200 KD steps
    # the student was still improving on both (FD 37 -> 29 and 58 -> 46 at 600), and so were the stage-3 ControlNet
    # (edge F1 and sketch accuracy still rising at 300) and the warm-up on the second teacher (one-step FD 53 -> 46
    # with 600 warm-up steps on the 600-step KD student)
    kd=600,
    decoder=600,
    controlnet=600,
    warmup=600,
    diff_instruct=360,
    cn_warmup=100,
    # Diff-Instruct pulls the one-step ControlNet's inflated latents back towards the teacher's scale at no cost in
    # edge F1: tiny-decoder FD 172 / 114 / 86 after 40 / 160 / 400 steps (training/README.md, "Fifth sweep"); 400 ->
    # 800 chosen on validation over two teachers (five seeds; training/README.md, "Stage 5 twice as long"): sketch FD
    # lower in 5 of 5, typed legible accuracy higher in 4 and equal in 1, sketch accuracy higher in 4 of 5
    cn_diff_instruct=800,
    lora_gan=100,
    decoder_onestep=200,
)


class Stage(NamedTuple):
    """One of a seed's stages: its ``Recipe`` method, what it writes in the seed's folder (besides its configs and the
    caches, whose settings are checked where they are read) and the ``STEPS`` it trains for."""

    name: str
    method: str
    outputs: tuple[str, ...]
    steps: tuple[str, ...]


# a seed's stages in the order they run
SEED_STAGES = (
    Stage("stage1_unet_kd_and_control", "stage1_unet", ("unet_kd", "unet_nokd"), ("kd",)),
    Stage("stage2_decoder", "stage2_decoder", ("decoder",), ("decoder",)),
    Stage("stage3_controlnet", "stage3_controlnet", ("controlnet",), ("controlnet",)),
    Stage(
        "stage4_onestep",
        "stage4_onestep",
        ("onestep", "onestep_warmup_final", "onestep_warmup_timing.json", "onestep_fm_only"),
        ("warmup", "diff_instruct"),
    ),
    Stage("stage4c_lora_gan", "stage4c_lora_gan", ("lora_gan",), ("lora_gan",)),
    Stage(
        "stage5_onestep_controlnet",
        "stage5_onestep_controlnet",
        ("onestep_controlnet",),
        ("cn_warmup", "cn_diff_instruct"),
    ),
    Stage("stage2_decoder_onestep_fine_tune", "stage2_decoder_onestep", ("decoder_onestep",), ("decoder_onestep",)),
    Stage("stage6_export", "stage6_export", ("export",), ()),
)
STAGES = tuple(stage.name for stage in SEED_STAGES)
RUN_RECORD = "recipe_run.json"  # a seed's stage timings, steps and equal-compute sizing, written after every stage
# stage 4c on the miniature (the paper gives no settings): a short fine-tune of the one-step UNet with a rank-4 LoRA,
# the dataset's digits as the Projected GAN's real rows, stage 4's feature matching kept at its end weight
LORA_GAN = dict(lora_rank=4, lr=1e-3, disc_lr=1e-3, gan_weight=0.1, disc_hidden=32)


def sampler_steps(scale: float) -> int:
    """DDIM steps of the teacher's samplers (ODE pairs, decoder samples, the multi-step rows): 25, fewer only in smoke
    runs (``--scale`` below 1; the rows keep their "25 steps" names)."""
    return 25 if scale >= 1 else max(2, round(25 * scale))


def scaled_steps(scale: float) -> dict:
    """STEPS times ``scale`` (at least 2 each: smoke runs use 0.01)."""
    return {k: max(2, int(round(v * scale))) for k, v in STEPS.items()}


@contextlib.contextmanager
def stage_device(device: str):
    """Run the stages (accelerate picks CUDA whenever it exists) on ``device``: on a GPU machine asked for the CPU,
    ``ACCELERATE_USE_CPU`` keeps them there.  Restores the environment afterwards."""
    force_cpu = torch.device(device).type == "cpu" and torch.cuda.is_available()
    old = os.environ.get("ACCELERATE_USE_CPU")
    if force_cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        yield
    finally:
        if force_cpu and old is None:
            del os.environ["ACCELERATE_USE_CPU"]
        elif force_cpu:
            os.environ["ACCELERATE_USE_CPU"] = old


@dataclass(frozen=True)
class Givens:
    """What every training seed shares, under ``work``: the digit split, the data folders written from its train
    split, the teacher VAE + LDM + ControlNet and the digit classifier (all trained with ``seed``, their steps
    ``STEPS`` times ``scale``)."""

    work: Path
    split_seed: int = 0
    seed: int = 0
    scale: float = 1.0

    @property
    def teacher(self) -> Path:
        return self.work / "teacher"

    @property
    def teacher_controlnet(self) -> Path:
        return self.work / "teacher_controlnet"

    def seed_dir(self, seed: int) -> Path:
        return self.work / f"seed-{seed}"

    def digits(self) -> mdata.Digits:
        return mdata.digits(32, split_seed=self.split_seed)

    def photos(self) -> dict[str, torch.Tensor]:
        return mdata.photo_splits(self.split_seed)

    def classifier(self, digits: mdata.Digits | None = None):
        digits = digits or self.digits()
        epochs = max(1, round(15 * self.scale))  # 15 epochs; fewer only in smoke runs
        return cached_classifier(self.work, digits.train, digits.train_labels, seed=self.seed, epochs=epochs)

    def control_rows(self, digits: mdata.Digits | None = None) -> tuple[torch.Tensor, list[str]]:
        """The ControlNets' rows (the teacher's, stages 3 and 5): the train digits, half with sketch mode's prompt."""
        digits = digits or self.digits()
        return mdata.sketch_rows(digits.train, digits.train_labels)

    def save(self) -> None:
        record = {"split_seed": self.split_seed, "seed": self.seed, "scale": self.scale}
        (self.work / "givens.json").write_text(json.dumps(record))

    @classmethod
    def load(cls, work: Path) -> Givens:
        """The givens of a finished run's ``--work`` (split seed 0, givens seed 0, scale 1 where the record predates
        them)."""
        path = Path(work) / "givens.json"
        return cls(Path(work), **(json.loads(path.read_text()) if path.exists() else {}))

    def reuse(self, seeds, keep_students: bool = False) -> dict:
        """Keep the givens already in ``work`` (made by an earlier run with the same split seed, givens seed and
        scale) and remove ``seeds``' earlier students (unless ``keep_students``: a run resumed at a later stage,
        ``Recipe.run``); returns the givens' training losses.  Raises ValueError, and
        deletes nothing, when ``work`` holds no givens or other ones."""
        if not (self.work / "givens.json").exists() or not (self.work / "prepare_losses.json").exists():
            raise ValueError(f"--reuse-givens: {self.work} holds no finished givens; run once without it")
        found = Givens.load(self.work)
        if found != self:
            raise ValueError(
                f"--reuse-givens: {self.work} holds givens with split seed {found.split_seed}, givens seed "
                f"{found.seed}, scale {found.scale}; this run asks for {self.split_seed}, {self.seed}, {self.scale}"
            )
        if not keep_students:
            for seed in seeds:
                shutil.rmtree(self.seed_dir(seed), ignore_errors=True)
        return json.loads((self.work / "prepare_losses.json").read_text())


def prepare_givens(givens: Givens, steps: dict, device: str = "cpu") -> dict:
    """Write the data folders and train the teacher VAE, LDM, ControlNet and the classifier; returns their losses.

    Folders: ``digits`` (every train digit with its prompt, plus neutral-prompt rows: the teacher, stages 1 and 4),
    ``sketches`` (the train digits, half of them with the neutral prompt: the ControlNets, stages 3 and 5) and
    ``decoder`` (digits and photos: stage 2)."""
    digits, photos = givens.digits(), givens.photos()
    rows = mdata.with_neutral_rows(digits.train, digits.train_labels)
    mdata.write_folder(givens.work / "data" / "digits", *rows)
    control_rows = givens.control_rows(digits)
    mdata.write_folder(givens.work / "data" / "sketches", *control_rows)
    mixed = torch.cat([digits.train, photos["train"]])
    captions = mdata.captions(digits.train_labels)
    mdata.write_folder(givens.work / "data" / "decoder", mixed, captions + ["a photo"] * len(photos["train"]))
    losses = build_teacher(givens.work, rows, control_rows, mixed, steps, seed=givens.seed, device=device)
    givens.classifier(digits)
    givens.save()
    return losses


def stage(module, work: Path, name: str, config: dict):
    """Write ``config`` as ``work/configs/<name>.yaml`` and run the stage's ``main`` on it, in process."""
    path = work / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log(f"stage {name}: {config.get('max_steps', '')} steps")
    return module.main(["--config", str(path)])


@dataclass
class Recipe:
    """Stages 1-6 of one training seed, into ``givens.seed_dir(seed)``; ``run`` returns what the report needs."""

    givens: Givens
    seed: int
    steps: dict
    scale: float = 1.0
    timings: dict = field(default_factory=dict)
    equal_compute: dict = field(default_factory=dict)  # stage 4's warm-up-only control: its steps, the cost ratio
    # every stage saves 8 snapshots along its steps and stage 4 logs its loss terms' gradient norms, for
    # ``training.mini.diagnose`` (their time is left out of stage 4's step timings)
    diagnose: bool = False

    @property
    def dir(self) -> Path:
        return self.givens.seed_dir(self.seed)

    @property
    def student(self) -> str:
        return str(self.dir / "unet_kd" / "final" / "unet")

    @property
    def onestep_unet(self) -> str:
        """The final one-step UNet: stage 4's, fine-tuned by stage 4c (what stages 5, 2 again and 6 build on)."""
        return str(final_unet_dir(self.dir) / "unet")

    def run(self, from_stage: str | None = None) -> dict:
        """Every stage, or (``from_stage``) that stage and the ones after it, keeping the earlier ones' folders from a
        finished or interrupted run of this seed (``RUN_RECORD``, which every run writes after each stage).  Raises
        ValueError, and deletes nothing, when that record is missing, lacks a kept stage or was trained with other
        steps for one."""
        first = STAGES.index(from_stage) if from_stage else 0
        if first:
            self._keep(SEED_STAGES[:first], SEED_STAGES[first:])
        for stage in SEED_STAGES[first:]:
            log(f"seed {self.seed}: {stage.name}")
            started = time.time()
            getattr(self, stage.method)()
            self.timings[stage.name] = round(time.time() - started, 1)
            self._record()
        return {"timings_s": dict(self.timings), **self.equal_compute}

    def _record(self) -> None:
        record = {"steps": self.steps, "timings_s": self.timings, "equal_compute": self.equal_compute}
        (self.dir / RUN_RECORD).write_text(json.dumps(record, indent=1))

    def _keep(self, kept: tuple[Stage, ...], rerun: tuple[Stage, ...]) -> None:
        path = self.dir / RUN_RECORD
        if not path.exists():
            raise ValueError(
                f"--from-stage: {self.dir} holds no record of an earlier run ({RUN_RECORD}); run it in full"
            )
        record = json.loads(path.read_text())
        missing = [stage.name for stage in kept if stage.name not in record["timings_s"]]
        if missing:
            raise ValueError(f"--from-stage: {self.dir}'s earlier run did not finish {', '.join(missing)}")
        changed = sorted(k for stage in kept for k in stage.steps if record["steps"].get(k) != self.steps[k])
        if changed:
            detail = ", ".join(f"{k} {record['steps'].get(k)} -> {self.steps[k]}" for k in changed)
            raise ValueError(f"--from-stage: the kept stages were trained with other steps ({detail}); start earlier")
        self.timings = {stage.name: record["timings_s"][stage.name] for stage in kept}
        if "stage4_onestep" in self.timings:
            self.equal_compute = record["equal_compute"]
        for stage in rerun:  # what the rerun stages make anew
            for output in stage.outputs:
                target = self.dir / output
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)

    def common(self, name: str, steps: int, **extra) -> dict:
        return dict(
            output_dir=str(self.dir / name),
            seed=self.seed,
            max_steps=steps,
            checkpoint_every=max(1, steps // 2),
            checkpoint_limit=2,
            log_every=5,
            num_validation=16,
            progress=False,
            snapshot_every=max(1, steps // 8) if self.diagnose else 0,
            **extra,
        )

    def data(self, folder: str = "digits") -> dict:
        """One of the givens' image-text folders, its latent cache in the seed's folder."""
        path = self.givens.work / "data" / folder
        return dict(kind="folder", path=str(path), resolution=32, cache_dir=str(self.dir / "cache"))

    def base(self) -> dict:
        return dict(teacher=str(self.givens.teacher), recipe=models.RECIPE_DICT, data=self.data())

    def stage1_unet(self) -> None:
        """KD student (output + feature KD only: the paper excludes the denoising loss) and the same architecture
        without KD (the denoising loss alone)."""
        kd = dict(batch_size=64, lr=5e-4, uncond_prob=0.1, validation_guidance=GUIDANCE, **self.base())
        kd_only = {**self.common("unet_kd", self.steps["kd"]), **kd, "denoise_weight": 0.0}
        stage(distill_unet, self.dir, "unet_kd", kd_only)
        no_kd = {
            **self.common("unet_nokd", self.steps["kd"]),
            **kd,
            "denoise_weight": 1.0,
            "out_kd_weight": 0.0,
            "feat_kd_weight": 0.0,
        }
        stage(distill_unet, self.dir, "unet_nokd", no_kd)

    def decoder_config(self) -> dict:
        return {
            "teacher": str(self.givens.teacher),
            "data": self.data("decoder"),
            "downsample": 4,
            "batch_size": 32,
            "lr": 1e-3,
            "gan_weight": 0.05,
            "disc_channels": [32, 64],
            "teacher_samples": max(16, int(256 * self.scale)),  # teacher DDIM samples; fewer only for smoke runs
            "sample_guidance": GUIDANCE,
            "sample_steps": sampler_steps(self.scale),
        }

    def stage2_decoder(self) -> None:
        steps = self.steps["decoder"]
        config = {**self.common("decoder", steps), **self.decoder_config(), "tiny_overrides": models.TINY_DECODER}
        # the paper's section 4: the decoder's GAN is a Projected GAN (heads over the frozen teacher VAE encoder)
        config.update(gan_start=steps // 3, discriminator="projected", disc_hidden=32)
        stage(distill_decoder, self.dir, "decoder", config)

    def stage3_controlnet(self) -> None:
        """Student ControlNet by KD."""
        config = {
            **self.common("controlnet", self.steps["controlnet"]),
            **self.base(),
            "data": self.data("sketches"),  # half of the prompts neutral (sketch mode's)
            "student": self.student,
            "teacher_controlnet": str(self.givens.teacher_controlnet),
            "embedding_channels": [16, 32, 64],
            "control_kind": CONTROL_KIND,
            "batch_size": 64,
            "lr": 1e-3,
        }
        stage(distill_controlnet, self.dir, "controlnet", config)

    def onestep_config(self) -> dict:
        """Stage 4's settings, shared by stage 5."""
        return dict(
            **self.base(),
            student=self.student,
            batch_size=32,
            lr=2e-4,
            fake_lr=5e-4,
            fake_updates=3,
            guidance=GUIDANCE,
            real_guidance=GUIDANCE,
            num_pairs=max(32, int(512 * self.scale)),  # teacher ODE pairs; fewer only for smoke runs
            ode_steps=sampler_steps(self.scale),
            pairs_path=str(self.dir / "cache" / "pairs.pt"),
            feature_net="unet_encoder",  # one of the paper's three (VGG, DINOv2, the diffusion UNet's encoder)
            feature_distance="ssim",
            # the feature-matching segment keeps a high weight through phase (b), and phase (b) runs long enough to
            # get through its transient: with the weight decayed to 0 over 120 steps FD rose from 38 to 92; with
            # 8 -> 4 over 400 steps it fell to 35 (training/README.md, "Ablations")
            fm_weight=8.0,
            fm_weight_end=4.0,
            # the paper starts score distillation on nearly the whole range (alpha near 1) and lowers alpha with
            # lambda_FM (section 3.2, after Eq. 12)
            segment_alpha=0.95,
            segment_alpha_end=0.5,
            # + 0.3 * the latents' MSE to the ODE targets: decoded features alone let the one-step latents grow to
            # 2-3x the teacher's scale, which the teacher decoder saturates away but the shipped tiny decoder renders
            # blown out (tiny-decoder FD 34.1 -> 28.1; training/README.md, "Fifth sweep")
            latent_weight=0.3,
            # the saved student is an EMA of its weights: phase (b) moves the live weights through noisy samples, and
            # the average removes most of that (FD 48.5 -> 31.9 on one trajectory; training/README.md, "Ablations")
            ema_decay=0.99,
            warmup_steps=self.steps["warmup"],
            log_grad_norms=self.diagnose,
        )

    def stage4_onestep(self) -> None:
        """Warm-up, then segmented Diff-Instruct (resuming the warm-up's checkpoint), and the warm-up-only control
        trained for the same compute (CPU time on a CPU: ``OneStepTrainer.clock``)."""
        w, d, work = self.steps["warmup"], self.steps["diff_instruct"], self.dir
        one = self.onestep_config()
        cfg_one = {**self.common("onestep", w + d), **one, "checkpoint_every": w, "checkpoint_limit": 3}
        stage(onestep, work, "onestep_warmup", {**cfg_one, "max_steps": w})
        shutil.copytree(work / "onestep" / "final", work / "onestep_warmup_final")
        shutil.copy(work / "onestep" / "timing.json", work / "onestep_warmup_timing.json")
        t = stage(onestep, work, "onestep", cfg_one).timing
        ratio = (t["diff_instruct_seconds"] / t["diff_instruct_steps"]) / max(1e-9, self._warmup_seconds_per_step())
        control_steps = w + int(round(d * ratio))
        checkpoint = f"step_{w:07d}"
        shutil.copytree(
            work / "onestep" / "checkpoints" / checkpoint, work / "onestep_fm_only" / "checkpoints" / checkpoint
        )
        control = {
            **self.common("onestep_fm_only", control_steps),
            **one,
            "warmup_steps": control_steps,
            "checkpoint_every": control_steps,
        }
        stage(onestep, work, "onestep_fm_only", control)
        self.equal_compute = {"equal_compute_control_steps": control_steps, "diff_instruct_cost_ratio": ratio}

    def _warmup_seconds_per_step(self) -> float:
        timing = json.loads((self.dir / "onestep" / "timing.json").read_text())
        if timing.get("warmup_steps"):
            return timing["warmup_seconds"] / timing["warmup_steps"]
        # the warm-up ran in the first invocation; its timing.json was overwritten, so read the copy kept beside it
        first = json.loads((self.dir / "onestep_warmup_timing.json").read_text())
        return first["warmup_seconds"] / first["warmup_steps"]

    def stage4c_lora_gan(self) -> None:
        """The paper's section-4 fine-tune: a very-low-rank LoRA on stage 4's one-step UNet with a Projected-GAN loss
        (and stage 4's feature matching at its end weight), merged back into plain weights."""
        one = self.onestep_config()
        config = {
            **self.common("lora_gan", self.steps["lora_gan"]),
            **one,
            **LORA_GAN,
            "student": str(self.dir / "onestep" / "final" / "unet"),
            "fm_weight": one["fm_weight_end"],
        }
        stage(lora_gan, self.dir, "lora_gan", config)

    def stage5_onestep_controlnet(self) -> None:
        steps = self.steps["cn_warmup"] + self.steps["cn_diff_instruct"]
        config = {
            **self.common("onestep_controlnet", steps),
            **self.onestep_config(),
            "data": self.data("sketches"),  # half of the prompts neutral (sketch mode's)
            "student": self.onestep_unet,
            "warmup_steps": self.steps["cn_warmup"],
            "student_controlnet": str(self.dir / "controlnet" / "final" / "controlnet"),
            "embedding_channels": [16, 32, 64],
            "teacher_controlnet": str(self.givens.teacher_controlnet),
            "control_kind": CONTROL_KIND,
            # the paper: controls extracted from the teacher's samples, feature matching towards the very sample each
            # control came from, and a portion of the noise re-initialised
            "control_source": "teacher",
            "control_target": "source",
            "fresh_noise_fraction": 0.5,
            "num_pairs": max(32, int(1024 * self.scale)),  # one ODE solve per pair (the control's source): more layouts
            "pairs_path": str(self.dir / "cache" / "pairs_controlnet.pt"),
            # the paper's feature matching alone: a latent MSE towards the source image (not determined by the noise)
            # pulls towards its mean, which costs edge F1 (0.510 -> 0.473 at weight 0.3) for a better tiny-decoder
            # FD (172 -> 63); training/README.md, "Fifth sweep"
            "latent_weight": 0.0,
        }
        stage(onestep_controlnet, self.dir, "onestep_controlnet", config)

    def stage2_decoder_onestep(self) -> None:
        """Stage 2 again, on what the export decodes: stage 2's decoder fine-tuned with the one-step student's samples
        in its latent pool, half of them with its ControlNet.  Those lie partly outside the teacher's scale, where the
        tiny decoder's input clamp renders them worse than the teacher decoder: ControlNet tiny-decoder FD 87 -> 28 /
        37 (two seeds), PSNR unchanged; L1 only, at a lower rate (training/README.md, "Sixth sweep")."""
        work = self.dir
        shutil.copytree(work / "decoder" / "cache", work / "decoder_onestep" / "cache")  # the same teacher samples
        config = {
            **self.common("decoder_onestep", self.steps["decoder_onestep"]),
            **self.decoder_config(),
            "tiny_vae": str(work / "decoder" / "final" / "vae"),
            "lr": 3e-4,
            "gan_weight": 0.0,
            "onestep_samples": max(16, int(1024 * self.scale)),
            "onestep_unet": self.onestep_unet,
            "onestep_controlnet": str(work / "onestep_controlnet" / "final" / "controlnet"),
            "onestep_control_share": 0.5,
            "control_kind": CONTROL_KIND,
        }
        stage(distill_decoder, work, "decoder_onestep", config)

    def stage6_export(self) -> None:
        config = dict(
            output_dir=str(self.dir / "export"),
            teacher=str(self.givens.teacher),
            unet=self.onestep_unet,
            tiny_vae=str(self.dir / "decoder_onestep" / "final" / "vae"),
            controlnet=str(self.dir / "onestep_controlnet" / "final" / "controlnet"),
        )
        stage(export, self.dir, "export", config)
