"""Scoring the miniature's generators on one split of the digits: FD and class accuracy in the digit classifier,
edge F1 of ControlNet samples, decoder PSNR.

The split is always explicit: ``"validation"`` for every setting choice, sweep and tool, ``"test"`` only for the
claims table of ``training.mini.run``.  Each split has its own evaluation noise (``NOISE_SEEDS``), so a setting
chosen on validation never saw the test noise either.  Latents are UNet-space (N, 4, 8, 8); pixels handed to the
classifier are (N, 3, 32, 32) in [0, 1] on the CPU; the generators run on ``device``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from training.control import extract_control
from training.images import make_grid, save_image
from training.mini import data as mdata
from training.mini.metrics import classify, edge_f1, frechet_distance, psnr
from training.mini.prepare import encode
from training.models import load_controlnet, load_part, load_text_encoder, load_tiny_vae
from training.sampling import ddim_sample, onestep_sample
from training.stages.common import decode_unet_samples

GUIDANCE = 2.0
NOISE_SEEDS = {"validation": 22_345, "test": 12_345}  # evaluation noise; spread.py adds 1, 2, 3 ... to draw more
CHUNK = 250  # samples per generator call
ONE_STEP = "one-step student, after segmented Diff-Instruct"
SKETCH = f"strokes@{mdata.SKETCH_PEN_WIDTH}"  # the sketch rows' controls: the split's digits drawn with the page's pen
SKETCH_ROW = "sketch: one-step student + one-step ControlNet"
FINAL = "one-step student, final (after the LoRA + Projected-GAN fine-tune)"


def final_unet_dir(seed_dir: Path) -> Path:
    """The seed's final one-step UNet (stage 4c's, LoRA merged): what stage 5 trains on and the export ships."""
    return seed_dir / "lora_gan" / "final"


def tiny_decoders(seed_dir: Path) -> dict[str, Path]:
    """A seed's tiny decoders that exist: ``tiny_decoder`` is the one the export ships (stage 2's, fine-tuned on the
    one-step model's latents), ``stage2_decoder`` stage 2's own where a fine-tuned one exists."""
    stage2, fine_tuned = seed_dir / "decoder" / "final" / "vae", seed_dir / "decoder_onestep" / "final" / "vae"
    if fine_tuned.is_dir():
        return {"tiny_decoder": fine_tuned, "stage2_decoder": stage2}
    return {"tiny_decoder": stage2} if stage2.is_dir() else {}


class Evaluator:
    """Fixed-noise samples for ``eval_per_class`` prompts per class, scored against one split's real digits."""

    def __init__(
        self,
        teacher_dir: Path,
        classifier,
        digits: mdata.Digits,
        *,
        split: str,
        eval_per_class: int = 100,
        tiny_decoder_dirs: dict[str, Path] | None = None,
        noise_offset: int = 0,
        device: str | torch.device = "cpu",
        multistep_steps: int = 25,
    ):
        if split not in ("validation", "test"):
            raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
        self.split, self.eval_per_class, self.device = split, eval_per_class, torch.device(device)
        self.multistep_steps = multistep_steps  # the "25 steps" rows' DDIM steps (fewer only in smoke runs)
        self.held_out, self.held_out_labels = digits.split(split)
        self.teacher = load_part(teacher_dir, "unet").to(self.device)
        self.vae = load_part(teacher_dir, "vae").to(self.device)
        self.scheduler = load_part(teacher_dir, "scheduler")
        # every row is also scored through the tiny decoder the export ships and, where it differs, stage 2's own
        self.tiny_vaes = {k: load_tiny_vae(str(p)).to(self.device) for k, p in (tiny_decoder_dirs or {}).items()}
        text = load_text_encoder(teacher_dir, self.device)
        self.labels = torch.arange(10).repeat_interleave(eval_per_class)
        self.embeds = text(mdata.captions(self.labels))
        self.neutral = text([mdata.NEUTRAL_PROMPT]).expand(len(self.labels), -1, -1)  # sketch mode's prompt
        self.uncond = text([""])
        gen = torch.Generator().manual_seed(NOISE_SEEDS[split] + noise_offset)
        self.noise = torch.randn((len(self.labels), 4, 8, 8), generator=gen).to(self.device)
        self.classifier = classifier
        self.real_features, _ = classify(classifier, (self.held_out + 1) / 2)
        self.train_features, _ = classify(classifier, (digits.train + 1) / 2)
        self.ac = self.scheduler.alphas_cumprod.to(self.device)
        self.samples: dict[str, torch.Tensor] = {}

    def floor(self) -> float:
        """FD between the train digits and the split's: what a perfect generator would score."""
        return frechet_distance(self.train_features, self.real_features)

    def psnr_images(self, photos: torch.Tensor) -> torch.Tensor:
        """The images decoder PSNR is measured on, (N, 3, 32, 32) in [-1, 1]: the split's digits and ``photos``, at
        most ``10 * eval_per_class`` of each (all of them at the default 100 per class; fewer only in smoke runs)."""
        n = 10 * self.eval_per_class
        return torch.cat([self.held_out[:n], photos[:n]])

    def controls(self, kind: str = "canny") -> torch.Tensor:
        """ControlNet evaluation controls: ``kind`` (``training.control``; Canny edges, or ``SKETCH`` strokes) of the
        split's digits, ``eval_per_class`` per class in the prompts' order (the samples get fresh noise and a prompt
        of the same class, or the neutral prompt), (N, 3, 32, 32) in [0, 1]."""
        control = extract_control(self.held_out, kind)
        order = []
        for k in range(10):
            of_class = torch.nonzero(self.held_out_labels == k).flatten()  # ~27 per class: reused, with new noise
            order.append(of_class.repeat(-(-self.eval_per_class // len(of_class)))[: self.eval_per_class])
        return control[torch.cat(order)]

    @torch.no_grad()
    def multistep(self, unet, steps=None, guidance=GUIDANCE, controlnet=None, control=None, neutral=False):
        """Latents of ``unet`` (with ``controlnet`` on ``control``) in ``steps`` DDIM steps, the digit prompts (or,
        with ``neutral``, sketch mode's neutral prompt)."""
        steps = steps or self.multistep_steps
        return torch.cat(
            [
                ddim_sample(unet, self.scheduler.config, n, e, self.uncond, steps, guidance, controlnet, c)
                for n, e, c in self._chunks(control, neutral)
            ]
        )

    @torch.no_grad()
    def onestep(self, unet, guidance=1.0, controlnet=None, control=None, neutral=False) -> torch.Tensor:
        """One-step latents at t=999, prompts as ``multistep``'s."""
        return torch.cat(
            [
                onestep_sample(
                    unet, n, e, self.ac, 999, controlnet=controlnet, control=c, uncond=self.uncond, guidance=guidance
                )
                for n, e, c in self._chunks(control, neutral)
            ]
        )

    def _chunks(self, control, neutral: bool = False):
        controls = control.to(self.device).split(CHUNK) if control is not None else [None] * len(self.noise)
        embeds = self.neutral if neutral else self.embeds
        return zip(self.noise.split(CHUNK), embeds.split(CHUNK), controls)

    def decode(self, vae, latents: torch.Tensor) -> torch.Tensor:
        """UNet-space latents (N, 4, 8, 8) -> pixels (N, 3, 32, 32) in [0, 1] on the CPU, through ``vae``."""
        with torch.no_grad():
            return torch.cat([decode_unet_samples(vae, c.to(self.device)).float().cpu() for c in latents.split(CHUNK)])

    def score(self, name: str, latents: torch.Tensor) -> dict:
        """FD and accuracy of ``latents`` through the teacher decoder and (``fd_<key>``) every tiny decoder."""
        pixels = self.decode(self.vae, latents)
        self.samples[name] = pixels
        result = self._classify(pixels)
        for key, vae in self.tiny_vaes.items():
            tiny = self._classify(self.decode(vae, latents))
            result.update({f"fd_{key}": tiny["fd"], f"accuracy_{key}": tiny["accuracy"]})
        return result

    def _classify(self, pixels: torch.Tensor) -> dict:
        feats, preds = classify(self.classifier, pixels)
        return {
            "fd": frechet_distance(feats, self.real_features),
            "accuracy": float((torch.from_numpy(preds) == self.labels).float().mean()),
        }

    def load_unet(self, path: Path):
        """A UNet folder (``.../unet``) or a pipeline-style folder holding ``unet/``, on the evaluator's device."""
        from diffusers import UNet2DConditionModel

        path = Path(path)
        unet = load_part(path, "unet") if (path / "unet").is_dir() else UNet2DConditionModel.from_pretrained(path)
        return unet.to(self.device)

    def load_controlnet(self, path: Path):
        return load_controlnet(str(path)).to(self.device)


def with_and_without_controlnet(ev: Evaluator, unet, controlnet, tiny=None) -> dict:
    """One-step samples of ``unet`` with and without ``controlnet`` on the evaluation controls, scored; edge F1 of the
    teacher decodes or, with ``tiny``, of ``tiny``'s decodes (``edge_f1_tiny_decoder``)."""
    control = ev.controls()
    result = {}
    for key, kwargs in (("with_controlnet", dict(controlnet=controlnet, control=control)), ("without", {})):
        latents = ev.onestep(unet, **kwargs)
        scored = ev.score(key, latents)
        if tiny is None:
            result[key] = {"edge_f1": edge_f1(ev.samples[key], control), **scored}
        else:
            result[key] = {"edge_f1_tiny_decoder": edge_f1(ev.decode(tiny, latents), control), **scored}
    return result


def generation_rows(ev: Evaluator, seed_dir: Path) -> dict:
    """Text-to-image rows: the teacher, the stage-1 students at 25 steps, the stage-4 one-step students and the final
    one (stage 4c)."""
    unet = ev.load_unet
    return {
        "teacher, 25 steps": ev.score("teacher_25", ev.multistep(ev.teacher)),
        "teacher, 1 step": ev.score("teacher_1", ev.onestep(ev.teacher, guidance=GUIDANCE)),
        "student KD, 25 steps": ev.score("kd_25", ev.multistep(unet(seed_dir / "unet_kd" / "final" / "unet"))),
        "student no KD, 25 steps": ev.score("nokd_25", ev.multistep(unet(seed_dir / "unet_nokd" / "final" / "unet"))),
        "one-step student, after warm-up": ev.score("warmup_1", ev.onestep(unet(seed_dir / "onestep_warmup_final"))),
        ONE_STEP: ev.score("onestep_1", ev.onestep(unet(seed_dir / "onestep" / "final"))),
        "one-step student, warm-up only (equal compute)": ev.score(
            "fm_only_1", ev.onestep(unet(seed_dir / "onestep_fm_only" / "final"))
        ),
        FINAL: ev.score("final_1", ev.onestep(unet(final_unet_dir(seed_dir)))),
    }


def decoder_scores(ev: Evaluator, train_digits: torch.Tensor, photos: torch.Tensor) -> tuple[dict, dict]:
    """PSNR of every tiny decoder and of the bilinear baseline against the teacher decoder on the split's digits and
    ``photos``; also returns the decodes {"reference", "bilinear", <tiny key>} for the grids."""
    latents = encode(ev.vae, ev.psnr_images(photos).to(ev.device))
    reference = ev.decode(ev.vae, latents)
    decodes = {key: ev.decode(vae, latents) for key, vae in ev.tiny_vaes.items()}
    fit = train_digits[: min(600, 30 * ev.eval_per_class)]  # 600 train digits; fewer only in smoke runs
    bilinear = bilinear_baseline(ev.vae, encode(ev.vae, fit.to(ev.device)), latents).cpu()
    scores = {
        **{f"{key}_psnr": psnr(px, reference) for key, px in decodes.items()},
        "bilinear_psnr": psnr(bilinear, reference),
        "tiny_decoder_params": sum(p.numel() for p in ev.tiny_vaes["tiny_decoder"].decoder.parameters()),
        "teacher_decoder_params": sum(p.numel() for p in ev.vae.decoder.parameters()),
    }
    return scores, {"reference": reference, "bilinear": bilinear, **decodes}


def controlnet_rows(ev: Evaluator, seed_dir: Path, teacher_controlnet: Path) -> dict:
    """ControlNet rows on the split's controls: edge F1 besides FD and accuracy."""
    control = ev.controls()
    one_unet, kd_unet = ev.load_unet(final_unet_dir(seed_dir)), ev.load_unet(seed_dir / "unet_kd" / "final")
    student_cn = ev.load_controlnet(seed_dir / "onestep_controlnet" / "final" / "controlnet")
    distilled_cn = ev.load_controlnet(seed_dir / "controlnet" / "final" / "controlnet")
    teacher_cn = ev.load_controlnet(teacher_controlnet)
    generators = {
        "one-step student without ControlNet": lambda: ev.onestep(one_unet),
        "one-step student + one-step ControlNet (stage 5)": lambda: ev.onestep(
            one_unet, controlnet=student_cn, control=control
        ),
        "one-step student + KD ControlNet (stage 3 only)": lambda: ev.onestep(
            one_unet, controlnet=distilled_cn, control=control
        ),
        "KD student + KD ControlNet, 25 steps": lambda: ev.multistep(kd_unet, controlnet=distilled_cn, control=control),
        "teacher + teacher ControlNet, 25 steps": lambda: ev.multistep(
            ev.teacher, controlnet=teacher_cn, control=control
        ),
    }
    rows = {}
    for name, sample in generators.items():
        key = "cn_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        scored = ev.score(key, sample())
        rows[name] = {"edge_f1": edge_f1(ev.samples[key], control), **scored}
    return rows


def sketch_rows(ev: Evaluator, seed_dir: Path, teacher_controlnet: Path) -> dict:
    """Sketch mode as the page serves it: the split's digits redrawn as pen strokes of the page's default width
    (``SKETCH``) with the neutral prompt, so only the drawing tells the digit; accuracy is the share drawn back as
    the sketched digit."""
    control = ev.controls(SKETCH)
    one_unet = ev.load_unet(final_unet_dir(seed_dir))
    student_cn = ev.load_controlnet(seed_dir / "onestep_controlnet" / "final" / "controlnet")
    generators = {
        SKETCH_ROW: lambda: ev.onestep(one_unet, controlnet=student_cn, control=control, neutral=True),
        "sketch: one-step student without ControlNet": lambda: ev.onestep(one_unet, neutral=True),
        "sketch: teacher + teacher ControlNet, 25 steps": lambda: ev.multistep(
            ev.teacher, controlnet=ev.load_controlnet(teacher_controlnet), control=control, neutral=True
        ),
    }
    return {name: ev.score("sk_" + re.sub(r"[^a-z0-9]+", "_", name.lower()), sample())
            for name, sample in generators.items()}  # fmt: skip


def evaluate_seed(ev: Evaluator, seed_dir: Path, teacher_controlnet: Path, digits: mdata.Digits, photos, grids=None):
    """One seed's whole table on ``ev``'s split: {"generation", "decoder", "controlnet", "sketch"}; sample grids
    into ``grids`` when given."""
    generation = {"fd_floor_train_vs_held_out": ev.floor(), "rows": generation_rows(ev, seed_dir)}
    decoder, decodes = decoder_scores(ev, digits.train, photos)
    controlnet = controlnet_rows(ev, seed_dir, teacher_controlnet)
    sketch = sketch_rows(ev, seed_dir, teacher_controlnet)
    if grids is not None:
        save_grids(ev, Path(grids), decodes)
    return {"split": ev.split, "generation": generation, "decoder": decoder, "controlnet": controlnet,
            "sketch": sketch}  # fmt: skip


@torch.no_grad()
def bilinear_baseline(vae, train_latents, latents) -> torch.Tensor:
    """The cheapest decoder: a least-squares linear map latent channels -> RGB at latent resolution (fitted to the
    teacher decoder's output pooled to that resolution), then bilinear upsampling.  Pixels in [0, 1]."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    target = torch.nn.functional.avg_pool2d(decode_unet_samples(vae, train_latents), factor)
    ones = train_latents.new_ones(train_latents.numel() // 4, 1)
    x = torch.cat([train_latents.permute(0, 2, 3, 1).reshape(-1, 4), ones], 1)
    w = torch.linalg.lstsq(x.cpu(), target.permute(0, 2, 3, 1).reshape(-1, 3).cpu()).solution.to(latents.device)
    lat = torch.cat([latents.permute(0, 2, 3, 1), latents.new_ones(*latents.shape[:1], *latents.shape[2:], 1)], -1)
    small = (lat @ w).permute(0, 3, 1, 2)
    return torch.nn.functional.interpolate(small, scale_factor=factor, mode="bilinear", align_corners=False).clamp(0, 1)


def save_grids(ev: Evaluator, out: Path, decodes: dict) -> None:
    e = ev.eval_per_class
    pick = torch.arange(0, 10 * e, e)[:, None] + torch.arange(min(4, e))[None]  # up to 4 samples of each class
    for name, pixels in ev.samples.items():
        save_image(make_grid(pixels[pick.T.flatten()], nrow=10), out / f"{name}.png", scale=2)
    n = 10
    rows = [decodes["reference"][-n:], decodes["tiny_decoder"][-n:], decodes["bilinear"][-n:]]
    save_image(make_grid(torch.cat(rows), nrow=n), out / "decoder_teacher_tiny_bilinear.png", scale=2)
    save_image(make_grid(ev.controls()[pick.T.flatten()][:40], nrow=10), out / "controls.png", scale=2)
    save_image(make_grid(ev.controls(SKETCH)[pick.T.flatten()][:40], nrow=10), out / "sketch_controls.png", scale=2)


def check_export(path: Path) -> dict:
    """Load stage 6's export with diffusers' own pipeline (and ``SDXSPipeline``) and draw one picture."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path)
    image = pipe(
        "a photo of the digit 3",
        num_inference_steps=1,
        guidance_scale=0.0,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    result = {
        "diffusers_loads": True,
        "diffusers_image_shape": list(image.shape),
        "folders": sorted(p.name for p in path.iterdir()),
    }
    from sdxs import SDXSPipeline

    try:
        sdxs_pipe = SDXSPipeline.from_pretrained(str(path), controlnet="auto", device="cpu", dtype="float32")
        result["sdxs_loads"] = True
        result["sdxs_modes"] = [str(m) for m in sdxs_pipe.modes]
    except Exception as e:  # reported, not hidden: the table shows it
        result["sdxs_loads"] = f"failed: {type(e).__name__}: {e}"
    return result
