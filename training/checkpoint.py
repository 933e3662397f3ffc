"""Checkpoints: accelerate ``save_state``/``load_state`` folders ``<output_dir>/checkpoints/step_NNNNNNN``.

A checkpoint holds every ``accelerator.prepare``d model, optimiser and lr scheduler, every object registered with
``register_for_checkpointing`` (the ``TrainState`` below, EMA models), and the Python/NumPy/torch RNG states of every
process.  Resuming from it on CPU continues bit-exactly (tests/training/test_checkpoint.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_NAME = re.compile(r"^step_(\d+)$")


class TrainState:
    """The step counter (checkpointed with the models).  The random draws are keyed by the step
    (``training.draws.StepDraws``), so the counter is all a resume needs."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])  # checkpoints from before StepDraws also hold a generator: not needed


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """``latest`` -> the newest checkpoint (or None for a fresh run); a path -> that path; None -> None."""
    if not resume:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def save_checkpoint(accelerator, output_dir: str | Path, step: int, limit: int | None) -> Path:
    """Save the full training state at ``step`` (all processes must call this), then keep only ``limit`` newest."""
    path = Path(output_dir) / "checkpoints" / f"step_{step:07d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process and limit:
        for old in checkpoints(output_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path
