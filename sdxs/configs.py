"""UNet configs of the SDXS students and their teachers, as diffusers ``UNet2DConditionModel`` configs.

The students are derived from their teachers by block removal (BK-SDM style, see ``sdxs.student``).
Defaults equal the released checkpoints' topology where it is known (inferred from the released weights' names and
shapes; the paper's parameter table in section 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# ---- teachers -------------------------------------------------------------------------------------------------

SD15_UNET: Mapping[str, Any] = MappingProxyType(
    dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
)

SD21_BASE_UNET: Mapping[str, Any] = MappingProxyType(
    {**SD15_UNET, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True}
)

SDXL_UNET: Mapping[str, Any] = MappingProxyType(
    dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
)


@dataclass(frozen=True)
class RemovalRecipe:
    """Which parts of a teacher UNet a student keeps (BK-SDM block removal).

    ``drop_lowest_stage``: remove the lowest-resolution down stage and its matching up stage.
    ``drop_mid``: remove the mid block.  ``keep_down[i]`` / ``keep_up[i]``: indices of the teacher resnets (and their
    transformers) kept in student down / up stage ``i``.  ``no_attention_stages``: student stage indices whose
    transformers are dropped.  ``only_cross_attention_stages``: student stages whose kept transformers become
    cross-attention-only (the 0.9 model).  ``transformer_layers``: per student stage, how many of each kept
    transformer's layers are kept (``None`` keeps the teacher's); ``transformer_layers_up`` the same for the up
    path, in up-path order (``None``: as the down path).  Kept transformer layers are the teacher's first ones.
    """

    drop_lowest_stage: bool = True
    drop_mid: bool = True
    keep_down: tuple[tuple[int, ...], ...] = ((0,), (0,), (0,))
    keep_up: tuple[tuple[int, ...], ...] = ((0, 2), (0, 2), (0, 2))
    no_attention_stages: tuple[int, ...] = ()
    only_cross_attention_stages: tuple[int, ...] = ()
    transformer_layers: tuple[int, ...] | None = None
    transformer_layers_up: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Variant:
    """A released (or paper-only) SDXS model: its teacher, the removal recipe and where its weights live."""

    name: str
    teacher: str
    recipe: RemovalRecipe
    hub_id: str | None
    controlnet_id: str | None = None
    size: int = 512
    text_dim: int = 768
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


TEACHERS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {"sd15": SD15_UNET, "sd21-base": SD21_BASE_UNET, "sdxl": SDXL_UNET}
)

VARIANTS: Mapping[str, Variant] = MappingProxyType(
    {
        "sdxs-512-dreamshaper": Variant(
            name="sdxs-512-dreamshaper",
            teacher="sd15",
            recipe=RemovalRecipe(no_attention_stages=(0,)),
            hub_id="IDKiro/sdxs-512-dreamshaper",
            controlnet_id="IDKiro/sdxs-512-dreamshaper-sketch",
            notes="default; SD1.5 family, 768-d CLIP ViT-L text; 320 stage without transformers",
        ),
        "sdxs-512-0.9": Variant(
            name="sdxs-512-0.9",
            teacher="sd21-base",
            recipe=RemovalRecipe(only_cross_attention_stages=(0,)),
            hub_id="IDKiro/sdxs-512-0.9",
            text_dim=1024,
            notes="SD2.1-base family, 1024-d OpenCLIP ViT-H text; 320 stage cross-attention only",
        ),
        "sdxs-512": Variant(
            name="sdxs-512",
            teacher="sd21-base",
            recipe=RemovalRecipe(no_attention_stages=(0,)),
            hub_id=None,
            text_dim=1024,
            notes="the paper's SD2.1-base student (weights not released; 0.9 is the closest release)",
        ),
        "sdxs-1024": Variant(
            name="sdxs-1024",
            teacher="sdxl",
            # SDXL has no attention at 320 and only 3 stages, so no stage is dropped.  Drop the mid block, keep one
            # resnet per down stage and two per up stage (as SDXS-512), and cut the 1280 stage's 10-layer transformers
            # to their first 4 layers on the down path and 5 on the up path, which carries the detail: 748.1M (0.74B).
            recipe=RemovalRecipe(
                drop_lowest_stage=False, transformer_layers=(1, 2, 4), transformer_layers_up=(5, 2, 1)
            ),
            hub_id=None,
            size=1024,
            text_dim=2048,
            notes="never released; our design: SDXL minus mid block, layers_per_block=1, 1280-stage depth 10->4/5",
        ),
    }
)
