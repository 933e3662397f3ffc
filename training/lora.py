"""A very-low-rank LoRA on a diffusers UNet (PEFT), and its merge back into plain weights for export.

The paper's last one-step step (section 4) fine-tunes the one-step UNet with such a LoRA; the released
``IDKiro/sdxs-512-dreamshaper-anime`` is one.  ``merged_state_dict`` folds W + (alpha / r) B A into each wrapped layer,
so the exported UNet loads in diffusers and ``sdxs`` without PEFT.
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")  # the usual Stable Diffusion LoRA targets


def add_lora(unet, rank: int, alpha: float | None = None, targets=ATTENTION_PROJECTIONS):
    """Freeze ``unet`` and add a LoRA of ``rank`` (scale ``alpha / rank``; alpha defaults to rank) on ``targets``.
    B starts at zero, so the UNet's outputs are unchanged until it trains.  Returns the LoRA parameters."""
    if rank < 1:
        raise ValueError(f"lora_rank {rank}: expected a positive integer")
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets), init_lora_weights=True)
    try:
        unet.add_adapter(config)
    except ValueError as error:  # PEFT: "Target modules {...} not found in the base model"
        raise ValueError(f"no module of the UNet matches lora_targets {list(targets)} ({error})") from error
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    return params


@torch.no_grad()
def merged_state_dict(unet) -> dict[str, torch.Tensor]:
    """The UNet's weights with every LoRA folded in, under the plain model's keys (no ``base_layer``/``lora_``)."""
    merged = {}
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            weight = base.weight.detach().clone()
            for adapter in module.active_adapters:
                weight += module.get_delta_weight(adapter).to(weight.dtype)
            merged[f"{name}.weight"] = weight
            if base.bias is not None:
                merged[f"{name}.bias"] = base.bias.detach().clone()
    for key, value in unet.state_dict().items():
        if "lora_" not in key:
            merged.setdefault(key.replace(".base_layer.", "."), value.detach().clone())
    return merged
