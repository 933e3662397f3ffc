"""Per-request generation parameters: one pydantic model validates input and, via its JSON schema, drives UI controls.

SDXS runs one step with guidance 0: there is no negative prompt and no guidance scale to set.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_PROMPT_CHARS = 1000  # CLIP sees 77 tokens; longer prompts are truncated by the tokenizer, absurd ones refused


class Mode(StrEnum):
    """What the input image is used for."""

    text = "text"  # no input image: text to image
    image = "image"  # image to image: tiny-encode, noise to the strength's timestep, one step
    sketch = "sketch"  # ControlNet on a sketch (dark strokes on light; inverted for the released model)
    edges = "edges"  # ControlNet on edges extracted from a photo or webcam frame (style transfer)


Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)]


class GenerationParams(BaseModel):
    """What a visitor can set per request.  NaN and infinities are refused; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_enum_values=False, frozen=True)

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

    @property
    def uses_controlnet(self) -> bool:
        return self.mode in (Mode.sketch, Mode.edges)

    @property
    def uses_image(self) -> bool:
        return self.mode is not Mode.text
