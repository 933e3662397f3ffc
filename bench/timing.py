"""Benchmark helpers: per-module forward timers, the machine's matmul peak, FLOP counts, tables and JSON results."""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


class ModuleTimer:
    """Wall time spent inside named modules' forwards (outermost call only), for any pipeline."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device):
        self.modules, self.device = modules, device
        self.ms: dict[str, float] = defaultdict(float)
        self._handles = []

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        for name, module in self.modules.items():
            if module is None:
                continue
            starts = []

            def pre(_m, _a, starts=starts):
                self._sync()
                starts.append(time.perf_counter())

            def post(_m, _a, _o, name=name, starts=starts):
                self._sync()
                self.ms[name] += (time.perf_counter() - starts.pop()) * 1000

            self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()


@contextmanager
def wall(out: dict, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["total"] = (time.perf_counter() - start) * 1000


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    """Measured GEMM throughput of this machine in GFLOP/s (the best of a few runs)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def count_gflops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def results_path(name: str, out: Path = RESULTS) -> Path:
    """Where a benchmark's JSON goes: OUT/NAME-{cuda,cpu}-STAMP.json (the folder is made)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    return out / f"{name}-{kind}-{stamp}.json"


def write_results(name: str, payload: dict, out: Path = RESULTS, path: Path | None = None) -> Path:
    """Write `payload` (with the machine) to `path`, or a new `results_path(name, out)`; returns the path.  Call it
    after every measurement with the same path, so a run cut short keeps what it measured."""
    path = path or results_path(name, out)
    created = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path.write_text(json.dumps({"machine": machine(), "created": created, **payload}, indent=2))
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).rjust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return "" if value is None else str(value)
