"""Forward hooks that record intermediate features for feature KD and feature matching.

Hooks go on the *unwrapped* module's submodules (``accelerator.unwrap_model(model).down_blocks[i]``): DDP/FSDP wrappers
and ``torch.compile`` call the same submodules, and gradient checkpointing re-runs them (the recompute overwrites the
record with an identical tensor), so the recorded tensors stay part of the autograd graph in all of those settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


def _stage_output(module: nn.Module, output):
    """A stage's feature: up blocks and most modules return a tensor; down blocks return ``(hidden, residuals)``,
    and for them the feature is taken *before* the downsampler (``residuals[-2]``).  Reason: removing the lowest
    stage also removes the downsampler of the student's last kept stage, so only pre-downsampling features have the
    same shape in teacher stage i and student stage i."""
    if not isinstance(output, (tuple, list)):
        return output
    hidden, residuals = output[0], output[1] if len(output) > 1 else None
    if getattr(module, "downsamplers", None) is not None and residuals is not None and len(residuals) >= 2:
        return residuals[-2]
    return hidden


class FeatureRecorder:
    """Records the outputs of named submodules of ``model`` on every forward.

    ``paths`` maps a feature name to a dotted submodule path, e.g.
    ``{"down.0": "down_blocks.0", "up.1": "up_blocks.1"}``.  ``features[name]`` holds the latest output
    (B, C, H, W) with its graph.  Use as a context manager or call ``remove``.
    """

    def __init__(self, model: nn.Module, paths: Mapping[str, str]):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for name, path in paths.items():
            if path not in modules:
                raise KeyError(f"{type(model).__name__} has no submodule {path!r}")
            self._handles.append(modules[path].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, _inputs, output):
            self.features[name] = _stage_output(module, output)

        return hook

    def clear(self) -> None:
        self.features = {}

    def pop(self) -> dict[str, torch.Tensor]:
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def unet_stage_paths(down: Iterable[int] = (), up: Iterable[int] = ()) -> dict[str, str]:
    """Feature names ``down.i`` / ``up.i`` for the outputs of a diffusers UNet's down / up stages."""
    paths = {f"down.{i}": f"down_blocks.{i}" for i in down}
    paths.update({f"up.{i}": f"up_blocks.{i}" for i in up})
    return paths


def kd_pairs(stage_map, down: bool = True, up: bool = True) -> list[tuple[str, str]]:
    """(teacher feature name, student feature name) for every mapped stage of an ``sdxs.student.StageMap``."""
    pairs = [(f"down.{t}", f"down.{s}") for t, s in stage_map.down.items()] if down else []
    pairs += [(f"up.{t}", f"up.{s}") for t, s in stage_map.up.items()] if up else []
    return pairs
