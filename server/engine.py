"""The seam between the server and the pipeline: what the server needs from a loaded model, and what crosses.

`Engine` is that need as a `typing.Protocol`: the worker batches and runs through it, the device pool and the
warm-up drive it, the routes describe it and check parameters with it.  `sdxs.SDXSPipeline` satisfies it (the type
checker says so: see the end of this module); so does the tests' one shared double (tests/server/fake_engine.py).
Nothing in server/ probes a pipeline for what it can do.

What crosses, as data records (the shape vLLM gives its scheduler's interface and output):
* in: `sdxs.params.GenerationRequest` (parameters and the frame: a decoded array, a device tensor from nvJPEG);
* between the two phases: a `Staged` batch, opaque to the server (`stage` on the staging thread, `run` on the
  model thread; on CUDA, tensors on the staging stream with the event `run` waits for);
* out: `sdxs.pipeline.HostFrames` (uint8 (B, S, S, 3) rows on the host and the event to wait for before reading).

A request is checked once: `check` when parameters change (the connection) and when a frame is taken into a batch
(the worker); `stage(..., checked=True)` does not check again.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sdxs.params import GenerationParams, GenerationRequest, Mode

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from sdxs.pipeline import HostFrames, WarmupReport


class Staged(Protocol):
    """A batch between `stage` and `run`: the server reads only its parameters."""

    params: list[GenerationParams]


class Engine(Protocol):
    """A loaded one-step pipeline on one device, as the server uses it."""

    size: int  # the served square size in pixels
    source: str  # what was loaded (a Hub id, a folder, "mini", "tiny")
    is_random: bool  # random weights: the page labels the output
    notes: dict[str, Any]  # the model folder's sdxs_model.json (what the page says about the model)
    adapters: tuple[str, ...]  # loaded style adapters
    buckets: tuple[int, ...] | None  # batch sizes padded up to (one CUDA graph each)
    graphs: bool  # compiled with CUDA graphs

    @property
    def device(self) -> torch.device: ...

    @property
    def modes(self) -> tuple[Mode, ...]: ...

    @property
    def compiled(self) -> bool: ...

    @property
    def staging_stream(self) -> torch.cuda.Stream | None:
        """Where staging runs and decoded GPU frames are handed over (CUDA only)."""

    def describe(self) -> dict[str, Any]: ...

    def check(self, request: GenerationRequest) -> None:
        """Raise sdxs.errors.InvalidRequest (naming the field) for a request this engine cannot run."""

    def batch_key(self, request: GenerationRequest) -> Hashable:
        """Requests with equal keys run in one forward."""

    def stage(self, requests: Sequence[GenerationRequest], *, checked: bool = False) -> Staged:
        """Everything before the models, for requests of one batch key."""

    def run(self, staged: Any) -> torch.Tensor:
        """The models on what this engine's `stage` returned: uint8 (B, S, S, 3) on the device."""

    def to_host(self, images: torch.Tensor) -> HostFrames: ...

    def thumbnails(self, images: Sequence[Any], side: int) -> torch.Tensor:
        """The skip filter's small grey copies of decoded frames: float32 (B, side, side), 0-255, on the CPU."""

    def control_image(self, request: GenerationRequest) -> Image.Image: ...

    def warmup(self, batch_sizes: Sequence[int] = (1,), max_passes: int = 4) -> WarmupReport: ...

    def use_eager(self) -> None:
        """Step aside from compiled modules and CUDA graphs (the safe path after a failed warm-up)."""

    def __call__(self, requests: Sequence[GenerationRequest], output_type: str = "pil") -> list[Any]:
        """Both phases at once (Gradio on ZeroGPU, tests): uint8 (S, S, 3) arrays with output_type "np"."""


if TYPE_CHECKING:  # the type checker's proof that the real pipeline is an Engine
    from sdxs.pipeline import SDXSPipeline

    def _sdxs_pipeline_is_an_engine(pipe: SDXSPipeline) -> Engine:
        return pipe
