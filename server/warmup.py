"""A device's warm-up before it serves, and the safe path when a GPU feature fails it.

Runs on the device's model thread (the thread that replays its CUDA graphs), before the device counts as ready:

1. on CUDA, the nvJPEG self-test (server/nvjpeg.py), which also warms the decoder up at the largest batch; a failure
   turns nvJPEG off and the CPU decodes JPEG frames;
2. the pipeline's warm-up (`SDXSPipeline.warmup`): every path and batch-size bucket in passes until one compiles and
   records nothing.  When it fails (a capture error, or graphs still recording in the last pass), the failure is
   logged once, loudly, the pipeline steps aside to its eager modules (`use_eager`) and is warmed up again; only when
   the eager warm-up fails too does the device fail.

`DeviceFeatures` is what the device serves with, for `/readyz` (`devices[].features`) and `/metrics`
(`sdxs_device_feature_enabled`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from server.engine import Engine
from server.nvjpeg import NvJpeg

log = logging.getLogger("sdxs.warmup")


@dataclass
class DeviceFeatures:
    """A device's GPU features and their state.  `cuda_graphs`: "on", "off" (not asked for, or not CUDA) or
    "off (why)" after a failed capture; `decode` comes from the nvJPEG decoder when there is one (it can turn itself
    off later, on a batch it fails)."""

    cuda_graphs: str = "off"
    gpu: NvJpeg | None = None
    warmup: dict[str, Any] | None = None
    fallbacks: list[str] = field(default_factory=list)  # what stepped aside, in order, with why

    @property
    def decode(self) -> str:
        return "cpu" if self.gpu is None else self.gpu.status()

    def enabled(self, feature: str) -> bool:
        """For `sdxs_device_feature_enabled`: "cuda_graphs" or "nvjpeg"."""
        if feature == "cuda_graphs":
            return self.cuda_graphs == "on"
        return self.gpu is not None and self.gpu.enabled

    def as_dict(self) -> dict[str, Any]:
        self_test = self.gpu.self_test_result if self.gpu is not None else None
        return {"cuda_graphs": self.cuda_graphs, "decode": self.decode, "warmup": self.warmup,
                "nvjpeg_self_test": None if self_test is None else self_test.as_dict()}


def warm_up(engine: Engine, features: DeviceFeatures, max_batch: int) -> None:
    """Steps 1 and 2 of the module docstring; raises only when even the eager engine cannot warm up."""
    if features.gpu is not None:
        if not features.gpu.self_test(max_batch).passed:
            features.fallbacks.append(f"nvjpeg: {features.gpu.off_reason}")
    features.cuda_graphs = "on" if engine.graphs else "off"
    try:
        report = engine.warmup(engine.buckets or (1,))
    except Exception as exc:  # noqa: BLE001 - a compiled path failed: the eager modules are the safe path
        if not engine.compiled:
            raise
        reason = f"{type(exc).__name__}: {exc}"[:300]
        log.error("CUDA graphs / torch.compile failed their warm-up on %s; serving eagerly instead: %s",
                  engine.device, reason, exc_info=exc)
        features.cuda_graphs = f"off ({reason})"
        features.fallbacks.append(f"cuda_graphs: {reason}")
        engine.use_eager()
        report = engine.warmup((1,))
    features.warmup = report.as_dict()
    log.info("warm-up on %s: %s", engine.device, features.warmup)
