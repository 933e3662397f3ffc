"""Stage configs: dataclasses loaded from YAML/JSON files, with ``--set key=value`` command-line overrides.

``--set`` values are parsed as YAML scalars (``--set lr=1e-4 --set ema_decay=null --set data.path=/x``); dotted keys
reach nested dataclasses.  Unknown keys and values of the wrong type (``--set lr=fast``, ``--set max_steps=1e3``,
which YAML reads as a string) raise at once, before a stage loads anything, so a typo never silently trains the wrong
thing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml
from pydantic import TypeAdapter, ValidationError

C = TypeVar("C")


@dataclass
class DataConfig:
    """Where training images/captions come from.

    ``kind``: ``folder`` (image files with same-stem ``.txt`` captions), ``hf`` (a Hugging Face ``datasets`` name or
    local path with ``image_column``/``caption_column``; ``streaming`` reads it without downloading it first),
    ``webdataset`` (tar shards, ``path`` a glob or ``{00000..00099}`` pattern, read as streams), ``prompts`` (data-free:
    a text file of prompts, one per line,
    whose images the teacher generates with ``prompt_steps`` DDIM steps at guidance ``prompt_guidance``), or
    ``cached`` (a ``.pt`` written by ``training.data``).
    Images are squared as the server squares a frame (``sdxs.frames.square``: centre crop, one antialiased bilinear
    resize to ``resolution``); latents and prompt embeddings are cached under
    ``cache_dir`` (default: ``<output_dir>/cache``) on first use, and memory-mapped when read, so the processes of
    one machine share one copy through the page cache instead of each holding the whole dataset.
    """

    kind: str = "folder"
    path: str = ""
    split: str = "train"
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int = 512
    cache_dir: str = ""
    max_samples: int = 0  # the first rows only (0: all); with a stream, where reading stops
    streaming: bool = False  # kind hf: stream the dataset instead of downloading it whole
    # the cached prompt embeddings' dtype: float16 halves the largest part of a paper-scale cache (77x768 per row)
    embeds_dtype: str = "float32"  # float32 | float16
    prompt_steps: int = 25  # kind prompts: the teacher's sampler
    prompt_guidance: float = 7.5
    prompt_seed: int = 0


@dataclass
class TrainConfig:
    """What every stage shares: run bookkeeping, optimisation, checkpoints, logging, validation."""

    output_dir: str = "runs/stage"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-5
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    lr_warmup_steps: int = 0
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    checkpoint_every: int = 500
    checkpoint_limit: int | None = 3
    resume: str | None = "latest"  # latest | a checkpoint folder | null
    log_every: int = 10
    validate_every: int = 0  # 0: only at the end
    # save the trained models (EMA weights where tracked) as diffusers folders under snapshots/step_N/ every N steps,
    # so a stage's quality can be scored along its steps (``training.mini.diagnose``); 0: never
    snapshot_every: int = 0
    num_validation: int = 16
    progress: bool = True
    # seconds a collective (e.g. the barrier while rank 0 writes caches or ODE pairs) may wait before failing;
    # torch's default is 10 minutes, which a paper-scale cache outlasts
    collective_timeout_s: float = 7200.0
    data: DataConfig = field(default_factory=DataConfig)


def _coerce(tp: Any, value: Any) -> Any:
    """Turn YAML/JSON values into the field's type where that is unambiguous (lists -> tuples, dicts -> dataclasses)."""
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    origin = getattr(tp, "__origin__", None)
    if isinstance(value, list) and (origin is tuple or "tuple" in str(tp)):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _checked(cls: type, name: str, tp: Any, value: Any) -> Any:
    """``value`` validated and converted to the field's type by pydantic's lax mode: "1e-4" (YAML reads it as a
    string) becomes 0.0001 and 1000.0 becomes 1000, while "fast" for a float or "1e3" for an int raise."""
    if dataclasses.is_dataclass(tp) or tp is Any:
        return value
    try:
        return TypeAdapter(tp).validate_python(str(value) if isinstance(value, Path) else value)
    except ValidationError as exc:
        expected = "; ".join(error["msg"] for error in exc.errors()[:2])
        raise ValueError(f"{cls.__name__}.{name} = {value!r}: {expected}") from None


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    hints = get_type_hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise KeyError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**{k: _checked(cls, k, hints[k], _coerce(hints[k], v)) for k, v in values.items()})


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a ValueError naming ``name``, the bad ``value`` and the valid ``choices`` unless ``value`` is one of them
    (stages call it before loading anything, so a typo fails in a second)."""
    if value not in choices:
        raise ValueError(f"{name} {value!r}: expected one of {tuple(choices)}")


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = values
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = yaml.safe_load(raw)


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """``cls`` from a YAML/JSON file (or defaults) with ``key=value`` overrides applied in order."""
    values: dict[str, Any] = {}
    if path:
        text = Path(path).read_text()
        values = json.loads(text) if str(path).endswith(".json") else (yaml.safe_load(text) or {})
    for assignment in overrides:
        apply_override(values, assignment)
    return from_dict(cls, values)


def parse_args(cls: type[C], argv: Sequence[str] | None, description: str = "") -> C:
    """The standard stage command line: ``--config FILE`` and repeated ``--set key=value``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML or JSON file with the stage's config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.set)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(config))), sort_keys=False))
