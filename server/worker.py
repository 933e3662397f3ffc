"""The inference worker: batches the newest frames of all ready sources into engine calls, in two stages.

A *source* is anything with a one-slot mailbox: a WebSocket connection (server/connection.py) or a one-shot request
from `submit_one` (Gradio). Each round the scheduler orders the sources with a pending job by start-time fair queuing
(a source's start tag is the tag of its last frame plus one, never below the smallest tag of the last batch: sessions
that stream at once get equal numbers of frames, and one that arrives or returns from a pause starts level with the
most-starved one, not ahead), groups jobs whose `engine.batch_key` is equal, and takes the most-starved group, up to
`max_batch` requests, for ONE engine call. Jobs that did not fit go back to their (one-slot) mailboxes unless a newer
frame arrived meanwhile. An exception in the engine reaches only the jobs of that batch; the threads go on.

The engine is anything that satisfies server.engine.Engine (sdxs.SDXSPipeline; the tests' fake).  Stages
(`overlap`, the default): the staging thread ("sdxs-stage") takes batch n+1 from the mailboxes, decodes its frames
(`decode`: a bad frame is answered at once and leaves the batch), checks each request once (`engine.check`: one the
engine cannot run is answered at once and leaves the batch) and runs `engine.stage` (squaring, control images,
uploads) while the model thread ("sdxs-worker") runs `engine.run` on batch n; outputs come back as one host buffer
per batch and are encoded by the sources on the codec threads while batch n+1 runs.  On CUDA the model thread does
not wait for a batch to finish: a completion thread waits for its copy to the host and hands the results out.
Warm-up (CUDA graph capture) runs on the model thread, the thread that replays the graphs, before the worker counts
as ready.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from sdxs.errors import InvalidRequest
from sdxs.params import GenerationParams, GenerationRequest
from server import skipfilter
from server.engine import Engine, Staged
from server.metrics import Metrics
from server.skipfilter import SkipState

if TYPE_CHECKING:
    from sdxs.pipeline import HostFrames

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
    stage_ms: float = 0.0  # the batch's decode and staging (before inference)
    skipped: bool = False  # the skip filter answered it: no image, the stream's previous picture stands


@dataclass(frozen=True, slots=True)
class Job:
    request: GenerationRequest
    received_at: float  # time.perf_counter() when the input arrived
    on_done: Callable[[JobResult], None]  # called on the worker thread; must be quick and not raise
    tag: object = None  # the source's own handle for the job (e.g. the input frame, for return_job)
    skip: SkipState | None = None  # the source's skip filter (server/skipfilter.py); None: always generated
    still: bool = False  # input bytes and parameters equal those of the source's last generated frame


class Source(Protocol):
    last_served: float

    @property
    def pending(self) -> bool: ...

    def take_job(self) -> Job | None:
        """Remove and return the pending job, or None (nothing pending, or answered without inference)."""

    def return_job(self, job: Job) -> None:
        """Give back a job that did not fit in this round's batch (dropped if a newer one arrived)."""

    def moved(self, device: str) -> None:
        """server/devices.py moved this source to `device` (its own device kept failing); any thread."""


class Worker:
    """Owns one device's engine once loaded; every inference on that device goes through `_run_batch` on one
    thread.  With `--devices`, server/devices.py runs one Worker per device and places sessions among them."""

    def __init__(self, engine: Engine, metrics: Metrics, max_batch: int = 8, batch_wait_ms: float = 0.0,
                 safety: Callable[[list[np.ndarray]], list[bool]] | None = None,
                 decode: Callable[[list[object]], list[object]] | None = None, overlap: bool = True):
        """`decode(images)`: the requests' images decoded (what it does not decode passes through; an exception in
        place of a frame answers that job with it).  `overlap`: stage the next batch on a thread of its own."""
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.safety = safety
        self.decode = decode
        self.overlap = overlap
        self.warm = threading.Event()  # set once warm-up has run on the model thread
        self.failed: BaseException | None = None  # the warm-up's exception
        # after each pipeline call that ran, on the thread that finished it: (batch size, None or the exception);
        # server/devices.py counts a device's faults with it
        self.on_batch: Callable[[int, BaseException | None], None] | None = None
        self._warmup: Callable[[], None] | None = None
        self._sources: list[Source] = []
        self._vtime = 0.0  # fair queuing: the smallest start tag of the last batch
        self._finish_tags: dict[int, float] = {}  # id(source) -> start tag of its last frame + 1
        self._wake = threading.Condition()
        self._stopping = False
        self._staged: _Batch | None = None  # the hand-off from the staging thread to the model thread
        self._threads = [threading.Thread(target=self._run, name="sdxs-worker", daemon=True)]
        if overlap:
            self._threads.append(threading.Thread(target=self._stage_loop, name="sdxs-stage", daemon=True))
        self._completer: ThreadPoolExecutor | None = None  # CUDA: waits for a batch's copy to the host
        # counted when scraped, never stored: a stored count went stale when sessions left between rounds
        metrics.pending.set_function(self.pending_count)

    # --- lifecycle --------------------------------------------------------------------------------------------
    def start(self, warmup: Callable[[], None] | None = None) -> None:
        """Start the threads; `warmup` runs first on the model thread (`warm` is set after it, `failed` if it
        raised)."""
        self._warmup = warmup
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the batch in progress; waits at most `timeout` (the threads are daemons: the server passes a
        short one, so that a long batch on a slow device cannot hold up its exit)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self.join(timeout)
        if self._completer is not None:
            self._completer.shutdown(wait=False)

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` for the threads to end (after `stop`); True when they have."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def register(self, source: Source) -> None:
        with self._wake:
            self._sources.append(source)
            self._finish_tags[id(source)] = self._vtime

    def unregister(self, source: Source) -> None:
        with self._wake:
            if source in self._sources:
                self._sources.remove(source)
            self._finish_tags.pop(id(source), None)

    def pending_count(self) -> int:
        """Sources with a job waiting (`sdxs_pending_frames`)."""
        with self._wake:
            return sum(s.pending for s in self._sources)

    def notify(self) -> None:
        """A source has a new pending job (thread-safe)."""
        with self._wake:
            self._wake.notify_all()

    # --- one-shot requests (Gradio and other non-WebSocket callers) ---------------------------------------------
    async def submit_one(self, params: GenerationParams, image: np.ndarray | None,
                         live: LiveStream | None = None) -> np.ndarray | None:
        """Run one request through the same scheduler; `image` uint8 RGB (H, W, 3) of any size (the engine squares
        it) or None.  `live`: the caller's stream (a Gradio webcam viewer's), for its history and skip filter.

        Returns uint8 RGB (size, size, 3), or None when the skip filter skipped the frame (the previous picture
        stands). Raises InvalidRequest or InferenceError.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobResult] = loop.create_future()

        def done(result: JobResult) -> None:
            loop.call_soon_threadsafe(_resolve, future, result)

        skip = None
        if live is not None:
            skip = live.skip_state(lambda job: job.on_done(JobResult(None, None, 0.0, 0.0, 0, skipped=True)))
        job = Job(GenerationRequest(params, image, live.temporal if live else None), time.perf_counter(), done,
                  skip=skip)
        source = _OneShot(job)
        self.register(source)
        self.notify()
        try:
            result = await future
        finally:
            self.unregister(source)
        if result.error is not None:
            if live is not None and live.skip is not None:
                live.skip.reset()
            if isinstance(result.error, InvalidRequest):
                raise result.error
            raise InferenceError(str(result.error)) from result.error
        if result.skipped:
            return None
        return np.array(result.image)  # a copy: the row is a view of the batch's host buffer

    # --- the model thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        if self._warmup is not None:
            try:
                self._warmup()
            except BaseException as exc:  # noqa: BLE001 - reported by the loader (stage "failed")
                log.exception("warm-up failed")
                self.failed = exc
                return
        self.warm.set()
        log.info("worker started (max_batch=%d, overlap=%s)", self.max_batch, self.overlap)
        while (batch := self._take_staged() if self.overlap else self._stage_next()) is not _STOP:
            try:
                if isinstance(batch, _Batch):
                    self._run_batch(batch)
            except Exception:  # a bug here must not kill inference for everyone: log it loudly and go on
                log.exception("worker round failed")
        log.info("worker stopped")

    def _take_staged(self) -> _Batch | object:
        with self._wake:
            self._wake.wait_for(lambda: self._stopping or self._staged is not None)
            if self._stopping:
                return _STOP
            batch, self._staged = self._staged, None
            self._wake.notify_all()  # the staging thread may take the next batch
            return batch

    def _wait_for_work(self, also: Callable[[], bool] = lambda: True) -> bool:
        """Wait (holding `_wake`) until a source has a job and `also()`; then, with --batch-wait-ms, a moment more
        for the other sessions. False when stopping."""
        self._wake.wait_for(lambda: self._stopping or (also() and any(s.pending for s in self._sources)))
        if self.batch_wait_s:  # gather: give just-answered sessions a moment to send their next frame
            self._wake.wait_for(lambda: self._stopping or self._all_pending(), timeout=self.batch_wait_s)
        return not self._stopping

    def _stage_next(self) -> _Batch | object | None:
        """Without overlap: the next batch, staged on the model thread itself."""
        with self._wake:
            if not self._wait_for_work():
                return _STOP
        return self._stage(self._next_batch())

    # --- the staging thread -------------------------------------------------------------------------------------
    def _stage_loop(self) -> None:
        while not self.warm.wait(0.2):
            if self._stopping or self.failed is not None:
                return
        while True:
            with self._wake:
                if not self._wait_for_work(lambda: self._staged is None):
                    return
            try:
                batch = self._stage(self._next_batch())
            except Exception:  # noqa: BLE001 - a bug: logged; the jobs taken are lost, the thread goes on
                log.exception("staging a batch failed")
                continue
            if batch is not None:
                with self._wake:
                    self._staged = batch
                    self._wake.notify_all()

    def _all_pending(self) -> bool:
        """Every source (up to max_batch of them) has a frame waiting: no reason to wait longer."""
        return sum(s.pending for s in self._sources) >= min(self.max_batch, len(self._sources))

    def _next_batch(self) -> list[Job]:
        """Take the most-starved compatible group of pending jobs (at most max_batch); return the rest."""
        with self._wake:
            ready = [s for s in self._sources if s.pending]
            start = {id(s): max(self._vtime, self._finish_tags.get(id(s), self._vtime)) for s in ready}
            ready.sort(key=lambda s: (start[id(s)], s.last_served))
        taken: list[tuple[Source, Job]] = [(s, job) for s in ready if (job := s.take_job()) is not None]
        if not taken:
            return []
        keyed = []
        for source, job in taken:
            try:
                keyed.append((source, job, self.engine.batch_key(job.request)))
            except Exception as exc:  # noqa: BLE001 - the engine refused this request: answer it, keep the rest
                self._finish([job], time.perf_counter(), error=exc)
        if not keyed:
            return []
        chosen: list[tuple[Source, Job]] = []
        rest: list[tuple[Source, Job]] = []
        for source, job, key in keyed:
            fits = len(chosen) < self.max_batch and key == keyed[0][2]
            (chosen if fits else rest).append((source, job))
        for source, job in rest:
            source.return_job(job)
        now = time.monotonic()
        with self._wake:
            if chosen:
                self._vtime = min(start[id(source)] for source, _ in chosen)
            for source, _ in chosen:
                source.last_served = now
                if id(source) in self._finish_tags:  # not unregistered meanwhile
                    self._finish_tags[id(source)] = start[id(source)] + 1.0
        return [job for _, job in chosen]

    def _stage(self, jobs: list[Job]) -> _Batch | None:
        """Decode the batch's frames and check its requests (answering the ones that fail), run `engine.stage`."""
        start = time.perf_counter()
        jobs = self._skip_similar(self._checked(self._decoded(jobs)))
        if not jobs:
            return None
        batch = _Batch(jobs)
        try:
            batch.staged = self.engine.stage([job.request for job in jobs], checked=True)
        except Exception as exc:  # noqa: BLE001 - answered by the model thread, to exactly this batch
            batch.error = exc
        batch.stage_ms = (time.perf_counter() - start) * 1000.0
        return batch

    def _decoded(self, jobs: list[Job]) -> list[Job]:
        if self.decode is None or not jobs:
            return jobs
        try:
            images = self.decode([job.request.image for job in jobs])
        except Exception as exc:  # noqa: BLE001 - a decoder bug: this batch's clients are told, the thread goes on
            log.exception("decoding a batch failed")
            self._finish(jobs, time.perf_counter(), error=exc)
            return []
        kept = []
        for job, image in zip(jobs, images, strict=True):
            if isinstance(image, BaseException):  # bad_image: answered now, never in the batch
                self._finish([job], time.perf_counter(), error=image)
            elif image is job.request.image:
                kept.append(job)
            else:
                kept.append(dataclasses.replace(job, request=dataclasses.replace(job.request, image=image)))
        return kept

    def _skip_similar(self, jobs: list[Job]) -> list[Job]:
        """The skip filter (server/skipfilter.py): frames nearly equal to their stream's last generated one are
        answered with its picture and leave the batch."""
        if not any(job.skip is not None or job.request.temporal is not None for job in jobs):
            return jobs
        try:
            return skipfilter.split(jobs, self.engine)
        except Exception:  # noqa: BLE001 - a bug in an optimisation: logged loudly, and every frame is generated
            log.exception("the skip filter failed on a batch of %d; generating every frame", len(jobs))
            for job in jobs:
                if job.skip is not None:
                    job.skip.reset()
            return jobs

    def _checked(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose requests the engine can run (`engine.check`, once per frame); the others are answered."""
        valid = []
        for job in jobs:
            try:
                self.engine.check(job.request)
            except InvalidRequest as exc:
                self._finish([job], time.perf_counter(), error=exc)
                continue
            valid.append(job)
        return valid

    # --- running a batch (model thread) ---------------------------------------------------------------------------
    def _run_batch(self, batch: _Batch) -> None:
        jobs, start = batch.jobs, time.perf_counter()
        if not jobs:
            return
        for job in jobs:
            self.metrics.queue_wait.observe(start - job.received_at)
        try:
            if batch.error is not None:
                raise batch.error
            assert batch.staged is not None
            host = self.engine.to_host(self.engine.run(batch.staged))
        except Exception as exc:  # noqa: BLE001 - reported to exactly this batch's clients, logged, worker goes on
            log.error("inference failed for a batch of %d: %r", len(jobs), exc)
            self._finish(jobs, start, error=exc, stage_ms=batch.stage_ms)
            self._batch_done(len(jobs), exc)
            return
        if not host.pending:
            self._finish_images(batch, start, host.arrays())
            return
        if self._completer is None:
            self._completer = ThreadPoolExecutor(1, thread_name_prefix="sdxs-complete")
        self._completer.submit(self._complete, batch, start, host)

    def _complete(self, batch: _Batch, start: float, host: HostFrames) -> None:
        """CUDA: wait for the batch's copy to the host, then hand out the rows (off the model thread)."""
        try:
            self._finish_images(batch, start, host.arrays())
        except Exception as exc:  # noqa: BLE001 - reported to exactly this batch's clients
            log.error("inference failed for a batch of %d: %r", len(batch.jobs), exc)
            self._finish(batch.jobs, start, error=exc, stage_ms=batch.stage_ms)
            self._batch_done(len(batch.jobs), exc)

    def _finish_images(self, batch: _Batch, start: float, images: list[np.ndarray]) -> None:
        if not batch.jobs:
            return
        try:
            flagged = self.safety(images) if self.safety is not None else [False] * len(images)
        except Exception as exc:  # noqa: BLE001 - the checker failed: this batch's clients are told
            log.error("safety check failed for a batch of %d: %r", len(images), exc)
            self._finish(batch.jobs, start, error=exc, stage_ms=batch.stage_ms)
            return
        images = [np.zeros_like(im) if bad else im for im, bad in zip(images, flagged, strict=True)]
        self._finish(batch.jobs, start, images=images, flagged=flagged, stage_ms=batch.stage_ms)
        self._batch_done(len(batch.jobs), None)

    def _batch_done(self, size: int, error: BaseException | None) -> None:
        if self.on_batch is None:
            return
        try:
            self.on_batch(size, error)
        except Exception:  # a bug in the listener must not stop the worker
            log.exception("batch listener failed")

    def _finish(self, jobs: list[Job], start: float, images: list[np.ndarray] | None = None,
                flagged: list[bool] | None = None, error: BaseException | None = None, stage_ms: float = 0.0) -> None:
        inference_ms = (time.perf_counter() - start) * 1000.0
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.inference.observe(inference_ms / 1000.0)
        for i, job in enumerate(jobs):
            result = JobResult(
                image=None if images is None else images[i], error=error,
                queue_ms=(start - job.received_at) * 1000.0, inference_ms=inference_ms, batch_size=len(jobs),
                flagged=bool(flagged[i]) if flagged else False, stage_ms=stage_ms,
            )
            try:
                job.on_done(result)
            except Exception:  # a bug in one callback must not stop the others or the worker
                log.exception("job callback failed")


@dataclass(slots=True)
class _Batch:
    """Jobs taken together, and what `engine.stage` made of them (or the exception it raised)."""

    jobs: list[Job]
    staged: Staged | None = None
    error: BaseException | None = None
    stage_ms: float = 0.0


_STOP = object()


class LiveStream:
    """What a live stream keeps between its frames: its history for the pipeline (sdxs.temporal.TemporalState: the
    last latent, the attention bank, smooth changes) and its skip filter's reference.  One per WebSocket session or
    Gradio webcam viewer; `release` frees it when the stream ends."""

    def __init__(self) -> None:
        from sdxs.temporal import TemporalState

        self.temporal = TemporalState()
        self.skip: SkipState | None = None

    def skip_state(self, on_skip: Callable[[Job], None]) -> SkipState:
        if self.skip is None:
            self.skip = SkipState(on_skip)
        self.skip.on_skip = on_skip
        return self.skip

    def release(self) -> None:
        self.temporal.release()
        if self.skip is not None:
            self.skip.reset()


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

    def moved(self, device: str) -> None:
        """A one-shot request needs not know where it ran."""
