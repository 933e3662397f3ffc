"""A file every process of a run needs, made once and shared out: each process makes its share, the main process
merges the shares (the latent caches of ``training.data``, the ODE pairs of ``training.stages.onestep_pairs``, the
decoder stage's teacher and one-step samples)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a reader never sees half a file, and concurrent writers (one
    temporary name per process) do not collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def make_once(
    accelerator, path: Path, make: Callable[[int, int], Any], merge: Callable[[list], Any], missing: bool | None = None
) -> None:
    """Write ``path`` unless it is there (or unless ``missing`` says otherwise): every process makes its share
    ``make(rank, world)``; the shares go to ``<stem>.shard<rank>.pt`` (with one process, straight to ``merge``) and
    the main process writes ``merge(shares)`` to ``path`` and removes them.  Every process must call this; it returns
    once ``path`` is there for all of them."""
    missing = not path.exists() if missing is None else missing
    accelerator.wait_for_everyone()  # every process has looked before any writes
    if missing:
        rank, world = accelerator.process_index, accelerator.num_processes
        share = make(rank, world)
        if world == 1:
            save_atomic(merge([share]), path)
        else:
            shards = [path.with_name(f"{path.stem}.shard{r}.pt") for r in range(world)]
            save_atomic(share, shards[rank])
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_atomic(merge([torch.load(p, weights_only=False) for p in shards]), path)
                for p in shards:
                    p.unlink()
    accelerator.wait_for_everyone()
