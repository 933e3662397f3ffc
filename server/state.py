"""Application state shared by the routes: config, loading progress, the devices' workers, admission, metrics.

The pipelines (one per device of `--devices`, else one) are loaded and warmed up on a background thread started by
the lifespan, so `/`, `/healthz` and `/readyz` answer while they load; `worker` is then a `server.devices.DevicePool`
that places every session on one device's worker.  Non-WebSocket callers (Gradio) use
`app_state.worker.submit_one(...)`; see docs/protocol.md section 10.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sdxs.errors import WeightsUnavailable
from server import zerogpu
from server.admission import Admission
from server.codec import ImageLimits
from server.config import ServerConfig
from server.devices import DevicePool, DeviceSlot, DeviceSpec, parse_devices
from server.metrics import Metrics
from server.worker import Worker

log = logging.getLogger("sdxs.server")
WORKER_STOP_S = 1.0  # at shutdown, the batch in progress gets this long; the process exits within 5 s regardless
LOAD_RETRY_S = 10.0
RANDOM_NOTICE = ("Development model with random weights: the pictures are noise on purpose. Start the server with a "
                 "real model (or --model mini) for real images.")


class LoadingStatus:
    """Thread-safe progress of the model load (the `loading` object of docs/protocol.md section 1)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.stage, self.progress, self.error = "starting", 0.0, None

    def set(self, stage: str, progress: float, error: str | None = None) -> None:
        with self._lock:
            self.stage, self.progress, self.error = stage, progress, error
        log.info("model %s (%.0f%%)%s", stage, progress * 100, f": {error}" if error else "")

    def as_dict(self) -> dict:
        with self._lock:
            return {"ready": self.stage == "ready", "stage": self.stage, "progress": round(self.progress, 3),
                    "error": self.error, "elapsed_s": round(time.monotonic() - self._started, 1)}


class AppState:
    def __init__(self, config: ServerConfig, wrap_pipeline: Callable[[Any], Any] | None = None):
        self.config = config
        self.zero_gpu = zerogpu.detect()  # a GPU per Gradio request only: no live stream (server/zerogpu.py)
        if self.zero_gpu:
            zerogpu.import_spaces()
        self.wrap_pipeline = wrap_pipeline  # test hook: e.g. a wrapper that injects inference errors
        self.metrics = Metrics()
        self.load_status = LoadingStatus()
        self.codec_pool = ThreadPoolExecutor(config.codec_threads, thread_name_prefix="sdxs-codec")
        self.admission = Admission(config.max_sessions, config.max_queue, config.max_sessions_per_client,
                                   self.metrics)
        self.image_limits = ImageLimits(config.min_image_side, config.max_image_side, config.max_image_pixels)
        self._pipe: Any = None  # the first warm device's pipeline; see `pipe`
        self.worker: DevicePool | None = None  # routes sources to the devices' workers; None until ready
        self._warming: DevicePool | None = None  # started, still warming up (capturing CUDA graphs) on its threads
        self.pool: DevicePool | None = None  # the devices (one without --devices), from the start of the warm-up
        self.connections: set = set()  # server.connection.Connection objects, from accept to the end of `run`
        self.stop_hooks: list[Callable[[], None]] = []  # run first on shutdown (e.g. end Gradio's long-lived streams)
        self.on_load_failed: Callable[[], None] | None = None  # app.main: stop the server (exit status 1)
        self._loader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._start_lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        """The server is shutting down: new connections are told so, a model download waiting to retry gives up."""
        return self._stopping.is_set()

    @property
    def ready(self) -> bool:
        return self.worker is not None

    @property
    def pipe(self) -> Any:
        """A pipeline of a device in rotation (every device holds the same model), for parameter checks, control
        images and the model's description; None until ready."""
        serving = self.pool.serving if self.pool is not None and self.worker is not None else []
        return serving[0].pipe if serving else self._pipe

    @property
    def live(self) -> dict:
        """`live` of /config.json: whether this server serves the real-time stream, and if not, why."""
        if self.zero_gpu:
            return {"available": False, "reason": zerogpu.NO_LIVE_REASON}
        return {"available": True, "reason": None}

    @property
    def devices(self) -> list[dict]:
        """`devices` of /readyz: one entry per device once the pipelines are loaded, else empty."""
        return self.pool.as_list() if self.pool is not None else []

    @property
    def loading(self) -> dict:
        """The `loading` object of docs/protocol.md section 1."""
        return self.load_status.as_dict()

    @property
    def model_info(self) -> dict | None:
        """`model` of /config.json and `welcome`; None until the model is loaded."""
        if self.pipe is None:
            return None
        notes = getattr(self.pipe, "notes", None) or {}
        is_random = bool(self.pipe.is_random)
        return {"id": getattr(self.pipe, "source", None) or self.config.model, "is_random": is_random,
                "size": int(self.pipe.size), "modes": [getattr(m, "value", str(m)) for m in self.pipe.modes],
                "controlnet": any(getattr(m, "value", m) in ("sketch", "edges") for m in self.pipe.modes),
                "styles": list(getattr(self.pipe, "adapters", ())),
                "notice": notes.get("notice") or (RANDOM_NOTICE if is_random else None),
                "example_prompts": list(notes.get("example_prompts", [])),
                "sketch": notes.get("sketch"), "display": notes.get("display")}

    def start_loading(self) -> None:
        """Start the loader thread (once: a second call, e.g. the lifespan's under Ray Serve, does nothing)."""
        if self._loader is not None:
            return
        self._loader = threading.Thread(target=self._load, name="sdxs-loader", daemon=True)
        self._loader.start()

    def join(self, timeout: float) -> bool:
        """After `shutdown`: wait up to `timeout` for the loader and worker threads; True when both have ended.
        (A thread still inside torch when the interpreter exits aborts the process.)"""
        deadline = time.monotonic() + timeout
        if self._loader is not None:
            self._loader.join(max(0.0, deadline - time.monotonic()))
        worker = self.worker or self._warming
        ended = worker is None or worker.join(max(0.0, deadline - time.monotonic()))
        return ended and not (self._loader is not None and self._loader.is_alive())

    def wait_ready(self, timeout: float) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.ready

    async def close_connections(self, timeout: float) -> None:
        """Server shutdown: every session gets `goodbye server_shutdown` and close 1001; wait up to `timeout` for
        the sessions to end (a client that does not read cannot be waited for)."""
        self._stopping.set()
        for hook in self.stop_hooks:
            hook()
        for connection in list(self.connections):
            connection.shutdown()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def shutdown(self) -> None:
        self._stopping.set()
        with self._start_lock:
            worker = self.worker or self._warming
        if worker is not None:
            worker.stop(timeout=WORKER_STOP_S)
        self.codec_pool.shutdown(wait=False, cancel_futures=True)

    def _load(self) -> None:
        """Load a pipeline per device (`--devices`; one without it), start their workers, wait for the warm-ups.
        A device that fails to load or warm up is reported in /readyz and left out; the server is ready when the
        others are warm, and fails only when none is."""
        try:
            slots = [DeviceSlot(spec) for spec in device_specs(self.config)]
            safety = self._attempts(functools.partial(load_safety, self.config.safety_checker))
            errors = [self._load_slot(slot, len(slots)) for slot in slots]
        except _LoadFailed as exc:
            return self._failed(str(exc))
        except _Stopped:
            return
        loaded = [slot for slot in slots if slot.pipe is not None]
        if not loaded:
            return self._failed(next(error for error in errors if error))
        with self._start_lock:  # shutdown may have begun while the model loaded: then no worker starts
            if self._stopping.is_set():
                return
            for slot in loaded:
                slot.worker = make_worker(slot.pipe, self.config, self.metrics, safety)
            pool = DevicePool(slots, self.metrics, self.config.device_max_failures)
            self.load_status.set("warming_up", 0.8)
            for slot in loaded:  # on each worker's own thread: CUDA graphs are replayed by the capturing thread
                # ZeroGPU: no GPU outside a @spaces.GPU call, so no warm-up (the first request pays it)
                warmup = None if self.zero_gpu else functools.partial(slot.pipe.warmup, slot.pipe.buckets or (1,))
                slot.worker.start(warmup=warmup)
            self._warming, self.pool = pool, pool
        while not all(slot.worker.warm.is_set() or slot.worker.failed is not None for slot in loaded):
            if self._stopping.wait(0.05):
                return
        for slot in loaded:
            if slot.worker.failed is not None:
                slot.error = f"warm-up failed: {type(slot.worker.failed).__name__}: {slot.worker.failed}"
        warm = [slot for slot in loaded if slot.error is None]
        if not warm:
            return self._failed(loaded[0].error or "warm-up failed")
        with self._start_lock:
            if self._stopping.is_set():
                return
            self._pipe, self.worker = warm[0].pipe, pool
        self.metrics.model_ready.set(1)
        self.load_status.set("ready", 1.0)

    def _load_slot(self, slot: DeviceSlot, count: int) -> str | None:
        """Load `slot`'s pipeline (with the download retries); its error message, or None when it loaded."""
        config = slot_config(self.config, slot.spec.device, count)
        if self.zero_gpu:  # graphs captured inside one @spaces.GPU call cannot be replayed in the next
            config = config.model_copy(update={"cuda_graphs": "off"})
        try:
            pipe = self._attempts(functools.partial(load_pipeline, config, self.load_status))
        except _LoadFailed as exc:
            slot.error = str(exc)
            return slot.error
        slot.pipe = self.wrap_pipeline(pipe) if self.wrap_pipeline is not None else pipe
        return None

    def _attempts(self, load: Callable[[], Any]) -> Any:
        """`load()`, retried `--load-retries` times when weights cannot be downloaded. Raises _LoadFailed with the
        message for /readyz, or _Stopped when the server stops while waiting to retry."""
        retries = self.config.load_retries
        for attempt in range(retries + 1):
            try:
                return load()
            except WeightsUnavailable as exc:  # the network: worth another try; the message says what else to do
                if attempt < retries:
                    self.load_status.set("loading", 0.05, f"download failed ({exc.cause}); retry {attempt + 1} of "
                                         f"{retries} in {LOAD_RETRY_S:g} s")
                    if self._stopping.wait(LOAD_RETRY_S):
                        raise _Stopped from None
                    continue
                log.error("%s", exc)
                raise _LoadFailed(str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - a bad folder or option: retrying cannot help
                log.error("model load failed:\n%s", traceback.format_exc())
                raise _LoadFailed(f"{type(exc).__name__}: {exc}{_load_hint(self.config)}") from None
        raise AssertionError("unreachable")

    def _failed(self, error: str) -> None:
        self.load_status.set("failed", 0.0, error)
        if self.on_load_failed is not None:
            self.on_load_failed()


class _LoadFailed(Exception):
    """A pipeline could not be loaded; the message is what /readyz says."""


class _Stopped(Exception):
    """The server stopped while a download waited to be retried."""


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
    update: dict[str, Any] = {"device": device}
    if device == "cpu" and count > 1 and not config.torch_threads:
        update["torch_threads"] = max(1, ((os.cpu_count() or 2) - 1) // count)
    return config.model_copy(update=update)


def _load_hint(config: ServerConfig) -> str:
    if config.model in ("tiny", "mini"):
        return ""
    return ("\nTo run without these weights, pass a local diffusers folder with --model DIR (or SDXS_MODEL=DIR), "
            "--model mini for the miniature model this project ships, or --model tiny for random weights.")


def load_pipeline(config: ServerConfig, status: LoadingStatus) -> Any:
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
    pipe.legacy = config.frame_path == "legacy"
    return pipe


def keep_freed_memory() -> None:
    """Keep freed memory in the process for the next frame.  glibc hands large freed blocks back to the system and
    page-faults them in again on the next allocation: about 1 ms per 3 MB tensor (one 512 frame in float32), more than
    the arithmetic on it.  A no-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 256 << 20)


def use_cuda_graphs(config: ServerConfig, device_type: str) -> bool:
    """`--cuda-graphs`: auto means on for a CUDA device; CUDA graphs need one."""
    if config.cuda_graphs == "on" and device_type != "cuda":
        raise ValueError(f"--cuda-graphs on needs a CUDA device, got {device_type!r} (use auto or off)")
    return config.cuda_graphs == "on" or (config.cuda_graphs == "auto" and device_type == "cuda")


def batch_buckets(config: ServerConfig, graphs: bool) -> tuple[int, ...] | None:
    """The batch sizes a batch is padded up to (one CUDA graph each, all captured in warm-up); none without graphs."""
    from sdxs.buckets import default_buckets

    return default_buckets(config.max_batch) if graphs else None


def make_worker(pipe: Any, config: ServerConfig, metrics: Metrics, safety: Callable | None = None) -> Worker:
    """The worker for `pipe`: batched decode on its staging thread (the batched frame path), or the former path."""
    from server import codec

    legacy = config.frame_path == "legacy"
    decode = None if legacy else functools.partial(codec.decode_frames, size=int(pipe.size),
                                                   device=getattr(pipe, "device", None))
    return Worker(pipe, metrics, config.max_batch, config.batch_wait_ms, safety=safety, decode=decode,
                  overlap=not legacy)


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
