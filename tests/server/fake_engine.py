"""The tests' one engine double: server.engine.Engine without a model, every phase logged, faults on demand.

A frame is `size` x `size` filled with len(prompt) % 256, or with `echo` the request's image itself when it is a
uint8 (H, W, 3) array (so tests can follow their own pixels through the worker).  Knobs: `key` replaces the batch key;
`fail_prompts` (a batch holding one raises RuntimeError in `run`); `broken` (every batch raises); `on_run(prompts)`
is called before a batch runs (to block, wait or record); `styles` are the adapters it accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdxs.errors import InvalidRequest
from sdxs.params import GenerationParams, GenerationRequest, Mode
from sdxs.pipeline import HostFrames, WarmupReport, path_of


@dataclass
class FakeStaged:
    params: list[GenerationParams]
    frames: list[np.ndarray]


class FakeEngine:
    source, is_random, graphs, buckets = "fake", True, False, None

    def __init__(self, size: int = 8, key: Callable[[GenerationRequest], Hashable] | None = None,
                 styles: Sequence[str] = (), fail_prompts: Sequence[str] = ("boom",),
                 on_run: Callable[[list[str]], None] | None = None, echo: bool = False):
        self.size, self.key, self.adapters, self.echo = size, key, tuple(styles), echo
        self.fail_prompts, self.on_run = set(fail_prompts), on_run
        self.notes: dict[str, Any] = {}
        self.broken = False
        self.events: list[str] = []
        self.batches: list[list[str]] = []  # the prompts of every batch that ran, in order

    device = torch.device("cpu")
    modes = tuple(Mode)
    compiled = False
    staging_stream = None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "size": self.size, "modes": [m.value for m in self.modes]}

    def check(self, request: GenerationRequest) -> None:
        p = request.params
        if p.style is not None and p.style not in self.adapters:
            raise InvalidRequest("style", f"unknown style {p.style!r}")
        if p.uses_image and request.image is None:
            raise InvalidRequest("image", f"mode {p.mode.value!r} needs an input image")

    def batch_key(self, request: GenerationRequest) -> Hashable:
        return self.key(request) if self.key else (path_of(request.params), request.params.style)

    def stage(self, requests: Sequence[GenerationRequest], *, checked: bool = False) -> FakeStaged:
        if not checked:
            for request in requests:
                self.check(request)
        self.events.append(f"stage {[r.params.prompt for r in requests]}")
        return FakeStaged([r.params for r in requests], [self._frame(r) for r in requests])

    def run(self, staged: FakeStaged) -> torch.Tensor:
        prompts = [p.prompt for p in staged.params]
        if self.on_run is not None:
            self.on_run(prompts)
        self.events.append(f"run {prompts}")
        self.batches.append(prompts)
        if self.broken:
            raise RuntimeError("device lost")
        if self.fail_prompts & set(prompts):
            raise RuntimeError("injected failure")
        return torch.from_numpy(np.stack(staged.frames))

    def to_host(self, images: torch.Tensor) -> HostFrames:
        return HostFrames(images)

    def thumbnails(self, images: Sequence[Any], side: int) -> torch.Tensor:
        """Small grey copies as the real engine makes them (sdxs.frames squaring, BT.601 luma), float32 on the CPU."""
        from sdxs import frames

        small = frames.square(images, side).float()
        return small[:, 0] * 0.299 + small[:, 1] * 0.587 + small[:, 2] * 0.114

    def control_image(self, request: GenerationRequest) -> Image.Image:
        return Image.fromarray(255 - self._frame(request))

    def warmup(self, batch_sizes: Sequence[int] = (1,), max_passes: int = 4) -> WarmupReport:
        self.events.append(f"warmup {list(batch_sizes)}")
        return WarmupReport()

    def use_eager(self) -> None:
        self.graphs = False

    def __call__(self, requests: Sequence[GenerationRequest], output_type: str = "np") -> list[np.ndarray]:
        for request in requests:
            self.check(request)
        return self.to_host(self.run(self.stage(requests, checked=True))).arrays()

    def _frame(self, request: GenerationRequest) -> np.ndarray:
        image = request.image
        if self.echo and isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3:
            return image
        return np.full((self.size, self.size, 3), len(request.params.prompt) % 256, np.uint8)
