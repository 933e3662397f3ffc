"""Derive a student UNet from a teacher by block removal, copying every kept block's weights (BK-SDM init).

A student stage ``i`` descends from teacher stage ``i`` (down path) and teacher up stage ``i + offset`` where
``offset`` is 1 when the lowest-resolution stage was removed.  ``stage_map`` gives those pairs for feature KD.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from sdxs.configs import RemovalRecipe


def _per_stage(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def student_config(teacher: Mapping[str, Any], recipe: RemovalRecipe) -> dict[str, Any]:
    """The diffusers UNet config of the student that ``recipe`` cuts from ``teacher`` (a UNet config)."""
    cfg = {k: v for k, v in teacher.items() if not k.startswith("_")}  # drop diffusers' bookkeeping keys
    n = len(cfg["block_out_channels"])
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    heads = _per_stage(cfg.get("attention_head_dim", 8), n)
    depth = _per_stage(cfg.get("transformer_layers_per_block", 1), n)
    channels = tuple(cfg["block_out_channels"])
    if recipe.drop_lowest_stage:
        down, up, heads, depth, channels = down[:-1], up[1:], heads[:-1], depth[:-1], channels[:-1]
    stages = len(down)
    for s in recipe.no_attention_stages:
        down[s] = "DownBlock2D"
        up[stages - 1 - s] = "UpBlock2D"
    layers = {len(k) for k in recipe.keep_down}
    if len(layers) != 1 or {len(k) for k in recipe.keep_up} != {layers.pop() + 1}:
        raise ValueError("keep_down needs one length for all stages and keep_up one more than it")
    cfg.update(
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=channels,
        layers_per_block=len(recipe.keep_down[0]),
        attention_head_dim=heads if len(set(heads)) > 1 else heads[0],
        transformer_layers_per_block=recipe.transformer_layers or (depth if len(set(depth)) > 1 else depth[0]),
    )
    if recipe.transformer_layers_up:
        cfg["reverse_transformer_layers_per_block"] = tuple(
            (d,) * (cfg["layers_per_block"] + 1) for d in recipe.transformer_layers_up
        )
    if recipe.drop_mid:
        cfg["mid_block_type"] = None
    if recipe.only_cross_attention_stages:
        cfg["only_cross_attention"] = tuple(s in recipe.only_cross_attention_stages for s in range(stages))
    return cfg


@dataclass(frozen=True)
class StageMap:
    """Teacher stage index -> student stage index, for the down and the up path."""

    down: dict[int, int]
    up: dict[int, int]


def stage_map(recipe: RemovalRecipe, student_stages: int) -> StageMap:
    offset = 1 if recipe.drop_lowest_stage else 0
    return StageMap(
        down={i: i for i in range(student_stages)},
        up={i + offset: i for i in range(student_stages)},
    )


_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")
_SAMPLERS = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.(.*)$")


def _teacher_key(key: str, recipe: RemovalRecipe, stages: int) -> str | None:
    """Map a student parameter name to the teacher parameter it is initialised from (None: no teacher source).

    Cross-attention-only transformers take their attn1 key/value projections from the teacher's attn2.
    """
    offset = 1 if recipe.drop_lowest_stage else 0
    if key.startswith("mid_block."):
        return None
    if m := _BLOCK.match(key):
        path, stage, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        keep = recipe.keep_down if path == "down_blocks" else recipe.keep_up
        t_stage = stage if path == "down_blocks" else stage + offset
        resolution = stage if path == "down_blocks" else stages - 1 - stage
        if kind == "attentions" and resolution in recipe.only_cross_attention_stages:
            rest = re.sub(r"\.attn1\.to_([kv])\.", r".attn2.to_\1.", rest)
        return f"{path}.{t_stage}.{kind}.{keep[stage][j]}.{rest}"
    if m := _SAMPLERS.match(key):
        path, stage = m.group(1), int(m.group(2))
        t_stage = stage if path == "down_blocks" else stage + offset
        return f"{path}.{t_stage}.{m.group(3)}.{m.group(4)}"
    return key


def derive_student(
    teacher: UNet2DConditionModel, recipe: RemovalRecipe, *, strict: bool = True
) -> UNet2DConditionModel:
    """Build the student that ``recipe`` cuts from ``teacher`` and copy every kept block's weights.

    Cross-attention-only transformers (``only_cross_attention``) take their attn1 key/value projections from the
    teacher's attn2 (the shapes of a cross-attention).  With ``strict`` every student weight must find a teacher
    weight of the same shape, else ``ValueError`` lists the ones that did not.
    """
    config = student_config(teacher.config, recipe)
    student = UNet2DConditionModel.from_config(config).to(device=teacher.device, dtype=teacher.dtype)
    source = teacher.state_dict()
    copied, missing = {}, []
    stages = len(student.down_blocks)
    for key, value in student.state_dict().items():
        t_key = _teacher_key(key, recipe, stages)
        if t_key is not None and t_key in source and source[t_key].shape == value.shape:
            copied[key] = source[t_key]
        else:
            missing.append(key)
    if strict and missing:
        raise ValueError(f"{len(missing)} student weights have no teacher source, e.g. {missing[:5]}")
    with torch.no_grad():
        student.load_state_dict(copied, strict=False)
    return student
