"""Every loss of the SDXS training stages (the paper section of each is in its docstring).

Conventions: latents are in the UNet's space (VAE latents times its scaling factor), shape (B, 4, h, w); pixels are in
[-1, 1], shape (B, 3, H, W).  Losses named ``*_per_sample`` return shape (B,) so that the segmented objective can
route each sample to one loss; the others return a scalar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ---- 1 / 3. knowledge distillation (Fig. 2b, 2c; BK-SDM) ------------------------------------------------------


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The plain diffusion loss: MSE between the model's prediction and its target (noise for eps-prediction)."""
    return F.mse_loss(prediction.float(), target.float())


def output_kd_loss(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """Output KD (Fig. 2b): MSE between the student's and the (frozen) teacher's predictions at the same input."""
    return F.mse_loss(student_out.float(), teacher_out.detach().float())


def feature_kd_loss(
    student_features: Mapping[str, torch.Tensor],
    teacher_features: Mapping[str, torch.Tensor],
    pairs: Sequence[tuple[str, str]],
) -> torch.Tensor:
    """Feature KD (Fig. 2b): mean over mapped stages of the MSE between teacher stage and student stage outputs.

    ``pairs``: (teacher name, student name), see ``training.hooks.kd_pairs``.  Mapped stages have equal shapes.
    """
    losses = [F.mse_loss(student_features[s].float(), teacher_features[t].detach().float()) for t, s in pairs]
    return torch.stack(losses).mean()


# ---- 2. tiny decoder (Fig. 2a) ---------------------------------------------------------------------------------


def downsampled_l1(student_pixels: torch.Tensor, teacher_pixels: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Fig. 2a: L1 between the two decoders' outputs after ``factor``x average-pool downsampling (8: latent size).

    Comparing at low resolution leaves the tiny decoder free to choose its own high-frequency detail, which the GAN
    loss then pushes towards realism instead of towards the teacher's exact texture.
    """
    s = F.avg_pool2d(student_pixels.float(), factor) if factor > 1 else student_pixels.float()
    t = F.avg_pool2d(teacher_pixels.detach().float(), factor) if factor > 1 else teacher_pixels.detach().float()
    return F.l1_loss(s, t)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge GAN loss for the discriminator: relu(1 - D(real)) + relu(1 + D(fake))."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge GAN loss for the generator: -D(fake)."""
    return -fake_logits.float().mean()


def softplus_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss for a discriminator (DMD2's head on the fake score model)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def softplus_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits.float()).mean()


class PatchDiscriminator(nn.Module):
    """The decoder-stage discriminator (the paper does not give one): a spectral-normalised PatchGAN.

    Input pixels (B, C, H, W) in [-1, 1]; output logits (B, 1, H/2^(n-1), W/2^(n-1)), one per patch.  Patch logits
    judge local texture, which is what the downsampled L1 leaves unconstrained.
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (64, 128, 256)):
        super().__init__()
        sn = nn.utils.spectral_norm
        layers, c_in = [], in_channels
        for i, c in enumerate(channels):
            layers += [sn(nn.Conv2d(c_in, c, 4 if i else 3, stride=2 if i else 1, padding=1)), nn.LeakyReLU(0.2)]
            c_in = c
        layers.append(sn(nn.Conv2d(c_in, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


class FeatureGANHead(nn.Module):
    """DMD2's GAN classifier on the fake score model's bottleneck features: (B, C, h, w) -> logits (B,)."""

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        groups = math.gcd(channels, 8)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.GroupNorm(math.gcd(hidden, 8), hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden, 1),
        )
        self.groups = groups

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float()).squeeze(1)


# ---- 4a. feature matching (Fig. 3, warm-up) ---------------------------------------------------------------------


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_per_sample(
    a: torch.Tensor, b: torch.Tensor, window: int = 7, c1: float = 1e-4, c2: float = 9e-4
) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) per sample over channels and positions: (B, C, H, W) x2 -> (B,).

    The window shrinks to the feature map's size (odd, >= 1) so that 2x2 or 1x1 features still work.  Inputs should
    have a comparable scale to c1/c2 (``ssim_feature_distance`` normalises features first).
    """
    a, b = a.float(), b.float()
    size = max(1, min(window, a.shape[-1], a.shape[-2]))
    size -= 1 - size % 2
    w = _gaussian_window(size, 1.5 * size / 7, a.shape[1], a)
    conv = lambda x: F.conv2d(x, w, groups=a.shape[1])  # noqa: E731
    mu_a, mu_b = conv(a), conv(b)
    var_a, var_b = conv(a * a) - mu_a**2, conv(b * b) - mu_b**2
    cov = conv(a * b) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim.flatten(1).mean(1)


def _normalise_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both by the target's per-sample std (detached) so SSIM constants mean the same at every layer."""
    scale = b.detach().float().flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return a.float() / scale, b.detach().float() / scale


def ssim_feature_distance(
    features: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], weights: Sequence[float] | None = None
) -> torch.Tensor:
    """Fig. 3 warm-up: sum over layers of w_l * (1 - SSIM(f_l(student), f_l(teacher))), per sample (B,)."""
    weights = weights or [1.0] * len(features)
    total = 0
    for w, f, t in zip(weights, features, targets, strict=True):
        fa, fb = _normalise_pair(f, t)
        total = total + w * (1 - ssim_per_sample(fa, fb))
    return total


def mse_feature_distance(features, targets, weights=None) -> torch.Tensor:
    """Alternative: sum over layers of w_l * MSE of the features, per sample (B,)."""
    weights = weights or [1.0] * len(features)
    return sum(
        w * (f.float() - t.detach().float()).pow(2).flatten(1).mean(1)
        for w, f, t in zip(weights, features, targets, strict=True)
    )


def lpips_feature_distance(features, targets, weights=None) -> torch.Tensor:
    """LPIPS-style alternative (without learned channel weights): unit-normalise each position's channel vector,
    then the squared distance averaged over positions, weighted-summed over layers, per sample (B,)."""
    weights = weights or [1.0] * len(features)

    def unit(x):
        return x.float() / (x.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)

    return sum(
        w * (unit(f) - unit(t.detach())).pow(2).sum(1).flatten(1).mean(1)
        for w, f, t in zip(weights, features, targets, strict=True)
    )


FEATURE_DISTANCES = {"ssim": ssim_feature_distance, "mse": mse_feature_distance, "lpips": lpips_feature_distance}


def latent_mse_per_sample(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between UNet-space latents, per sample: (B, C, h, w) x2 -> (B,) float32."""
    return (x.float() - target.float()).pow(2).flatten(1).mean(1)


def latent_moments_per_sample(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared differences of each channel's spatial mean and std, averaged over channels: (B, C, h, w) x2 -> (B,).

    Zero for any rearrangement of the target's values within each channel, so it pins the latents' scale and offset
    without pulling the layout towards the target (an MSE's pull towards the mean blurs when the target is not
    determined by the input, as with stage 5's source-image targets)."""
    a, b = x.float().flatten(2), target.float().flatten(2)
    return ((a.mean(2) - b.mean(2)).pow(2) + (a.std(2) - b.std(2)).pow(2)).mean(1)


# ---- 4b. segmented Diff-Instruct (Fig. 3) ---------------------------------------------------------------------------


def score_distillation_per_sample(
    x0_student: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor, normalise: bool = True
) -> torch.Tensor:
    """Diff-Instruct / DMD surrogate whose gradient w.r.t. ``x0_student`` is the score difference, per sample (B,).

    With s = (sqrt(a) x0 - x_t) / (1 - a), the IKL gradient s_fake - s_real is proportional to x0_fake - x0_real, so
    grad = (x0_fake - x0_real) / mean|x0_student - x0_real| (DMD eq. 8's normalisation when ``normalise``).
    ``0.5 * mean((x - sg(x - grad))^2)`` over a sample's D elements has exactly the gradient grad / D (DMD's
    ``0.5 * F.mse_loss`` convention, which keeps it on the scale of the per-sample feature-matching distance).
    ``x0_fake``/``x0_real``: the two score models' x0 predictions at the re-noised sample (float64, no grad).
    """
    x = x0_student
    with torch.no_grad():
        fake, real, xd = x0_fake.double(), x0_real.double(), x.detach().double()
        grad = fake - real
        if normalise:
            grad = grad / (xd - real).abs().flatten(1).mean(1).clamp_min(1e-8).view(-1, *[1] * (x.ndim - 1))
        target = (xd - torch.nan_to_num(grad)).to(x.dtype)
    return 0.5 * (x - target).float().pow(2).flatten(1).mean(1)


def score_distillation_mask(
    timesteps: torch.Tensor, alpha: float = 0.5, num_train_timesteps: int = 1000, score_on: str = "low"
) -> torch.Tensor:
    """Which samples take the score-distillation gradient (True) and which the feature-matching one (False).

    The paper: "for t in the high-noise part the feature-matching gradient replaces score distillation", the parts
    split at alpha * T (alpha = 0.5: the later half).  ``score_on="low"`` (the paper) gives score distillation to
    t < alpha*T; ``"high"`` swaps the segments; ``"all"`` is plain Diff-Instruct (no feature matching).
    """
    boundary = alpha * num_train_timesteps
    if score_on == "low":
        return timesteps < boundary
    if score_on == "high":
        return timesteps >= boundary
    if score_on == "all":
        return torch.ones_like(timesteps, dtype=torch.bool)
    raise ValueError(f"score_on must be low, high or all, got {score_on!r}")


def decayed_weight(start: float, end: float, progress: float, schedule: str = "linear") -> float:
    """The feature-matching weight during segmented Diff-Instruct, decaying from ``start`` to ``end``.

    ``progress`` in [0, 1] is the fraction of the Diff-Instruct phase done; schedules: linear, cosine, constant.
    """
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * p
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))
    raise ValueError(f"unknown schedule {schedule!r}")


def segmented_loss(
    score_loss: torch.Tensor, feature_loss: torch.Tensor, mask: torch.Tensor, feature_weight: float
) -> torch.Tensor:
    """Mean over the batch of score_loss where ``mask`` else feature_weight * feature_loss (all shapes (B,))."""
    routed = torch.where(mask, score_loss, feature_weight * feature_loss)
    return routed.mean()
