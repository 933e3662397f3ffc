"""A Projected-GAN discriminator (Sauer et al. 2021; the StyleGAN-T / ADD settings the paper's section 4 follows).

A frozen feature network (``training.features``: UNet-space latents (B, 4, h, w) -> feature maps) projects the
image; small trainable heads, one per feature map, judge each map patch by patch, conditioned on the prompt by
projection (the head's features dotted with a learnt map of the pooled prompt embedding, as in StyleGAN-T).  The
discriminator here holds only the heads: the stage computes the frozen features once per batch and passes them in.
"""

from __future__ import annotations

import torch
from torch import nn

sn = nn.utils.spectral_norm


class ProjectedHead(nn.Module):
    """One feature map (B, C, H, W) -> patch logits (B, H', W'), + the prompt projection."""

    def __init__(self, channels: int, embed_dim: int, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            sn(nn.Conv2d(channels, hidden, 3, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(hidden, hidden, 3, padding=1)),
            nn.LeakyReLU(0.2),
        )
        self.out = sn(nn.Conv2d(hidden, 1, 1))
        self.project = nn.Linear(embed_dim, hidden)
        self.hidden = hidden

    def forward(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.body(features.float())
        projected = (h * self.project(condition)[:, :, None, None]).sum(1) / self.hidden**0.5
        return self.out(h).squeeze(1) + projected


class ProjectedDiscriminator(nn.Module):
    """Heads over the maps of a frozen feature network; ``forward(maps, embeds)`` -> logits (B,), the mean over heads
    of each head's mean patch logit.  ``maps``: the feature network's list of (B, C_l, H_l, W_l); ``embeds``: the
    prompts' token embeddings (B, L, D), mean-pooled into the condition."""

    def __init__(self, map_channels: list[int], embed_dim: int, hidden: int = 64):
        super().__init__()
        self.heads = nn.ModuleList(ProjectedHead(c, embed_dim, hidden) for c in map_channels)

    def forward(self, maps: list[torch.Tensor], embeds: torch.Tensor) -> torch.Tensor:
        condition = embeds.float().mean(1)
        return torch.stack([head(m, condition).flatten(1).mean(1) for head, m in zip(self.heads, maps)]).mean(0)
