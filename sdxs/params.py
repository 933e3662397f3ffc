"""Per-request generation parameters: one pydantic model validates input and, via its JSON schema, drives UI controls.

SDXS runs one step with guidance 0: there is no negative prompt and no guidance scale to set.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_PROMPT_CHARS = 1000  # CLIP sees 77 tokens; longer prompts are truncated by the tokenizer, absurd ones refused
INPUT_MODES = ["image", "sketch", "edges"]  # the modes with an input frame (json_schema_extra "modes")

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


def _video(live_default: object) -> dict[str, object]:
    """json_schema_extra of a live-video field: its modes, "video" and what a live client starts with."""
    return {"modes": INPUT_MODES, "video": True, "live_default": live_default}


class Mode(StrEnum):
    """What the input image is used for."""

    text = "text"  # no input image: text to image
    image = "image"  # image to image: tiny-encode, noise to the strength's timestep, one step
    sketch = "sketch"  # ControlNet on a sketch (dark strokes on light; inverted for the released model)
    edges = "edges"  # ControlNet on edges extracted from a photo or webcam frame (style transfer)


Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)]


class GenerationParams(BaseModel):
    """What a visitor can set per request.  NaN and infinities are refused; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_enum_values=False, frozen=True,
                              json_schema_extra={"stability_presets": STABILITY_PRESETS,
                                                 "live_stability": LIVE_STABILITY})

    prompt: Prompt = Field("a photo of a cat, highly detailed", title="Prompt", description="What to generate.")
    mode: Mode = Field(Mode.image, title="Mode", description="How the input frame is used.")
    seed: int = Field(0, ge=0, le=2**32 - 1, title="Seed", description="Same seed + same input = same image.")
    strength: float = Field(
        0.5, ge=0.02, le=1.0, title="Strength", description="Image mode: how far from the input (1 = ignore it)."
    )
    control_scale: float = Field(
        0.8, ge=0.0, le=1.0, title="Control scale", description="Sketch and edge modes: how closely to follow lines."
    )
    style: str | None = Field(None, max_length=64, title="Style", description="A loaded style adapter (LoRA) or none.")
    edge_low: int = Field(80, ge=0, le=255, title="Edge low threshold", description="Edge mode: Canny low threshold.")
    edge_high: int = Field(
        160, ge=0, le=255, title="Edge high threshold", description="Edge mode: Canny high threshold."
    )
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
        return self.mode in (Mode.sketch, Mode.edges)

    @property
    def uses_image(self) -> bool:
        return self.mode is not Mode.text


def live_defaults() -> dict[str, object]:
    """The values a live client starts with: every field's "live_default" (stability and the skip filter on)."""
    return {name: field.json_schema_extra["live_default"] for name, field in GenerationParams.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and "live_default" in field.json_schema_extra}
