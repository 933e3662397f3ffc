"""Loading one device's engine: which devices, the pipeline set up for serving, its GPU features and its worker.

Called on the loader thread (server/state.py `AppState`), never at import: torch and diffusers are imported here
only inside the functions.  The warm-up itself runs later, on each worker's model thread (server/warmup.py).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from server.config import ServerConfig
from server.devices import DeviceSpec, parse_devices
from server.engine import Engine
from server.metrics import Metrics
from server.warmup import DeviceFeatures
from server.worker import Worker

if TYPE_CHECKING:
    from server.nvjpeg import NvJpeg
    from server.state import LoadingStatus


def device_specs(config: ServerConfig) -> list[DeviceSpec]:
    """The devices to serve on (`--devices`, else `--device`)."""
    import torch

    if not config.devices.strip() and config.device == "auto":  # label it by what auto chose
        from sdxs.device import resolve_device

        return [DeviceSpec(str(resolve_device("auto")), "auto")]
    return parse_devices(config.devices, config.device, torch.cuda.device_count)


def slot_config(config: ServerConfig, device: str, count: int) -> ServerConfig:
    """`config` for one device's pipeline: its device, and with several CPU pipelines an equal share of the cores
    (each worker thread runs its own team of intra-op threads)."""
    if device == config.device:
        return config
    update: dict[str, object] = {"device": device}
    if device == "cpu" and count > 1 and not config.torch_threads:
        update["torch_threads"] = max(1, ((os.cpu_count() or 2) - 1) // count)
    return config.model_copy(update=update)


def load_hint(config: ServerConfig) -> str:
    """What a failed load's message adds: how to run without the weights."""
    if config.model in ("tiny", "mini"):
        return ""
    return ("\nTo run without these weights, pass a local diffusers folder with --model DIR (or SDXS_MODEL=DIR), "
            "--model mini for the miniature model this project ships, or --model tiny for random weights.")


def load_pipeline(config: ServerConfig, status: LoadingStatus) -> Engine:
    """Load the pipeline (`tiny`: built on first use), set up for serving; raises WeightsUnavailable when
    unreachable.  The worker warms it up (`make_worker`)."""
    status.set("loading", 0.05)
    import torch

    from sdxs import SDXSPipeline  # torch + diffusers: imported on the loader thread, never at app import
    from sdxs.device import resolve_device

    torch.set_num_threads(torch_threads(config))
    keep_freed_memory()

    status.set("loading", 0.2)
    controlnet = None if config.controlnet.lower() in ("", "none") else config.controlnet
    graphs = use_cuda_graphs(config, resolve_device(config.device).type)
    # "tiny" is written once into $SDXS_CACHE and then loads like any local folder
    # the UNet is convolutional: any multiple of 64 works as the resolution (e.g. 256 on a CPU)
    pipe = SDXSPipeline.from_pretrained(config.model, controlnet=controlnet, device=config.device, dtype=config.dtype,
                                        size=config.resolution, adapters=config.style_adapters(),
                                        compile="reduce-overhead" if graphs else False)
    pipe.buckets = batch_buckets(config, graphs)
    return pipe


MMAP_THRESHOLD = 16 << 20  # allocations from here up (PIL's 16 MB image blocks, full-size decodes) go back when freed
TRIM_THRESHOLD = 64 << 20  # free memory at the heap's top beyond this goes back to the system


def keep_freed_memory() -> None:
    """Keep freed memory in the process for the next frame, within a bound.  glibc hands large freed blocks back to
    the system and page-faults them in again on the next allocation: about 1 ms per 3 MB tensor (one 512 frame in
    float32), more than the arithmetic on it; so blocks below 16 MB are kept.  Blocks from 16 MB up (a 4096x4096 PNG
    decodes into 48 MB) are mapped and returned when freed, and free memory at the heap's top beyond 64 MB is
    trimmed, so that a few huge inputs cannot ratchet the process's memory up (docs/protocol.md section 11).  A no-op
    without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    libc.mallopt(m_trim_threshold, TRIM_THRESHOLD)
    libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)


def use_cuda_graphs(config: ServerConfig, device_type: str) -> bool:
    """`--cuda-graphs`: auto means on for a CUDA device; CUDA graphs need one."""
    if config.cuda_graphs == "on" and device_type != "cuda":
        raise ValueError(f"--cuda-graphs on needs a CUDA device, got {device_type!r} (use auto or off)")
    return config.cuda_graphs == "on" or (config.cuda_graphs == "auto" and device_type == "cuda")


def batch_buckets(config: ServerConfig, graphs: bool) -> tuple[int, ...] | None:
    """The batch sizes a batch is padded up to (one CUDA graph each, all captured in warm-up); none without graphs."""
    from sdxs.buckets import default_buckets

    return default_buckets(config.max_batch) if graphs else None


def device_features(engine: Engine) -> DeviceFeatures:
    """The GPU features of `engine`'s device: on CUDA, nvJPEG handing frames to the engine's staging stream."""
    if engine.device.type != "cuda":
        return DeviceFeatures()
    from server.nvjpeg import NvJpeg

    return DeviceFeatures(gpu=NvJpeg.create(engine.device, engine.staging_stream))


def make_worker(engine: Engine, config: ServerConfig, metrics: Metrics, safety: Callable | None = None,
                gpu: NvJpeg | None = None) -> Worker:
    """The worker for `engine`: frames decoded in batches on its staging thread (nvJPEG on `gpu` where it is on)."""
    from server import codec

    decode = functools.partial(codec.decode_frames, size=int(engine.size), gpu=gpu)
    return Worker(engine, metrics, config.max_batch, config.batch_wait_ms, safety=safety, decode=decode)


def torch_threads(config: ServerConfig) -> int:
    """Intra-op threads for inference. On a CPU, threads that wait for each other at every op stall badly when a
    core is also busy with image codecs (measured: tiny model 35 ms with 1 thread vs 3.3 s with 2 on a busy 2-core
    machine), so auto keeps one core free."""
    import torch

    if config.torch_threads:
        return config.torch_threads
    on_gpu = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    return torch.get_num_threads() if on_gpu else max(1, (os.cpu_count() or 2) - 1)


def load_safety(spec: str | None) -> Callable | None:
    """The optional safety checker (off by default): a callable images -> list of flagged booleans."""
    if spec is None:
        return None
    from server.safety import load_safety_checker

    return load_safety_checker(spec)
