"""Diagnostics of a training step: how hard each loss term pulls on the trained weights.

A stage with several loss terms (stage 4: score distillation, feature matching, the latent term, a GAN term) can log
each term's own gradient with respect to the trained parameters, computed on the same micro-batch before the summed
loss is backpropagated: its norm, and the cosine between two terms' gradients (do they agree, or cancel?).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import torch


def term_gradients(terms: Mapping[str, torch.Tensor], params: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each scalar loss term's gradient with respect to ``params``, flattened to one float64 vector (zeros where a
    term does not reach a parameter); the graph is kept for the summed loss's own backward."""
    params = [p for p in params if p.requires_grad]
    out = {}
    for name, term in terms.items():
        if not term.requires_grad:
            out[name] = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        out[name] = torch.cat([
            (g if g is not None else torch.zeros_like(p)).detach().double().flatten().cpu()
            for g, p in zip(grads, params)
        ])  # fmt: skip
    return out


def gradient_logs(terms: Mapping[str, torch.Tensor], params: Iterable[torch.Tensor], pairs=()) -> dict[str, float]:
    """``grad_norm/<term>`` for every term, ``grad_cos/<a>_<b>`` for each (a, b) of ``pairs`` (0 when either is 0),
    and ``diagnostic_seconds``, the time this took (stages leave it out of their step timings)."""
    started = time.perf_counter()
    grads = term_gradients(terms, params)
    logs = {f"grad_norm/{k}": float(g.norm()) for k, g in grads.items()}
    for a, b in pairs:
        denominator = float(grads[a].norm() * grads[b].norm())
        logs[f"grad_cos/{a}_{b}"] = float(grads[a] @ grads[b]) / denominator if denominator > 0 else 0.0
    logs["diagnostic_seconds"] = time.perf_counter() - started
    return logs
