"""Prometheus metrics (docs/protocol.md section 9). One registry per app, so tests can run several servers."""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
FPS_WINDOW_S = 10.0
SESSION_STATES = ("active", "queued")  # the labels of sdxs_sessions (server/admission.py)
FRAME_RESULTS = ("generated", "reused", "skipped", "error", "dropped")  # the labels of sdxs_frames_total


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.sessions = Gauge("sdxs_sessions", "Sessions by state.", ["state"], registry=r)
        self.pending = Gauge("sdxs_pending_frames", "Sessions with a frame waiting for the worker.", registry=r)
        self.batch_size = Histogram("sdxs_batch_size", "Requests per pipeline call.", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.inference = Histogram("sdxs_inference_seconds", "Pipeline call wall time.", buckets=LATENCY_BUCKETS,
                                   registry=r)
        self.queue_wait = Histogram("sdxs_queue_wait_seconds", "Frame receipt to inference start.",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end = Histogram("sdxs_end_to_end_seconds", "Frame receipt to output handed to the socket.",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.frames = Counter("sdxs_frames_total", "Frames answered, by result.", ["result"], registry=r)
        for state in SESSION_STATES:  # every series from the start, at 0, as docs/protocol.md section 9 says
            self.sessions.labels(state).set(0)
        for result in FRAME_RESULTS:
            self.frames.labels(result)
        self.errors = Counter("sdxs_errors_total", "Error messages sent, by code.", ["code"], registry=r)
        self.model_ready = Gauge("sdxs_model_ready", "1 when the model is loaded and warm.", registry=r)
        self.fps = Gauge("sdxs_frames_per_second", f"Output frames per second over the last {FPS_WINDOW_S:g} s.",
                         registry=r)
        self.fps.set_function(self._fps)
        # per device (server/devices.py): one series per `--devices` entry
        self.device_sessions = Gauge("sdxs_device_sessions", "Sessions placed on each device.", ["device"],
                                     registry=r)
        self.device_fps = Gauge("sdxs_device_frames_per_second", f"Frames generated per second on each device over "
                                f"the last {FPS_WINDOW_S:g} s.", ["device"], registry=r)
        self.device_in_rotation = Gauge("sdxs_device_in_rotation", "1 while the device takes sessions; 0 after a "
                                        "load failure or repeated faults.", ["device"], registry=r)
        self.device_feature = Gauge("sdxs_device_feature_enabled", "1 while a GPU feature serves on the device "
                                    "(cuda_graphs, nvjpeg); 0 when off or stepped aside after a failed self-test or "
                                    "warm-up (see /readyz).", ["device", "feature"], registry=r)
        self.device_batches = Counter("sdxs_device_batches_total", "Pipeline calls per device, by result (ok, "
                                      "failed).", ["device", "result"], registry=r)
        self._sent_lock = threading.Lock()
        self._sent: collections.deque[float] = collections.deque()

    def frame_sent(self, server_s: float, result: str) -> None:
        """An output frame was handed to a socket `server_s` seconds after its input arrived."""
        self.frames.labels(result).inc()
        self.end_to_end.observe(server_s)
        now = time.monotonic()
        with self._sent_lock:
            self._sent.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._sent and self._sent[0] < now - FPS_WINDOW_S:
            self._sent.popleft()

    def _fps(self) -> float:
        now = time.monotonic()
        with self._sent_lock:
            self._trim(now)
            return len(self._sent) / FPS_WINDOW_S

    def render(self) -> bytes:
        return generate_latest(self.registry)
