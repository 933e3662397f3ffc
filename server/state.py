"""Application state shared by the routes: config, loading progress, the devices' workers, admission, metrics.

The engines (one per device of `--devices`, else one; server/loading.py) are loaded and warmed up on a background
thread started by the lifespan, so `/`, `/healthz` and `/readyz` answer while they load; `pool` is then a
`server.devices.DevicePool` that places every session on one device's worker.  Non-WebSocket callers (Gradio) use
`app_state.pool.submit_one(...)`; see docs/protocol.md section 10.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sdxs.errors import WeightsUnavailable
from server import zerogpu
from server.admission import Admission
from server.codec import ImageLimits
from server.config import ServerConfig
from server.devices import DevicePool, DeviceSlot
from server.engine import Engine
from server.loading import (
    device_features,
    device_specs,
    load_hint,
    load_pipeline,
    load_safety,
    make_worker,
    slot_config,
)
from server.metrics import Metrics
from server.warmup import DeviceFeatures, warm_up
from server.worker import NotReady

T = TypeVar("T")
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
        self.stage, self.progress = "starting", 0.0
        self.error: str | None = None

    def set(self, stage: str, progress: float, error: str | None = None) -> None:
        with self._lock:
            self.stage, self.progress, self.error = stage, progress, error
        log.info("model %s (%.0f%%)%s", stage, progress * 100, f": {error}" if error else "")

    def as_dict(self) -> dict:
        with self._lock:
            return {"ready": self.stage == "ready", "stage": self.stage, "progress": round(self.progress, 3),
                    "error": self.error, "elapsed_s": round(time.monotonic() - self._started, 1)}


class AppState:
    def __init__(self, config: ServerConfig, wrap_pipeline: Callable[[Engine], Engine] | None = None):
        self.config = config
        self.zero_gpu = zerogpu.detect()  # a GPU per Gradio request only: no live stream (server/zerogpu.py)
        if self.zero_gpu:
            zerogpu.import_spaces()
        self.wrap_pipeline = wrap_pipeline  # test hook: e.g. a wrapper that injects inference errors
        self.metrics = Metrics()
        self.load_status = LoadingStatus()
        self.codec_pool = ThreadPoolExecutor(config.codec_threads, thread_name_prefix="sdxs-codec")
        # PNG and WebP inputs, decoded on receipt one at a time: a huge one costs its sender, not every session's batch
        self.decode_pool = ThreadPoolExecutor(1, thread_name_prefix="sdxs-decode")
        self.admission = Admission(config.max_sessions, config.max_queue, config.max_sessions_per_client,
                                   self.metrics)
        self.image_limits = ImageLimits(config.min_image_side, config.max_image_side, config.max_image_pixels)
        self._engine: Engine | None = None  # the first warm device's engine; see `engine`
        self.pool: DevicePool | None = None  # places sources on the devices' workers; None until ready
        self._devices: DevicePool | None = None  # the devices (one without --devices), from the start of the warm-up
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
        return self.pool is not None

    @property
    def engine(self) -> Engine | None:
        """The engine of a device in rotation (every device holds the same model), for parameter checks, control
        images and the model's description; None until ready."""
        serving = self.pool.serving if self.pool is not None else []
        return serving[0].engine if serving and serving[0].engine is not None else self._engine

    def require_engine(self) -> Engine:
        """`engine`, for code that runs only once the model is ready (sessions); raises NotReady before."""
        engine = self.engine
        if engine is None:
            raise NotReady("the model is not loaded")
        return engine

    def require_pool(self) -> DevicePool:
        """`pool`, for code that runs only once the model is ready (sessions); raises NotReady before."""
        if self.pool is None:
            raise NotReady("the model is not loaded")
        return self.pool

    @property
    def live(self) -> dict:
        """`live` of /config.json: whether this server serves the real-time stream, and if not, why."""
        if self.zero_gpu:
            return {"available": False, "reason": zerogpu.NO_LIVE_REASON}
        return {"available": True, "reason": None}

    @property
    def devices(self) -> list[dict]:
        """`devices` of /readyz: one entry per device once the pipelines are loaded, else empty."""
        return self._devices.as_list() if self._devices is not None else []

    @property
    def loading(self) -> dict:
        """The `loading` object of docs/protocol.md section 1."""
        return self.load_status.as_dict()

    @property
    def model_info(self) -> dict | None:
        """`model` of /config.json and `welcome`; None until the model is loaded."""
        engine = self.engine
        if engine is None:
            return None
        modes = [m.value for m in engine.modes]
        return {"id": engine.source or self.config.model, "is_random": engine.is_random, "size": int(engine.size),
                "modes": modes, "controlnet": "sketch" in modes or "edges" in modes, "styles": list(engine.adapters),
                "notice": engine.notes.get("notice") or (RANDOM_NOTICE if engine.is_random else None),
                "example_prompts": list(engine.notes.get("example_prompts", [])),
                "sketch": engine.notes.get("sketch"), "display": engine.notes.get("display")}

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
        ended = self._devices is None or self._devices.join(max(0.0, deadline - time.monotonic()))
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
            devices = self._devices
        if devices is not None:
            devices.stop(timeout=WORKER_STOP_S)
        self.codec_pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

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
        loaded = [(slot, slot.engine) for slot in slots if slot.engine is not None]
        if not loaded:
            return self._failed(next(error for error in errors if error))
        with self._start_lock:  # shutdown may have begun while the model loaded: then no worker starts
            if self._stopping.is_set():
                return
            workers = []
            for slot, engine in loaded:
                features = slot.features = device_features(engine)
                worker = slot.worker = make_worker(engine, self.config, self.metrics, safety, features.gpu)
                workers.append(worker)
            pool = DevicePool(slots, self.metrics, self.config.device_max_failures)
            self.load_status.set("warming_up", 0.8)
            for (slot, engine), worker in zip(loaded, workers, strict=True):
                # on each worker's own thread: CUDA graphs are replayed by the capturing thread.  ZeroGPU: no GPU
                # outside a @spaces.GPU call, so no warm-up (the first request pays it)
                features = slot.features or DeviceFeatures()
                warmup = None if self.zero_gpu else functools.partial(warm_up, engine, features, self.config.max_batch)
                worker.start(warmup=warmup)
            self._devices = pool
        while not all(worker.warm.is_set() or worker.failed is not None for worker in workers):
            if self._stopping.wait(0.05):
                return
        for (slot, _), worker in zip(loaded, workers, strict=True):
            if worker.failed is not None:
                slot.error = f"warm-up failed: {type(worker.failed).__name__}: {worker.failed}"
        warm = [engine for slot, engine in loaded if slot.error is None]
        if not warm:
            return self._failed(loaded[0][0].error or "warm-up failed")
        with self._start_lock:
            if self._stopping.is_set():
                return
            self._engine, self.pool = warm[0], pool
        self.metrics.model_ready.set(1)
        self.load_status.set("ready", 1.0)

    def _load_slot(self, slot: DeviceSlot, count: int) -> str | None:
        """Load `slot`'s pipeline (with the download retries); its error message, or None when it loaded."""
        config = slot_config(self.config, slot.spec.device, count)
        if self.zero_gpu:  # graphs captured inside one @spaces.GPU call cannot be replayed in the next
            config = config.model_copy(update={"cuda_graphs": "off"})
        try:
            engine = self._attempts(functools.partial(load_pipeline, config, self.load_status))
        except _LoadFailed as exc:
            slot.error = str(exc)
            return slot.error
        slot.engine = self.wrap_pipeline(engine) if self.wrap_pipeline is not None else engine
        return None

    def _attempts(self, load: Callable[[], T]) -> T:
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
                raise _LoadFailed(f"{type(exc).__name__}: {exc}{load_hint(self.config)}") from None
        raise AssertionError("unreachable")

    def _failed(self, error: str) -> None:
        self.load_status.set("failed", 0.0, error)
        if self.on_load_failed is not None:
            self.on_load_failed()


class _LoadFailed(Exception):
    """A pipeline could not be loaded; the message is what /readyz says."""


class _Stopped(Exception):
    """The server stopped while a download waited to be retried."""


