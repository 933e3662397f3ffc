"""A Projected-GAN discriminator (Sauer et al. 2021; the StyleGAN-T / ADD settings the paper's section 4 follows).

A frozen feature network (``training.features``: UNet-space latents (B, 4, h, w), or pixels for the decoder stage,
-> feature maps) projects the image; small trainable heads, one per feature map, judge each map patch by patch,
optionally conditioned on the prompt by projection (the head's features dotted with a learnt map of the pooled prompt
embedding, as in StyleGAN-T).  The feature network is kept out of the discriminator's parameters and checkpoints
(it is frozen and rebuilt from the teacher); without one, ``forward`` takes the maps themselves (the LoRA stage
computes them once for both its losses).
"""

from __future__ import annotations

import torch
from torch import nn

sn = nn.utils.spectral_norm


class ProjectedHead(nn.Module):
    """One feature map (B, C, H, W) -> patch logits (B, H', W'), + the prompt projection."""

    def __init__(self, channels: int, embed_dim: int = 0, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            sn(nn.Conv2d(channels, hidden, 3, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(hidden, hidden, 3, padding=1)),
            nn.LeakyReLU(0.2),
        )
        self.out = sn(nn.Conv2d(hidden, 1, 1))
        self.project = nn.Linear(embed_dim, hidden) if embed_dim else None
        self.hidden = hidden

    def forward(self, features: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(features.float())
        logits = self.out(h).squeeze(1)
        if self.project is None:
            return logits
        return logits + (h * self.project(condition)[:, :, None, None]).sum(1) / self.hidden**0.5


class ProjectedDiscriminator(nn.Module):
    """Heads over the maps of a frozen feature network; ``forward(x, embeds)`` -> logits (B,), the mean over heads of
    each head's mean patch logit.  ``x``: the input of ``features`` when given, else its list of maps
    (B, C_l, H_l, W_l); ``embeds``: the prompts' token embeddings (B, L, D), mean-pooled into the condition (only
    with ``embed_dim``; 0: unconditional)."""

    def __init__(
        self, map_channels: list[int], embed_dim: int = 0, hidden: int = 64, features: nn.Module | None = None
    ):
        super().__init__()
        self.heads = nn.ModuleList(ProjectedHead(c, embed_dim, hidden) for c in map_channels)
        self._features = (features,)  # a tuple: not a submodule, so neither trained, synchronised nor checkpointed

    @classmethod
    def over(cls, features: nn.Module, example: torch.Tensor, embed_dim: int = 0, hidden: int = 64):
        """Heads sized for ``features``' maps of ``example`` (an input like the ones to judge)."""
        with torch.no_grad():
            maps = features(example)
        return cls([m.shape[1] for m in maps], embed_dim, hidden, features)

    def forward(self, x, embeds: torch.Tensor | None = None) -> torch.Tensor:
        features = self._features[0]
        maps = x if features is None else features(x)
        condition = None if embeds is None else embeds.float().mean(1)
        return torch.stack([head(m, condition).flatten(1).mean(1) for head, m in zip(self.heads, maps)]).mean(0)
