"""Batch-size buckets: a batch runs padded up to the next bucket, so a captured CUDA graph exists for every batch.

A CUDA graph replays fixed shapes: one graph per batch size.  With buckets (1, 2, 4, 8, 16) five captures, all made
during warm-up, serve every batch of up to 16; a batch of 3 runs as 4, its last row repeated, and the extra output
is dropped.  Rows never interact in these models (no batch statistics), so padding does not change the real rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def default_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch`` itself: (1, 2, 4, 8) for 8, (1, 2, 4, 8, 12) for 12."""
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return (*sizes, max_batch)


def bucket(n: int, buckets: Sequence[int] | None) -> int:
    """The smallest bucket holding ``n`` rows (``n`` itself without buckets or beyond the largest)."""
    return min((b for b in buckets or () if b >= n), default=n)


def pad_rows(tensor: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """``tensor`` (B, ...) with its last row repeated up to ``rows`` rows (unchanged when it has them already)."""
    if tensor is None or tensor.shape[0] >= rows:
        return tensor
    extra = tensor[-1:].expand(rows - tensor.shape[0], *tensor.shape[1:])
    return torch.cat([tensor, extra])
