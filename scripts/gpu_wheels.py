"""Build `.whl/`: the wheels a GPU machine lacks for `bash bench/gpu.sh` (cp312, manylinux x86_64), on a CPU machine.

    python scripts/gpu_wheels.py            # .whl/ (git-ignored), then: device run with carry [".whl"]

The GPU machines (an image with torch + CUDA, torchvision, transformers, ...: bench/device_packages.txt) cannot reach a
registry.  This walks the app's runtime requirements from this environment's installed distributions (so the GPU run
uses the versions the suite passed with), drops the ones the image has (and torch, and Gradio: the GPU run serves no
Gradio UI), downloads each remaining one for CPython 3.12 on manylinux x86_64 without dependencies, then checks that
every requirement of every carried wheel is carried or in the image.  bench/gpu.sh installs them into /tmp/sdxs-site.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = ROOT / "bench" / "device_packages.txt"
PROJECT = "sdxs-realtime"
SKIP = {"torch", "gradio", "triton"}  # on the GPU machine already (torch) or not used by the GPU run (gradio)
ALWAYS = {"typing-extensions"}  # in the image, but pydantic needs a newer one than it may have
TARGET = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
          "platform_system": "Linux", "sys_platform": "linux", "platform_machine": "x86_64",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64", "manylinux_2_31_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages() -> set[str]:
    lines = DEVICE_PACKAGES.read_text().splitlines()
    return {canonical(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def requirements(dist: str, extras: tuple[str, ...] = ()) -> list[Requirement]:
    """`dist`'s requirements that apply on the GPU machine (markers evaluated for CPython 3.12 on Linux x86_64)."""
    out = []
    for text in metadata.requires(dist) or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**TARGET, "extra": e}) for e in ("", *extras)):
            out.append(req)
    return out


def closure(device: set[str]) -> dict[str, str]:
    """name -> installed version of every distribution the app needs at run time that the GPU machine lacks."""
    carried: dict[str, str] = {}
    todo = [r for r in requirements(PROJECT) if canonical(r.name) not in SKIP]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in seen or name in SKIP:
            continue
        seen.add(name)
        if name in device and name not in ALWAYS:
            continue
        carried[name] = metadata.version(req.name)
        todo += requirements(req.name, tuple(req.extras))
    return carried


def download(carried: dict[str, str], folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    for name, version in sorted(carried.items()):
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder),
                   f"{name}=={version}"]
        subprocess.run(command, check=True)


def check(folder: Path, device: set[str]) -> list[str]:
    """Requirements of the carried wheels that are neither carried nor in the image (should be none)."""
    wheels = list(folder.glob("*.whl"))
    names = {canonical(w.name.split("-")[0]) for w in wheels}
    missing = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            for line in archive.read(meta).decode().splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is not None and not req.marker.evaluate({**TARGET, "extra": ""}):
                    continue
                name = canonical(req.name)
                if name not in names and name not in device and name not in SKIP:
                    missing.append(f"{wheel.name} needs {req}")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / ".whl")
    parser.add_argument("--list", action="store_true", help="print what would be carried; download nothing")
    args = parser.parse_args(argv)
    device = device_packages()
    carried = closure(device)
    print("carried:", ", ".join(f"{n}=={v}" for n, v in sorted(carried.items())))
    if args.list:
        return 0
    for stale in args.out.glob("*.whl"):  # one version of each: two would stop the whole install there
        stale.unlink()
    download(carried, args.out)
    size = sum(w.stat().st_size for w in args.out.glob("*.whl")) / 2**20
    missing = check(args.out, device)
    print(f"{len(list(args.out.glob('*.whl')))} wheels, {size:.1f} MiB in {args.out}")
    for line in missing:
        print("missing:", line)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
