"""Skip near-identical frames: a still camera never repeats its bytes, but it need not cost inference either.

In the spirit of StreamDiffusion's stochastic similarity filter (arXiv 2312.12491, section 3.4), on the worker's
staging thread, before a batch is staged. For every job whose parameters ask for it (`skip_threshold` > 0, a mode
with an input frame) the pipeline makes a small grey copy of the decoded frame on its device (`thumbnails`: THUMB
pixels square, antialiased, on its staging stream), which comes to the host (16 KB: the comparison never waits on
the models' stream, and a session's reference holds no device memory); its change is the largest, over a TILES x
TILES grid of regions, of the mean absolute difference from the copy of the last frame of that stream sent to the
model (grey levels 0-255). A region's mean averages camera noise away while a moved edge anywhere still shows in its
own region. The job is skipped (the stream answers it with the picture of that last generated frame, flag SKIPPED)
when:

* its change is below `skip_threshold`, and its parameters equal those of that frame (a new prompt is never skipped);
* its stream's history is settled (no smooth change under way, and latent feedback and the attention bank have
  had their still frames: `TemporalState.settled_for`; a kept frame whose change is under the threshold counts as
  still, `note_input`);
* fewer than `skip_max` frames in a row were skipped (so a slowly changing scene still updates).

Unlike StreamDiffusion's filter this one is deterministic: a frame under the threshold is skipped, up to the cap,
every time, so a test can pin what is skipped.  Every other job is kept and its copy becomes the stream's reference.
State (`SkipState`) is per stream and touched by the staging thread only (and reset by the stream from others).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the pipeline, on the loader thread: importing this module stays cheap
    import torch

    from server.engine import Engine
    from server.worker import Job

THUMB = 64  # side of the small copy (the served size when smaller)
TILES = 8  # regions per side over which changes are averaged


@dataclass
class SkipState:
    """One stream's reference: the small copy and parameters of its last frame sent to the model."""

    on_skip: Callable[[Any], None]  # answers a skipped job (its stream's previous picture); staging thread
    reference: torch.Tensor | None = None  # float32 (side, side) grey levels 0-255, on the CPU
    params: Any = None  # GenerationParams of that frame
    received_at: float | None = None  # that frame's receipt time: the reference is never compared with itself
    skipped: int = 0  # frames skipped in a row since
    last_change: float | None = None  # the change measured for the latest frame (tests, benchmarks)

    def reset(self) -> None:
        """Forget the reference (its picture did not come, or the stream moved): the next frame is generated."""
        self.reference = self.params = self.received_at = None
        self.skipped = 0


@dataclass
class _Candidate:
    job: Any
    state: SkipState
    change: float | None = None
    still: bool = False  # the change is under the threshold
    skip: bool = field(default=False)


def wants_filter(job: Job) -> bool:
    params = job.request.params
    return job.skip is not None and params.skip_threshold > 0 and params.uses_image and job.request.image is not None


def split(jobs: list[Job], engine: Engine) -> list[Job]:
    """Skip the jobs whose frame is nearly the last generated one of their stream (their `on_skip` answers them) and
    return the others, in order, each kept frame's stream told whether its input was still (`note_input`: by the
    change measured here, or by its bytes, `Job.still`, when its parameters do not ask for the filter)."""
    candidates = [_Candidate(job, job.skip) for job in jobs if job.skip is not None and wants_filter(job)]
    for job in jobs:
        if wants_filter(job):
            continue
        if job.skip is not None:
            job.skip.reset()
        temporal = job.request.temporal
        if temporal is not None:  # judged by its bytes alone (`Job.still`)
            temporal.note_input(job.still)
    if not candidates:
        return jobs
    side = min(THUMB, int(engine.size))
    thumbs = engine.thumbnails([c.job.request.image for c in candidates], side)
    _measure(candidates, thumbs)
    kept = []
    skipped = {id(c.job): c.state for c in candidates if c.skip}
    for i, c in enumerate(candidates):
        if c.skip:
            c.state.skipped += 1
            continue
        c.state.reference, c.state.params = thumbs[i], c.job.request.params
        c.state.received_at, c.state.skipped = c.job.received_at, 0
        if c.job.request.temporal is not None:
            c.job.request.temporal.note_input(c.still or c.job.still)
    for job in jobs:
        if id(job) in skipped:
            skipped[id(job)].on_skip(job)
        else:
            kept.append(job)
    return kept


def _measure(candidates: list[_Candidate], thumbs: torch.Tensor) -> None:
    """Each candidate's change from its reference, and whether it is skipped (module docstring)."""
    import torch

    compared = [i for i, c in enumerate(candidates) if _comparable(c)]
    if compared:
        references = torch.stack([candidates[i].state.reference for i in compared])
        changes = change(thumbs[compared], references).tolist()
        for i, value in zip(compared, changes):
            c = candidates[i]
            c.change = c.state.last_change = value
            p, temporal = c.job.request.params, c.job.request.temporal
            c.still = value < p.skip_threshold
            c.skip = c.still and c.state.skipped < p.skip_max and (temporal is None or temporal.settled_for(p))
    for c in candidates:
        if c.change is None:
            c.state.last_change = None


def _comparable(c: _Candidate) -> bool:
    s, request = c.state, c.job.request
    return s.reference is not None and s.params == request.params and s.received_at != c.job.received_at


def change(thumbs: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(B, S, S) and (B, S, S) grey copies -> (B,) the largest mean absolute difference over TILES x TILES regions."""
    batch, side, _ = thumbs.shape
    tiles = min(TILES, side)
    diff = (thumbs - references).abs()[:, : side // tiles * tiles, : side // tiles * tiles]
    cell = side // tiles
    return diff.reshape(batch, tiles, cell, tiles, cell).mean(dim=(2, 4)).amax(dim=(1, 2))
