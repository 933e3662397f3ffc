"""Per-request generation parameters: one pydantic model validates input and, via its JSON schema, drives UI controls.

SDXS runs one step with guidance 0: there is no negative prompt and no guidance scale to set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, cast

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import JsonDict

if TYPE_CHECKING:
    from sdxs.temporal import TemporalState

MAX_PROMPT_CHARS = 1000  # CLIP sees 77 tokens; longer prompts are truncated by the tokenizer, absurd ones refused

# Live video (issue 23; sdxs/temporal.py, server/skipfilter.py).  Each field's "live_default" is what a live client
# (the page, Gradio's webcam tab) starts with; the plain defaults leave every frame generated on its own, as before.
# "video": the field serves moving pictures (a camera, a screen, a video file); inputs that repeat exactly (a sketch,
# a prompt alone) are answered from the server's cache and take the plain default.
# "Stability" presets a live client offers: values of `feedback` and `bank`, chosen by bench/temporal.py (bench/
# README.md): feedback 0.5 is the strongest whose lag stays within 3 frames in every mode; the attention bank showed no
# effect on the shipped miniature and costs time, so no preset turns it on.
STABILITY_PRESETS = {
    "off": {"feedback": 0.0, "bank": 0.0},
    "smooth": {"feedback": 0.3, "bank": 0.0},
    "steady": {"feedback": 0.5, "bank": 0.0},
}
LIVE_STABILITY = "steady"


class Mode(StrEnum):
    """What the input image is used for."""

    text = "text"  # no input image: text to image
    image = "image"  # image to image: tiny-encode, noise to the strength's timestep, one step
    sketch = "sketch"  # ControlNet on a sketch (dark strokes on light; inverted for the released model)
    edges = "edges"  # ControlNet on edges extracted from a photo or webcam frame (style transfer)


# What each mode takes as its input frame, in the JSON schema of `mode` ("inputs"): nothing, any picture, a photo (a
# camera, a screen, a video: edges are found in it) or a drawing (dark strokes on light paper).  A page offers the
# modes that fit its source from this, and the worker asks for a frame where it is not "none".
MODE_INPUTS = {Mode.text: "none", Mode.image: "picture", Mode.sketch: "drawing", Mode.edges: "photo"}
CONTROL_MODES = (Mode.sketch, Mode.edges)  # the modes that run the ControlNet on a control image


def _modes(*modes: Mode) -> JsonDict:
    """`json_schema_extra` of a field that applies in `modes` only (the page hides it in the others)."""
    return {"modes": [m.value for m in modes]}


def _video(live_default: float | int) -> JsonDict:
    """json_schema_extra of a live-video field: the modes with an input frame, "video" and what a live client starts
    with."""
    return {"modes": [m.value for m, kind in MODE_INPUTS.items() if kind != "none"], "video": True,
            "live_default": live_default}


Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)]


class GenerationParams(BaseModel):
    """What a visitor can set per request.  NaN and infinities are refused; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_enum_values=False, frozen=True,
                              json_schema_extra=cast(JsonDict, {"stability_presets": STABILITY_PRESETS,
                                                                "live_stability": LIVE_STABILITY}))

    prompt: Prompt = Field("a photo of a cat, highly detailed", title="Prompt", description="What to generate.")
    mode: Mode = Field(Mode.image, title="Mode", description="How the input frame is used.",
                       json_schema_extra={"inputs": {m.value: kind for m, kind in MODE_INPUTS.items()},
                                          "control": [m.value for m in CONTROL_MODES]})
    seed: int = Field(0, ge=0, le=2**32 - 1, title="Seed", description="Same seed + same input = same image.")
    strength: float = Field(
        0.5, ge=0.02, le=1.0, title="Strength", description="Image mode: how far from the input (1 = ignore it).",
        json_schema_extra=_modes(Mode.image),
    )
    control_scale: float = Field(
        0.8, ge=0.0, le=1.0, title="Control scale", description="Sketch and edge modes: how closely to follow lines.",
        json_schema_extra=_modes(*CONTROL_MODES),
    )
    style: str | None = Field(None, max_length=64, title="Style", description="A loaded style adapter (LoRA) or none.")
    edge_low: int = Field(80, ge=0, le=255, title="Edge low threshold", description="Edge mode: Canny low threshold.",
                          json_schema_extra=_modes(Mode.edges))
    edge_high: int = Field(160, ge=0, le=255, title="Edge high threshold",
                           description="Edge mode: Canny high threshold.", json_schema_extra=_modes(Mode.edges))
    feedback: float = Field(
        0.0, ge=0.0, le=0.9, title="Latent feedback",
        description="Live video: how much of the previous picture is blended into the next (steadier; more trails "
                    "behind motion). 0 = off.",
        json_schema_extra=_video(STABILITY_PRESETS[LIVE_STABILITY]["feedback"]),
    )
    bank: float = Field(
        0.0, ge=0.0, le=1.0, title="Attention bank",
        description="Live video: how strongly the model also looks at the last frames' features (StreamV2V's "
                    "feature bank). 0 = off.",
        json_schema_extra=_video(STABILITY_PRESETS[LIVE_STABILITY]["bank"]),
    )
    transition_frames: int = Field(
        0, ge=0, le=60, title="Smooth changes",
        description="Live video: a new prompt, seed or style blends in over this many frames. 0 = at once.",
        json_schema_extra={"live_default": 8},
    )
    skip_threshold: float = Field(
        0.0, ge=0.0, le=10.0, title="Skip still frames",
        description="Live video: a frame that differs from the last generated one by less than this (grey levels, "
                    "in its most changed region of a small copy) gets that picture again, without inference. 0 = off.",
        json_schema_extra=_video(1.5),
    )
    skip_max: int = Field(
        10, ge=1, le=120, title="Longest skip run",
        description="Live video: after this many skipped frames in a row the next one is generated anyway.",
        json_schema_extra=_video(10),
    )

    @property
    def uses_controlnet(self) -> bool:
        return self.mode in CONTROL_MODES

    @property
    def uses_image(self) -> bool:
        return MODE_INPUTS[self.mode] != "none"

    @classmethod
    def field_modes(cls, name: str) -> list[str] | None:
        """The modes field `name` applies in (None: every mode), as the schema says."""
        extra = cls.model_fields[name].json_schema_extra
        modes = extra.get("modes") if isinstance(extra, dict) else None
        return [str(m) for m in modes] if isinstance(modes, list) else None

    @classmethod
    def field_range(cls, name: str) -> tuple[float, float, float]:
        """(minimum, maximum, default) of numeric field `name`, from its constraints (for UIs that build sliders)."""
        info = cls.model_fields[name]
        bounds = {type(m).__name__: m for m in info.metadata}
        return bounds["Ge"].ge, bounds["Le"].le, info.default


def live_defaults() -> dict[str, object]:
    """The values a live client starts with: every field's "live_default" (stability and the skip filter on)."""
    return {name: field.json_schema_extra["live_default"] for name, field in GenerationParams.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and "live_default" in field.json_schema_extra}


@dataclass(frozen=True)
class GenerationRequest:
    """Parameters plus the input frame: a PIL image, a uint8 (H, W, 3) array or tensor, or encoded image bytes (PNG,
    JPEG, WebP); ``None`` in text mode.  ``temporal``: the stream's history (``sdxs.temporal.TemporalState``) for live
    video, or None (the frame is generated on its own; ``feedback``, ``bank`` and ``transition_frames`` need a
    state).  What crosses from a caller (the server's worker, a library user) into the pipeline; torch-free, like the
    rest of this module."""

    params: GenerationParams = field(default_factory=GenerationParams)
    image: Any = None
    temporal: TemporalState | None = None
