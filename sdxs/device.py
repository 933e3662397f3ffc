"""Choosing the device and the dtype: CUDA in fp16; CPU in bf16 where it is supported and measurably faster."""

from __future__ import annotations

import functools
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.cache
def cpu_bf16_speedup() -> float:
    """fp32 time over bf16 time of a UNet-shaped conv + matmul on this CPU (>1: bf16 is faster; 0: unsupported).

    Takes about a tenth of a second once per process where oneDNN has bf16 kernels; 0 at once where it has none.
    """
    if not torch.backends.mkldnn.is_available() or not _onednn_has_bf16():
        return 0.0
    conv = torch.nn.Conv2d(320, 320, 3, padding=1)
    x = torch.randn(1, 320, 32, 32)
    a, b = torch.randn(1024, 640), torch.randn(640, 640)

    def timed(dtype: torch.dtype) -> float:
        c, xx, aa, bb = conv.to(dtype), x.to(dtype), a.to(dtype), b.to(dtype)
        with torch.inference_mode():
            c(xx), aa @ bb  # warm-up: oneDNN picks its kernels on the first call
            start = time.perf_counter()
            for _ in range(3):
                c(xx), aa @ bb
        return time.perf_counter() - start

    try:
        return timed(torch.float32) / timed(torch.bfloat16)
    except RuntimeError:
        return 0.0


def _onednn_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 or AMX).  On an AVX2-only CPU it emulates bf16 about
    100x slower than fp32: the probe above then took 20 s of a 2-core machine's start-up to learn the obvious."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else True
    except RuntimeError:
        return True


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA; on CPU bfloat16 when at least 1.2x faster than float32 here, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_bf16_speedup() >= 1.2 else torch.float32
