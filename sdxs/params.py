"""Per-request generation parameters: one pydantic model validates input and, via its JSON schema, drives UI controls.

SDXS runs one step with guidance 0: there is no negative prompt and no guidance scale to set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import JsonDict

MAX_PROMPT_CHARS = 1000  # CLIP sees 77 tokens; longer prompts are truncated by the tokenizer, absurd ones refused


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


Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)]


class GenerationParams(BaseModel):
    """What a visitor can set per request.  NaN and infinities are refused; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_enum_values=False, frozen=True)

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


@dataclass(frozen=True)
class GenerationRequest:
    """Parameters plus the input frame: a PIL image, a uint8 (H, W, 3) array or tensor, or encoded image bytes (PNG,
    JPEG, WebP); ``None`` in text mode.  What crosses from a caller (the server's worker, a library user) into the
    pipeline; torch-free, like the rest of this module."""

    params: GenerationParams = field(default_factory=GenerationParams)
    image: Any = None
