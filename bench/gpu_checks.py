"""The checks of bench/gpu.sh that are not benchmarks of their own.

    python bench/gpu_checks.py env --out DIR       # versions, then every import the run needs; exit 1 if one fails
    python bench/gpu_checks.py nvjpeg --out DIR    # the nvJPEG self-test at the largest batch (CUDA only)
    python bench/gpu_checks.py summary --out DIR   # the run's figures against the targets (docs: bench/README.md)

Each writes `DIR/<check>.json` and prints what it found.  `env` runs first: a missing package stops the whole run
with a non-zero status instead of letting later steps fail one by one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# everything bench/gpu.sh imports, directly or in the app it starts (Gradio is not mounted there: --gradio false)
MODULES = ("torch", "numpy", "PIL", "cv2", "simplejpeg", "diffusers", "transformers", "huggingface_hub", "accelerate",
           "peft", "safetensors", "pydantic", "fastapi", "starlette", "uvicorn", "websockets", "httpx", "psutil",
           "prometheus_client", "sdxs", "sdxs.pipeline", "server.state", "server.nvjpeg", "server.routes", "app",
           "bench.pipeline", "bench.server", "bench.timing")
OPTIONAL = ("torchvision",)  # nvJPEG; without it JPEG frames are decoded on the CPU (said, not failed)


def check_env(out: Path) -> int:
    found: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in MODULES + OPTIONAL:
        try:
            module = importlib.import_module(name)
            found[name] = str(getattr(module, "__version__", "ok"))
        except Exception as exc:  # noqa: BLE001 - reported, and the run stops on a required one
            (failed if name in MODULES else found)[name] = f"FAILED: {type(exc).__name__}: {exc}"
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "modules": found, "failed": failed}
    try:
        import torch

        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception as exc:  # noqa: BLE001
        info["torch_error"] = repr(exc)
    for name, version in {**found, **failed}.items():
        print(f"  {name:<18} {version}")
    print(f"  python {info['python']}, CUDA {info.get('cuda')}, GPU {info.get('gpu')}")
    write(out, "env", info)
    if failed:
        print(f"imports failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def check_nvjpeg(out: Path, batch: int) -> int:
    import torch

    if not torch.cuda.is_available():
        print("  skipped: no CUDA device (the dry run)")
        write(out, "nvjpeg", {"skipped": "no CUDA device"})
        return 0
    from server.nvjpeg import NvJpeg

    gpu = NvJpeg.create("cuda", torch.cuda.Stream())
    start = time.perf_counter()
    result = gpu.self_test(batch).as_dict()
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["decode"] = gpu.status()
    print("  " + json.dumps(result))
    write(out, "nvjpeg", result)
    return 0 if result["passed"] else 1


def summary(out: Path) -> int:
    """The targets of the GPU run (bench/README.md), from the JSON files of this run's folder."""
    server = _load(out, "server-*.json")
    pipeline = _load(out, "pipeline-*.json")
    rows = []
    cells = {(c["mode"], c["clients"]): c for c in (server or {}).get("cells", [])}
    one = cells.get(("image", 1))
    if one:
        rows.append(("1 image stream: generated FPS >= 100", one["generated_fps"], one["generated_fps"] >= 100))
        rows.append(("1 image stream: p50 ms <= 20", one["latency_ms"]["p50"],
                     one["latency_ms"]["p50"] is not None and one["latency_ms"]["p50"] <= 20))
        rows.append(("1 image stream: reused 0 (valid cell)", one["reused"], one["valid"]))
    piped = {(r["mode"], r["batch"]): r for r in (pipeline or {}).get("rows", []) if r["pipeline"] == "ours"}
    for mode in ("image", "sketch"):
        cell, row = cells.get((mode, 16)), piped.get((mode, 16))
        if cell:
            rows.append((f"16 {mode} streams: generated frames/s >= 500", cell["generated_fps"],
                         cell["generated_fps"] >= 500))
        if cell and row:
            ratio = cell["generated_fps"] / row["fps"]
            rows.append((f"16 {mode} streams / pipeline at batch 16 >= 0.9", round(ratio, 3), ratio >= 0.9))
    for mode in ("text", "image", "sketch"):
        row = piped.get((mode, 1))
        if row:
            rows.append((f"{mode} batch 1: ms per frame <= 4", round(row["per_frame_ms"], 3),
                         row["per_frame_ms"] <= 4))
            rows.append((f"{mode} batch 1: outside forwards <= 10%", round(row["outside_pct"], 1),
                         row["outside_pct"] <= 10))
    for name, value, met in rows:
        print(f"  {name:<48} {value!s:>10}  {'met' if met else 'NOT met'}")
    if not rows:
        print("  no figures: the benchmark steps wrote nothing")
    write(out, "summary", {"targets": [{"target": n, "value": v, "met": bool(m)} for n, v, m in rows]})
    return 0


def _load(out: Path, pattern: str) -> dict | None:
    files = sorted(out.glob(pattern))
    return json.loads(files[-1].read_text()) if files else None


def write(out: Path, name: str, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["env", "nvjpeg", "summary"])
    parser.add_argument("--out", type=Path, required=True, help="the run's results folder")
    parser.add_argument("--batch", type=int, default=16, help="nvjpeg: frames in the self-test's batch")
    args = parser.parse_args(argv)
    if args.check == "env":
        return check_env(args.out)
    if args.check == "nvjpeg":
        return check_nvjpeg(args.out, args.batch)
    return summary(args.out)


if __name__ == "__main__":
    raise SystemExit(main())
