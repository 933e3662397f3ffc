"""Metrics of the miniature reproduction.

A small CNN classifier trained on the real (train) digits gives both the features for the Frechet distance (its
64-d penultimate layer) and the class accuracy of generated digits.  Pixels are (N, 3, S, S) in [0, 1] here.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy import linalg
from torch import nn

from training.control import canny_edges


class DigitClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, 64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, unit_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, 64), logits (N, 10)) for pixels in [0, 1]."""
        f = self.features(unit_pixels.float().mean(1, keepdim=True) * 2 - 1)
        return f, self.head(f)


def train_classifier(pixels: torch.Tensor, labels: torch.Tensor, epochs: int = 15, seed: int = 0) -> DigitClassifier:
    """Adam on the real digits ([-1, 1] pixels) with +-2 pixel random shifts."""
    torch.manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    unit = (pixels + 1) / 2
    for _ in range(epochs):
        for idx in torch.randperm(len(unit)).split(64):
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            x = torch.roll(unit[idx], (dy, dx), (2, 3))
            loss = F.cross_entropy(model(x)[1], labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def cached_classifier(
    work: str | Path, pixels: torch.Tensor, labels: torch.Tensor, seed: int = 0, epochs: int = 15
) -> DigitClassifier:
    """``train_classifier``'s model for ``seed``, trained once per work folder and kept there.

    The run, its ablations, the spread and the packaging all score with the same classifier; training is
    deterministic, so the saved weights are the ones a retraining would give.  Delete ``<work>/classifier`` after
    changing the digits.
    """
    path = Path(work) / "classifier" / f"seed-{seed}.safetensors"
    if path.exists():
        model = DigitClassifier()
        model.load_state_dict(load_file(path))
        return model.eval()
    model = train_classifier(pixels, labels, epochs=epochs, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model


@torch.no_grad()
def classify(model: DigitClassifier, unit_pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    feats, preds = [], []
    for chunk in unit_pixels.split(256):
        f, logits = model(chunk)
        feats.append(f)
        preds.append(logits.argmax(1))
    return torch.cat(feats).double().numpy(), torch.cat(preds).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two feature sets (N, D)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer samples than features (toy runs) make S_a S_b singular: its square
        warnings.filterwarnings("ignore", "Matrix is singular", linalg.LinAlgWarning)  # root is still the one FD uses
        covmean = linalg.sqrtm(s_a @ s_b)  # no ``disp``: SciPy 1.16 dropped it
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean.real))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of PSNR (dB) between pixels in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def edge_f1(unit_pixels: torch.Tensor, control: torch.Tensor, tolerance: int | None = None) -> float:
    """Mean F1 between the output's Canny edges and the control image's edges (both thin, one pixel wide).

    A predicted edge pixel counts as matched when a control edge lies within ``tolerance`` pixels (and vice versa
    for recall).  Default: the BSDS benchmark's 0.75% of the image diagonal, rounded (0 px at 32x32, where a 1-px
    tolerance would already match two random digits' edges at F1 0.6).  ``control``: (N, 3, S, S) in [0, 1],
    white edges on black.
    """
    if tolerance is None:
        tolerance = round(0.0075 * math.hypot(*unit_pixels.shape[-2:]))
    pred = canny_edges(unit_pixels * 2 - 1)
    ref = (control.float().mean(1, keepdim=True) > 0.5).float()
    k = 2 * tolerance + 1
    dilate = (lambda x: F.max_pool2d(x, k, stride=1, padding=tolerance)) if tolerance else (lambda x: x)
    tp_p = (pred * dilate(ref)).flatten(1).sum(1)
    tp_r = (ref * dilate(pred)).flatten(1).sum(1)
    precision = tp_p / pred.flatten(1).sum(1).clamp_min(1)
    recall = tp_r / ref.flatten(1).sum(1).clamp_min(1)
    return float((2 * precision * recall / (precision + recall).clamp_min(1e-8)).mean())
