"""The inference worker: one thread that batches the newest frames of all ready sources into pipeline calls.

A *source* is anything with a one-slot mailbox: a WebSocket connection (server/connection.py) or a one-shot request
from `submit_one` (Gradio). Each round the scheduler looks at the sources with a pending job, least recently served
first (fairness), groups jobs whose `pipe.batch_key` is equal, and runs the most-starved group, up to `max_batch`
requests, in ONE pipeline call. Jobs that did not fit go back to their (one-slot) mailboxes unless a newer frame
arrived meanwhile. An exception in the pipeline reaches only the jobs of that batch; the thread goes on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sdxs.errors import InvalidRequest
from sdxs.params import GenerationParams
from server.metrics import Metrics

log = logging.getLogger("sdxs.worker")


class NotReady(RuntimeError):
    """The model is still loading (or failed to load)."""


class InferenceError(RuntimeError):
    """The pipeline raised for the batch this request was in; `__cause__` is the original exception."""


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a job gets back, on the worker thread. `image`: uint8 RGB (size, size, 3), or None with `error` set."""

    image: np.ndarray | None
    error: BaseException | None
    queue_ms: float
    inference_ms: float
    batch_size: int
    flagged: bool = False


@dataclass(frozen=True, slots=True)
class Job:
    request: Any  # sdxs.GenerationRequest
    received_at: float  # time.perf_counter() when the input arrived
    on_done: Callable[[JobResult], None]  # called on the worker thread; must be quick and not raise
    tag: Any = None  # the source's own handle for the job (e.g. the input frame, for return_job)


class Source(Protocol):
    last_served: float

    @property
    def pending(self) -> bool: ...

    def take_job(self) -> Job | None:
        """Remove and return the pending job, or None (nothing pending, or answered without inference)."""

    def return_job(self, job: Job) -> None:
        """Give back a job that did not fit in this round's batch (dropped if a newer one arrived)."""


class Worker:
    """Owns the pipeline once loaded; every inference in the process goes through `_run_batch` on one thread."""

    def __init__(self, pipe: Any, metrics: Metrics, max_batch: int = 8, batch_wait_ms: float = 0.0,
                 safety: Callable[[list[np.ndarray]], list[bool]] | None = None):
        self.pipe = pipe
        self.metrics = metrics
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.safety = safety
        self._sources: list[Source] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sdxs-worker", daemon=True)
        # counted when scraped, never stored: a stored count went stale when sessions left between rounds
        metrics.pending.set_function(self.pending_count)

    # --- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the batch in progress; waits at most `timeout` (the thread is a daemon: the server passes a
        short one, so that a long batch on a slow device cannot hold up its exit)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self.join(timeout)

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` for the thread to end (after `stop`); True when it has."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def register(self, source: Source) -> None:
        with self._wake:
            self._sources.append(source)

    def unregister(self, source: Source) -> None:
        with self._wake:
            if source in self._sources:
                self._sources.remove(source)

    def pending_count(self) -> int:
        """Sources with a job waiting (`sdxs_pending_frames`)."""
        with self._wake:
            return sum(s.pending for s in self._sources)

    def notify(self) -> None:
        """A source has a new pending job (thread-safe)."""
        with self._wake:
            self._wake.notify_all()

    # --- one-shot requests (Gradio and other non-WebSocket callers) ---------------------------------------------
    async def submit_one(self, params: GenerationParams, image: np.ndarray | None) -> np.ndarray:
        """Run one request through the same scheduler; `image` uint8 RGB (size, size, 3) or None.

        Returns uint8 RGB (size, size, 3). Raises InvalidRequest or InferenceError.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobResult] = loop.create_future()

        def done(result: JobResult) -> None:
            loop.call_soon_threadsafe(_resolve, future, result)

        job = Job(make_request(params, image), time.perf_counter(), done)
        source = _OneShot(job)
        self.register(source)
        self.notify()
        try:
            result = await future
        finally:
            self.unregister(source)
        if result.error is not None:
            if isinstance(result.error, InvalidRequest):
                raise result.error
            raise InferenceError(str(result.error)) from result.error
        return result.image

    # --- the thread ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        log.info("worker started (max_batch=%d)", self.max_batch)
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stopping or any(s.pending for s in self._sources))
                if self.batch_wait_s:  # gather: give just-answered sessions a moment to send their next frame
                    self._wake.wait_for(lambda: self._stopping or self._all_pending(), timeout=self.batch_wait_s)
                if self._stopping:
                    break
            try:
                batch = self._next_batch()
                if batch:
                    self._run_batch(batch)
            except Exception:  # a bug here must not kill inference for everyone: log it loudly and go on
                log.exception("worker round failed")
        log.info("worker stopped")

    def _all_pending(self) -> bool:
        """Every source (up to max_batch of them) has a frame waiting: no reason to wait longer."""
        return sum(s.pending for s in self._sources) >= min(self.max_batch, len(self._sources))

    def _next_batch(self) -> list[Job]:
        """Take the most-starved compatible group of pending jobs (at most max_batch); return the rest."""
        with self._wake:
            ready = sorted((s for s in self._sources if s.pending), key=lambda s: s.last_served)
        taken: list[tuple[Source, Job]] = [(s, job) for s in ready if (job := s.take_job()) is not None]
        if not taken:
            return []
        keyed = []
        for source, job in taken:
            try:
                keyed.append((source, job, self.pipe.batch_key(job.request)))
            except Exception as exc:  # noqa: BLE001 - the pipeline refused this request: answer it, keep the rest
                self._finish([job], time.perf_counter(), error=exc)
        if not keyed:
            return []
        chosen, rest = [], []
        for source, job, key in keyed:
            fits = len(chosen) < self.max_batch and key == keyed[0][2]
            (chosen if fits else rest).append((source, job))
        for source, job in rest:
            source.return_job(job)
        now = time.monotonic()
        for source, _ in chosen:
            source.last_served = now
        return [job for _, job in chosen]

    def _run_batch(self, jobs: list[Job]) -> None:
        jobs = self._reject_invalid(jobs)
        if not jobs:
            return
        start = time.perf_counter()
        for job in jobs:
            self.metrics.queue_wait.observe(start - job.received_at)
        try:
            images = self._infer(jobs)
            flagged = self.safety(images) if self.safety is not None else [False] * len(images)
        except InvalidRequest as exc:
            if len(jobs) > 1:  # one bad request must not fail the others: run them one by one
                for job in jobs:
                    self._run_batch([job])
                return
            self._finish(jobs, start, error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - reported to exactly this batch's clients, logged, worker goes on
            log.error("inference failed for a batch of %d: %r", len(jobs), exc)
            self._finish(jobs, start, error=exc)
            return
        images = [np.zeros_like(im) if bad else im for im, bad in zip(images, flagged, strict=True)]
        self._finish(jobs, start, images=images, flagged=flagged)

    def _reject_invalid(self, jobs: list[Job]) -> list[Job]:
        """Answer requests the pipeline cannot run (`pipe.check`) before they could fail a whole batch."""
        check = getattr(self.pipe, "check", None)
        if check is None:
            return jobs
        valid = []
        for job in jobs:
            try:
                check(job.request)
            except InvalidRequest as exc:
                self._finish([job], time.perf_counter(), error=exc)
                continue
            valid.append(job)
        return valid

    def _infer(self, jobs: list[Job]) -> list[np.ndarray]:
        images = self.pipe([job.request for job in jobs], output_type="np")
        if len(images) != len(jobs):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(jobs)} requests")
        return images

    def _finish(self, jobs: list[Job], start: float, images: list[np.ndarray] | None = None,
                flagged: list[bool] | None = None, error: BaseException | None = None) -> None:
        inference_ms = (time.perf_counter() - start) * 1000.0
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.inference.observe(inference_ms / 1000.0)
        for i, job in enumerate(jobs):
            result = JobResult(
                image=None if images is None else images[i], error=error,
                queue_ms=(start - job.received_at) * 1000.0, inference_ms=inference_ms, batch_size=len(jobs),
                flagged=bool(flagged[i]) if flagged else False,
            )
            try:
                job.on_done(result)
            except Exception:  # a bug in one callback must not stop the others or the worker
                log.exception("job callback failed")


def make_request(params: GenerationParams, image: np.ndarray | None) -> Any:
    """An sdxs.GenerationRequest (imported here: it pulls in torch, which the loader thread has loaded already)."""
    from sdxs import GenerationRequest

    return GenerationRequest(params=params, image=image)


def _resolve(future: asyncio.Future, result: JobResult) -> None:
    if not future.done():
        future.set_result(result)


class _OneShot:
    """A source holding exactly one job (submit_one)."""

    def __init__(self, job: Job):
        self.last_served = 0.0
        self._job: Job | None = job
        self._lock = threading.Lock()

    @property
    def pending(self) -> bool:
        return self._job is not None

    def take_job(self) -> Job | None:
        with self._lock:
            job, self._job = self._job, None
            return job

    def return_job(self, job: Job) -> None:
        with self._lock:
            self._job = job
