"""A training step's random draws, independent of how its global batch is split over processes and micro-batches.

A step's global batch has ``G = batch_size * processes * grad_accum`` rows.  Row ``i`` of the ``j``-th draw of phase
``p`` (e.g. the ``p``-th fake-model update) of step ``s`` comes from its own generator, seeded from
``(seed, s, p, j, i)``.  A process that holds rows ``[a, b)`` therefore gets exactly the numbers a single process
holding all ``G`` rows gets there: two processes at ``batch_size`` B, one process at 2B and one process at B with
``grad_accum`` 2 see the same prompts, noise and timesteps and, since every loss is a mean over rows, take the same
optimiser steps up to floating-point summation order (``tests/training/test_multiprocess.py``).  Resuming needs only
the step counter: nothing else to restore, so a resumed run continues bit-exactly.

Micro-batch ``k`` of process ``r`` holds global rows ``[(k * processes + r) * B, ... + B)``.
"""

from __future__ import annotations

import numpy as np
import torch


def row_seed(*key: int) -> int:
    """A 63-bit seed from a tuple of non-negative ints (NumPy's SeedSequence: well mixed, stable across versions)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class StepDraws:
    """Per-row random draws for one process.  Call ``start(step, phase, micro)`` before each micro-batch's draws; the
    draws of a phase must come in the same order in every micro-batch and process (they do: it is the same code)."""

    def __init__(self, seed: int, batch_size: int, rank: int = 0, world: int = 1, accum: int = 1):
        if batch_size < 1 or world < 1 or accum < 1 or not 0 <= rank < world:
            raise ValueError(f"StepDraws: batch_size {batch_size}, rank {rank} of {world}, accum {accum}")
        self.seed, self.batch_size, self.rank, self.world, self.accum = seed, batch_size, rank, world, accum
        self.start(0)

    def start(self, step: int, phase: int = 0, micro: int = 0) -> StepDraws:
        """Draw the rows of micro-batch ``micro`` (of ``accum``) of ``phase`` of ``step`` from now on."""
        if not 0 <= micro < self.accum:
            raise ValueError(f"micro-batch {micro}: expected 0..{self.accum - 1}")
        first = (micro * self.world + self.rank) * self.batch_size
        self.rows = range(first, first + self.batch_size)
        self.key, self.count = (self.seed, step, phase), 0
        return self

    def _generators(self) -> list[torch.Generator]:
        draw, self.count = self.count, self.count + 1
        return [torch.Generator().manual_seed(row_seed(*self.key, draw, row)) for row in self.rows]

    def randn(self, shape, device=None) -> torch.Tensor:
        """(B, *shape) standard normal float32."""
        return torch.stack([torch.randn(tuple(shape), generator=g) for g in self._generators()]).to(device)

    def rand(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """(B,) uniform in [0, 1)."""
        return torch.stack([torch.rand((), generator=g, dtype=dtype) for g in self._generators()]).to(device)

    def randint(self, high: int, device=None, low: int = 0) -> torch.Tensor:
        """(B,) int64 in [low, high)."""
        return torch.stack([torch.randint(low, high, (), generator=g) for g in self._generators()]).to(device)

    def sample(self, bank, device=None) -> dict[str, torch.Tensor]:
        """B rows of a ``training.data.Bank`` drawn with replacement (floating tensors as float32)."""
        return bank.take(self.randint(len(bank)), device)
