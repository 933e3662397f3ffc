"""Several devices in one process (`--devices`): one pipeline and one worker per device, sessions placed by load.

A *slot* is one device: its label (`cuda:0`, `cpu:1`), the device its pipeline lives on, the pipeline and its own
`server.worker.Worker` (own threads, own batching). `DevicePool` offers the worker's interface to the rest of the
server (`register`, `unregister`, `notify`, `submit_one`, `pending_count`, `stop`, `join`), so connections and the
Gradio UI do not know how many devices there are.

* Placement: a new source (a session's frame stream, a one-shot Gradio request) goes to the slot in rotation with the
  fewest sessions, then the fewest frames per second over the last 10 s; a session stays on its slot (its batches
  and CUDA graphs live on that device).
* Faults: a failed batch is answered by its worker to exactly that batch's jobs (server/worker.py).
  `max_failures` failed batches in a row take a slot out of rotation, unless it is the last one in rotation: its
  sessions move to the others, each told through its `moved(label)` hook (a `state` message, docs/protocol.md
  section 2). A slot out of rotation stays out until the server restarts.

Thread safety: one lock orders every change of placement; it is taken before a worker's own lock, never after.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sdxs.params import GenerationParams
from server.metrics import Metrics
from server.worker import LiveStream, NotReady, Source

if TYPE_CHECKING:
    from server.engine import Engine
    from server.warmup import DeviceFeatures
    from server.worker import Worker

log = logging.getLogger("sdxs.devices")

_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu)(:\d+)?$")
RATE_WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """`label`: the name in /readyz, /metrics and `state` messages; `device`: what the pipeline is loaded on."""

    label: str
    device: str


def check_devices(spec: str) -> str:
    """Validate the syntax of `--devices` (no torch needed); returns it stripped. Raises ValueError naming the entry."""
    spec = spec.strip()
    if spec in ("", "all"):
        return spec
    entries = [entry.strip() for entry in spec.split(",")]
    for entry in entries:
        if not _DEVICE.match(entry):
            raise ValueError(
                f"--devices: {entry!r} is not a device; expected 'all', 'cpu', or a comma-separated "
                "list such as 'cuda:0,cuda:1' or 'cpu,cpu'"
            )
    explicit = [entry for entry in entries if ":" in entry]
    if len(set(explicit)) != len(explicit):
        raise ValueError(f"--devices: a device is listed twice in {spec!r}")
    return spec


def parse_devices(spec: str, device: str, cuda_count: Callable[[], int]) -> list[DeviceSpec]:
    """`--devices` as slots. `''`: one slot on `--device`; `all`: every CUDA device (or the CPU when there is none);
    a list: one slot per entry. A bare `cpu` listed more than once becomes `cpu:0`, `cpu:1`, ... (CPU "devices"
    share the processor: for tests and benchmarks); `cpu:N` loads on the CPU under that label."""
    spec = check_devices(spec)
    if spec == "":
        return [DeviceSpec(device, device)]
    if spec == "all":
        count = cuda_count()
        return [DeviceSpec(f"cuda:{i}", f"cuda:{i}") for i in range(count)] or [DeviceSpec("cpu", "cpu")]
    entries = [entry.strip() for entry in spec.split(",")]
    bare_cpus = entries.count("cpu")
    slots, n = [], 0
    for entry in entries:
        if entry == "cpu" and bare_cpus > 1:
            while f"cpu:{n}" in entries:
                n += 1
            entry, n = f"cpu:{n}", n + 1
        slots.append(DeviceSpec(entry, "cpu" if entry.startswith("cpu") else entry))
    return slots


class RateWindow:
    """Frames per second over the last `window_s` seconds (thread-safe)."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._events.append((now, count))
            self._trim(now)

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(count for _, count in self._events) / self.window_s

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()


class DeviceSlot:
    """One device: its pipeline and worker once loaded, whether it takes sessions, and which sources it serves."""

    def __init__(self, spec: DeviceSpec):
        self.spec = spec
        self.engine: Engine | None = None
        self.worker: Worker | None = None  # once started
        self.features: DeviceFeatures | None = None  # once loaded
        self.in_rotation = True
        self.error: str | None = None  # why it serves nothing: a load or warm-up failure, repeated faults
        self.failures = 0  # failed batches in a row
        self.sources: set = set()
        self.rate = RateWindow()

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def serving(self) -> bool:
        return self.worker is not None and self.in_rotation and self.error is None

    @property
    def running(self) -> Worker:
        """The worker of a slot that has one (every slot sources are placed on: placement needs `serving`)."""
        if self.worker is None:
            raise NotReady(f"device {self.label} has no worker")
        return self.worker

    def load(self) -> tuple[int, float]:
        """The placement key: sessions, then recent frames/s."""
        return len(self.sources), self.rate.rate()

    def as_dict(self) -> dict:
        """One entry of `devices` in /readyz (docs/protocol.md section 1)."""
        return {
            "device": self.label,
            "ready": self.worker is not None,
            "in_rotation": self.serving,
            "sessions": len(self.sources),
            "fps": round(self.rate.rate(), 2),
            "failures": self.failures,
            "error": self.error,
            "features": None if self.features is None else self.features.as_dict(),
        }


class DevicePool:
    """The slots' workers behind one worker-like interface (see the module docstring)."""

    def __init__(self, slots: Sequence[DeviceSlot], metrics: Metrics, max_failures: int = 3):
        self.slots = list(slots)
        self.metrics = metrics
        self.max_failures = max_failures
        self._placed: dict[Source, DeviceSlot] = {}
        self._live_slots: weakref.WeakKeyDictionary[LiveStream, DeviceSlot] = weakref.WeakKeyDictionary()  # Gradio
        self._lock = threading.RLock()
        for slot in self.slots:
            if slot.worker is not None:
                slot.worker.on_batch = _bind(self._on_batch, slot)
            self._export(slot)
        metrics.pending.set_function(self.pending_count)

    def _export(self, slot: DeviceSlot) -> None:
        label = slot.label
        self.metrics.device_sessions.labels(label).set_function(lambda: len(slot.sources))
        self.metrics.device_fps.labels(label).set_function(slot.rate.rate)
        self.metrics.device_in_rotation.labels(label).set_function(lambda: float(slot.serving))
        for feature in ("cuda_graphs", "nvjpeg"):
            self.metrics.device_feature.labels(label, feature).set_function(functools.partial(_enabled, slot, feature))

    # --- the worker interface -------------------------------------------------------------------------------------
    @property
    def serving(self) -> list[DeviceSlot]:
        return [slot for slot in self.slots if slot.serving]

    def register(self, source: Source) -> None:
        """Place a source on the least-loaded slot in rotation; raises NotReady when none is."""
        with self._lock:
            self._place(source, self._least_loaded())

    def unregister(self, source: Source) -> None:
        with self._lock:
            slot = self._placed.pop(source, None)
            if slot is not None:
                slot.sources.discard(source)
                slot.running.unregister(source)

    def notify(self, source: Source | None = None) -> None:
        """`source` has a new pending job: wake its device's worker (without a source, or for one not placed:
        every worker; each looks only at its own sources)."""
        slot = self._placed.get(source) if source is not None else None  # a dict read: no lock needed
        for worker in [slot.running] if slot is not None else [s.worker for s in self.slots if s.worker is not None]:
            worker.notify()

    async def submit_one(self, params: GenerationParams, image: np.ndarray | None,
                         live: LiveStream | None = None) -> np.ndarray | None:
        """One request (Gradio) on the least-loaded slot in rotation; see Worker.submit_one.  A live stream's
        requests (a webcam viewer's) stay on the slot of its first while that slot serves: its history lives there."""
        with self._lock:
            slot = self._live_slots.get(live) if live is not None else None
            if slot is None or not slot.serving:
                slot = self._least_loaded()
                if live is not None:
                    self._live_slots[live] = slot
        return await slot.running.submit_one(params, image, live)

    def pending_count(self) -> int:
        return sum(slot.worker.pending_count() for slot in self.slots if slot.worker is not None)

    def device_of(self, source: Source) -> str | None:
        """The label of the slot serving `source`, or None."""
        with self._lock:
            slot = self._placed.get(source)
            return None if slot is None else slot.label

    def stop(self, timeout: float = 10.0) -> None:
        for slot in self.slots:
            if slot.worker is not None:
                slot.worker.stop(timeout=0.0)
        self.join(timeout)

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ended = [
            slot.worker.join(max(0.0, deadline - time.monotonic())) for slot in self.slots if slot.worker is not None
        ]
        return all(ended)

    def as_list(self) -> list[dict]:
        with self._lock:
            return [slot.as_dict() for slot in self.slots]

    # --- placement ----------------------------------------------------------------------------------------------
    def _least_loaded(self, exclude: DeviceSlot | None = None) -> DeviceSlot:
        candidates = [slot for slot in self.serving if slot is not exclude]
        if not candidates:
            raise NotReady("no device is serving")
        return min(candidates, key=DeviceSlot.load)

    def _place(self, source: Source, slot: DeviceSlot) -> None:
        self._placed[source] = slot
        slot.sources.add(source)
        slot.running.register(source)

    # --- faults (called on a worker's thread after each batch) ------------------------------------------------------
    def _on_batch(self, slot: DeviceSlot, size: int, error: BaseException | None) -> None:
        self.metrics.device_batches.labels(slot.label, "ok" if error is None else "failed").inc()
        if error is None:
            slot.rate.add(size)
            slot.failures = 0
            return
        with self._lock:
            slot.failures += 1
            if slot.failures < self.max_failures or not slot.in_rotation:
                return
            if not any(other.serving for other in self.slots if other is not slot):
                log.error(
                    "device %s failed %d batches in a row; kept: it is the last device in rotation",
                    slot.label,
                    slot.failures,
                )
                return
            slot.in_rotation = False
            slot.error = f"{slot.failures} failed batches in a row, the last: {type(error).__name__}: {error}"[:500]
            log.error("device %s taken out of rotation: %s", slot.label, slot.error)
            moves = self._evacuate(slot)
        for source, target in moves:
            source.moved(target.label)
        self.notify()

    def _evacuate(self, slot: DeviceSlot) -> list[tuple[Source, DeviceSlot]]:
        """Move every source of `slot` to the least-loaded slot in rotation, one at a time (holding the lock)."""
        moves = []
        for source in list(slot.sources):
            slot.sources.discard(source)
            slot.running.unregister(source)
            target = self._least_loaded()
            self._place(source, target)
            moves.append((source, target))
            log.info("a session moved from %s to %s", slot.label, target.label)
        return moves


def _enabled(slot: DeviceSlot, feature: str) -> float:
    return float(slot.features is not None and slot.features.enabled(feature))


def _bind(method: Callable, slot: DeviceSlot) -> Callable[[int, BaseException | None], None]:
    def on_batch(size: int, error: BaseException | None) -> None:
        method(slot, size, error)

    return on_batch
