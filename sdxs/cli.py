"""``python -m sdxs``: info, make-tiny, make-random and generate."""

from __future__ import annotations

import argparse
import sys

from sdxs.configs import TEACHERS, VARIANTS
from sdxs.loading import DEFAULT_MODEL


def _info(args) -> int:
    from sdxs.inventory import component_parameters

    names = [args.variant] if args.variant else [*VARIANTS, *TEACHERS]
    print(f"{'model':<22}{'component':<15}{'parameters':>15}")
    for name in names:
        for component, count in component_parameters(name).items():
            print(f"{name:<22}{component:<15}{count:>15,}  ({count / 1e6:.1f}M)")
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
    from PIL import Image

    from sdxs import GenerationParams, GenerationRequest, InvalidRequest, SDXSPipeline, WeightsUnavailable

    try:
        params = GenerationParams(prompt=args.prompt, mode=args.mode or ("image" if args.image else "text"),
                                  seed=args.seed, strength=args.strength, control_scale=args.control_scale,
                                  style=args.style)
        image = Image.open(args.image) if args.image else None
        pipe = SDXSPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype, size=args.size,
                                            controlnet="auto" if params.uses_controlnet else None)
        pipe([GenerationRequest(params, image)])[0].save(args.out)
    except (WeightsUnavailable, InvalidRequest, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdxs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="per-component parameter counts")
    info.add_argument("variant", nargs="?", choices=[*VARIANTS, *TEACHERS])
    info.set_defaults(run=_info)
    tiny = sub.add_parser("make-tiny", help="write a small random-weight model (tests, offline development)")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=_make_tiny)
    rand = sub.add_parser("make-random", help="write a variant at its real shapes with random weights (benchmarks)")
    rand.add_argument("dir")
    rand.add_argument("--variant", default="sdxs-512-dreamshaper", choices=list(VARIANTS))
    rand.add_argument("--seed", type=int, default=0)
    rand.set_defaults(run=_make_random)
    gen = sub.add_parser("generate", help="generate one image (one step, guidance 0: no negative prompt)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--image", help="input image for image, sketch and edges modes")
    gen.add_argument("--mode", choices=["text", "image", "sketch", "edges"])
    gen.add_argument("--model", default=DEFAULT_MODEL, help="Hub id, local diffusers folder, or 'tiny'")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--strength", type=float, default=0.5)
    gen.add_argument("--control-scale", type=float, default=0.8)
    gen.add_argument("--style", default=None)
    gen.add_argument("--size", type=int, default=None, help="square size, a multiple of 64 (default: the model's)")
    gen.add_argument("--device", default="auto")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    gen.add_argument("--out", required=True)
    gen.set_defaults(run=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
