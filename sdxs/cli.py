"""``python -m sdxs``: info, make-tiny, make-random and generate."""

from __future__ import annotations

import argparse
import sys

from sdxs.configs import TEACHERS, VARIANTS
from sdxs.loading import AUTO, DEFAULT_MODEL


def _info(args) -> int:
    names = [args.variant] if args.variant else [*VARIANTS, *TEACHERS]
    print(f"counting the parameters of {len(names)} models on the meta device (no weights, no download)...",
          flush=True)
    from sdxs.inventory import component_parameters  # diffusers + transformers: about 10 s to import

    print(f"{'model':<22}{'component':<15}{'parameters':>15}", flush=True)
    for name in names:
        for component, count in component_parameters(name).items():
            print(f"{name:<22}{component:<15}{count:>15,}  ({count / 1e6:.1f}M)", flush=True)
    return 0


def _make_tiny(args) -> int:
    from sdxs.tiny import write_tiny_model

    print(write_tiny_model(args.dir, seed=args.seed))
    return 0


def _make_random(args) -> int:
    from sdxs.tiny import write_random_variant

    print(write_random_variant(args.dir, args.variant, seed=args.seed))
    return 0


def _generate(args) -> int:
    from pydantic import ValidationError

    from sdxs.errors import InvalidRequest, WeightsUnavailable
    from sdxs.params import GenerationParams

    try:  # everything that can be checked without the model is checked before loading it
        params = GenerationParams(prompt=args.prompt, mode=args.mode or ("image" if args.image else "text"),
                                  seed=args.seed, strength=args.strength, control_scale=args.control_scale,
                                  style=args.style)
        if params.uses_image and not args.image:
            raise InvalidRequest("image", f"--mode {params.mode.value} needs --image PATH")
        image = _read_image(args.image) if args.image else None
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from sdxs.pipeline import GenerationRequest, SDXSPipeline

        print(f"loading {args.model}...", file=sys.stderr, flush=True)
        pipe = SDXSPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype, size=args.size,
                                            controlnet="auto" if params.uses_controlnet else None,
                                            adapters={args.style: args.style} if args.style else None)
        pipe([GenerationRequest(params, image)])[0].save(args.out)
    except ValidationError as error:
        first = error.errors()[0]
        print(f"error: --{'-'.join(str(p) for p in first['loc'])}: {first['msg']}", file=sys.stderr)
        return 2
    except (WeightsUnavailable, InvalidRequest, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


def _read_image(path: str):
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # the pixels read, the file closed
    return image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdxs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="per-component parameter counts")
    info.add_argument("variant", nargs="?", choices=[*VARIANTS, *TEACHERS], help="one model (default: all)")
    info.set_defaults(run=_info)
    tiny = sub.add_parser("make-tiny", help="write a small random-weight model (tests, offline development)")
    tiny.add_argument("dir", help="folder to write")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(run=_make_tiny)
    rand = sub.add_parser("make-random", help="write a variant at its real shapes with random weights (benchmarks)")
    rand.add_argument("dir", help="folder to write")
    rand.add_argument("--variant", default="sdxs-512-dreamshaper", choices=list(VARIANTS), help="which variant")
    rand.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    rand.set_defaults(run=_make_random)
    gen = sub.add_parser("generate", help="generate one image (one step, guidance 0: no negative prompt)")
    gen.add_argument("--prompt", required=True, help="what to generate")
    gen.add_argument("--image", help="input image file (PNG, JPEG, WebP) for the image, sketch and edges modes")
    gen.add_argument("--mode", choices=["text", "image", "sketch", "edges"],
                     help="text: no input image; image: image to image; sketch: dark strokes on light paper through "
                          "the sketch ControlNet; edges: Canny edges of a photo through it (default: image when "
                          "--image is given, else text)")
    gen.add_argument("--model", default=AUTO, help=f"'{AUTO}' ({DEFAULT_MODEL}, or 'mini' offline), a Hub id, a local "
                     "diffusers folder, 'mini' (the shipped miniature, 32x32 digits) or 'tiny' (random weights)")
    gen.add_argument("--seed", type=int, default=0, help="same seed and input give the same image (default 0)")
    gen.add_argument("--strength", type=float, default=0.5,
                     help="image mode: how far from the input, 0.02-1 (1 ignores it; default 0.5)")
    gen.add_argument("--control-scale", type=float, default=0.8,
                     help="sketch and edges modes: how closely to follow the lines, 0-1 (default 0.8)")
    gen.add_argument("--style", default=None, help="a PEFT LoRA style (Hub id or folder), e.g. "
                     "IDKiro/sdxs-512-dreamshaper-anime")
    gen.add_argument("--size", type=int, default=None, help="square size, a multiple of 64 (default: the model's)")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                     help="auto: float16 on CUDA; on a CPU bfloat16 where it is measured faster, else float32")
    gen.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (default: PyTorch's choice)")
    gen.add_argument("--out", required=True, help="output image file (.png, .jpg, .webp)")
    gen.set_defaults(run=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
