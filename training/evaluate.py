"""COCO-style evaluation of a one-step model: FID against reference images and CLIP score against the captions.

    python -m training.evaluate --model IDKiro/sdxs-512-dreamshaper --captions coco_val_captions.txt \
        --reference /data/coco/val2017 --out runs/eval --n 5000

Generates one image per caption (text mode, one step, seeds ``seed + i``) with ``sdxs.SDXSPipeline`` into
``--out/images`` (PNG, the model's size), then scores the folder:

* FID with clean-fid (``pip install clean-fid``; "clean" resizing, Inception weights downloaded on first use);
* CLIP score with open_clip (``pip install open_clip_torch``; ``--clip-model``/``--clip-pretrained``, weights
  downloaded on first use): 100 * max(cos(image, caption), 0), averaged, as in the literature.

``--metrics`` picks which (``fid,clip``, ``fid``, ``clip`` or ``none``: generate only).  Without a package or its
weights the command stops with what to install or download; the images stay, so scoring can be rerun with
``--skip-generation``.  Captions: a ``.txt`` file (one per line) or ``.jsonl`` with a ``caption`` field.  Writes
``--out/scores.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

METRICS = ("fid", "clip")


class MetricUnavailable(RuntimeError):
    """A metric's package or weights are missing; the message says what to install or download."""


def read_captions(path: str | Path, n: int) -> list[str]:
    """The first ``n`` non-empty captions of a .txt (one per line) or .jsonl (``caption`` field) file."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    captions = [json.loads(line)["caption"] for line in lines] if path.suffix == ".jsonl" else lines
    if not captions:
        raise ValueError(f"{path}: no captions")
    return captions[:n]


def generate(pipe, captions: list[str], out: Path, seed: int, batch: int) -> list[Path]:
    """One text-mode image per caption into ``out`` (``00000.png`` ...), ``batch`` per pipeline call."""
    from sdxs import GenerationParams, GenerationRequest

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(captions), batch):
        chunk = captions[start : start + batch]
        requests = [
            GenerationRequest(GenerationParams(prompt=caption[:1000], mode="text", seed=seed + start + i))
            for i, caption in enumerate(chunk)
        ]
        for i, image in enumerate(pipe(requests)):
            path = out / f"{start + i:05d}.png"
            image.save(path)
            paths.append(path)
    return paths


def fid_score(images: Path, reference: Path) -> float:
    """clean-fid's FID between two image folders."""
    try:
        from cleanfid import fid
    except ImportError:
        raise MetricUnavailable("FID needs clean-fid: pip install clean-fid") from None
    try:
        return float(fid.compute_fid(str(images), str(reference), mode="clean"))
    except OSError as exc:  # the Inception weights could not be downloaded
        raise MetricUnavailable(f"clean-fid could not load its Inception weights ({exc}); run it once online") from None


def clip_score(images: list[Path], captions: list[str], model_name: str, pretrained: str, batch: int) -> float:
    """100 * mean max(cos(image, caption), 0) with an open_clip model."""
    try:
        import open_clip
    except ImportError:
        raise MetricUnavailable("the CLIP score needs open_clip: pip install open_clip_torch") from None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except (OSError, RuntimeError) as exc:
        raise MetricUnavailable(
            f"open_clip could not load {model_name} ({pretrained}): {exc}; download the weights once online"
        ) from None
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            pixels = torch.stack([preprocess(_rgb(p)) for p in images[start : start + batch]])
            a = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
            b = torch.nn.functional.normalize(
                model.encode_text(tokenizer(captions[start : start + batch])).float(), dim=-1
            )
            scores.append(100 * (a * b).sum(-1).clamp(min=0))
    return float(torch.cat(scores).mean())


def parse_metrics(text: str) -> tuple[str, ...]:
    metrics = tuple(m for m in text.split(",") if m and m != "none")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {sorted(unknown)}: choose from fid, clip, none")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hub id or folder for sdxs.SDXSPipeline.from_pretrained")
    parser.add_argument("--captions", required=True, help=".txt (one caption per line) or .jsonl (caption field)")
    parser.add_argument("--reference", help="folder of reference images for FID (e.g. COCO val2017)")
    parser.add_argument("--out", required=True, help="output folder: images/ and scores.json")
    parser.add_argument("--n", type=int, default=5000, help="how many captions (the first n)")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--batch", type=int, default=16, help="images per pipeline call and per CLIP batch")
    parser.add_argument("--metrics", type=parse_metrics, default=METRICS, help="fid,clip | fid | clip | none")
    parser.add_argument("--clip-model", default="ViT-g-14", help="open_clip model name")
    parser.add_argument("--clip-pretrained", default="laion2b_s12b_b42k", help="open_clip pretrained tag")
    parser.add_argument("--device", default="auto", help="pipeline device (auto, cpu, cuda)")
    parser.add_argument("--skip-generation", action="store_true", help="score the images already in --out/images")
    args = parser.parse_args(argv)
    if "fid" in args.metrics and not args.reference:
        parser.error("FID needs --reference (a folder of real images); or --metrics clip")
    if args.n < 1 or args.batch < 1:
        parser.error("--n and --batch must be at least 1")
    out = Path(args.out)
    captions = read_captions(args.captions, args.n)
    images_dir = out / "images"
    started = time.time()
    if args.skip_generation:
        images = sorted(images_dir.glob("*.png"))[: len(captions)]
        if len(images) < len(captions):
            raise SystemExit(f"{images_dir} holds {len(images)} images for {len(captions)} captions; generate first")
    else:
        from sdxs import SDXSPipeline

        pipe = SDXSPipeline.from_pretrained(args.model, device=args.device, controlnet=None)
        images = generate(pipe, captions, images_dir, args.seed, args.batch)
    scores: dict = {
        "model": args.model,
        "n": len(captions),
        "seed": args.seed,
        "generate_s": round(time.time() - started),
    }
    try:
        if "fid" in args.metrics:
            scores["fid"] = fid_score(images_dir, Path(args.reference))
        if "clip" in args.metrics:
            scores["clip_score"] = clip_score(images, captions, args.clip_model, args.clip_pretrained, args.batch)
            scores["clip_model"] = f"{args.clip_model}/{args.clip_pretrained}"
    except MetricUnavailable as exc:
        raise SystemExit(
            f"error: {exc} (the {len(images)} images are in {images_dir}; rerun with --skip-generation)"
        ) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores, indent=2))
    return scores


def _rgb(path):
    """The image file at `path` as a PIL RGB image, its file closed."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


if __name__ == "__main__":
    main()
