"""What ``torch.compile`` does while a block runs: frames traced by dynamo, CUDA graphs recorded, graphs skipped.

cudagraph trees (``mode="reduce-overhead"``) do not record a graph on a function's first call: the first run is an
eager warm-up, a later call of the same path records, and only the calls after that replay.  So a warm-up that calls
every path once still leaves recordings for live traffic.  ``GraphActivity`` counts them, so a warm-up can repeat its
passes until one records and compiles nothing (``SDXSPipeline.warmup``).

Counted through dynamo's compilation callbacks (``torch._dynamo.callback``: a start callback per compile and per
cudagraph recording) and its ``counters`` (``cudagraph_skips``: a compiled function that cudagraph trees refused to
record, e.g. for a CPU tensor or a mutated input, and therefore runs without a graph).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Activity:
    """Counts over one block: dynamo compiles, cudagraph recordings, cudagraph skips."""

    compiles: int = 0
    recordings: int = 0
    skips: int = 0

    @property
    def quiet(self) -> bool:
        """Nothing was compiled or recorded: every call replayed (or ran eagerly, uncompiled)."""
        return self.compiles == 0 and self.recordings == 0

    def as_dict(self) -> dict[str, int]:
        return {"compiles": self.compiles, "recordings": self.recordings, "cudagraph_skips": self.skips}


class GraphActivity:
    """Context manager: ``with GraphActivity() as activity: ...`` then ``activity.result`` (an ``Activity``).

    Counts process-wide while active (dynamo's callbacks are global), so use it on the thread that owns the compiled
    modules while no other pipeline compiles: a warm-up runs before its device serves.
    """

    _lock = threading.Lock()

    def __init__(self) -> None:
        self.result = Activity()
        self._compiles = self._recordings = 0
        self._skips_before = 0

    def __enter__(self) -> GraphActivity:
        from torch._dynamo.callback import CallbackTrigger, callback_handler

        self._triggers = CallbackTrigger
        self._handler = callback_handler
        self._skips_before = _skips()
        callback_handler.register_start_callback(self._on_start)
        return self

    def __exit__(self, *exc) -> None:
        self._handler.remove_start_callback(self._on_start)
        self.result = Activity(self._compiles, self._recordings, _skips() - self._skips_before)

    def _on_start(self, args) -> None:
        with self._lock:
            if args.callback_trigger is self._triggers.CUDAGRAPH_RECORDING:
                self._recordings += 1
            elif args.callback_trigger is self._triggers.DYNAMO:
                self._compiles += 1


def _skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])
