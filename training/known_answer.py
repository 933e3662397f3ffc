"""Known-answer checks of stage 4's losses and steps, on low-dimensional targets whose score is exact.

Points x in R^d travel as latents of shape (B, d, 1, 1), noised by SD's ``scaled_linear`` schedule (the miniature's).
The teacher is the exact epsilon prediction of a mixture of Gaussians (``MixtureScore``; one component: a Gaussian).
Everything else is the project's own code: ``OneStepTrainer.from_parts`` runs stage 4's ``warmup_step``,
``fake_step`` and ``score_step`` with ``UNetStudent`` around a small generator (``OneStepGenerator``), ``FakeScore``
around a trainable copy of the exact score (its means, covariances and weights are parameters, so the online model can
represent the generator's distribution, as stage 4's fake UNet must), the losses of ``training.losses`` and pairs
solved by ``training.sampling.ddim_sample``.

What is known exactly: the noised distributions of a Gaussian generator and a Gaussian target are Gaussians, so the
integral KL's integrand KL(p_t || q_t) and its gradient have a closed form (``gaussian_kl``); samples of the target
give the sliced Wasserstein distance a perfect generator would score (``sliced_w2``).  ``python -m
training.known_answer --out DIR`` runs the four checks at documentation size and draws them; ``tests/training/
test_known_answer.py`` runs them small.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import DDPMScheduler
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from training.config import from_dict
from training.data import Bank
from training.draws import StepDraws
from training.features import LatentFeatures
from training.runner import Runner
from training.sampling import ddim_sample
from training.stages.onestep import OneStepConfig, OneStepTrainer, Teachers, UNetStudent

ODE_STEPS = 25


def schedule() -> DDPMScheduler:
    """SD's training schedule (``scaled_linear``, epsilon prediction), as the miniature's teacher uses."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


class MixtureScore(nn.Module):
    """The exact epsilon prediction for data from sum_k w_k N(mean_k, L_k L_k^T) noised by ``alphas_cumprod``.

    At x_t = sqrt(a) x0 + sqrt(1 - a) eps each component is N(sqrt(a) mean_k, a S_k + (1 - a) I); the prediction is
    -sqrt(1 - a) times the mixture's score, in float64.  Means (K, d), factors L (K, d, d; lower triangle used) and
    weights are parameters: a copy trained with the denoising loss learns the mixture it is shown.  Called like a
    UNet: ``(x_t (B, d, 1, 1), t (B,)) -> .sample`` (B, d, 1, 1)."""

    def __init__(self, means: torch.Tensor, factors: torch.Tensor, weights: torch.Tensor, alphas_cumprod):
        super().__init__()
        self.means = nn.Parameter(means.double().clone())
        self.factors = nn.Parameter(factors.double().clone())
        self.logits = nn.Parameter(weights.double().log().clone())
        self.register_buffer("alphas_cumprod", alphas_cumprod.double().clone())
        self.mid_block = nn.Identity()  # the "bottleneck" ``FakeScore`` records for its optional GAN head
        self.config = SimpleNamespace(block_out_channels=(means.shape[1],))

    @classmethod
    def gaussian(cls, mean: torch.Tensor, covariance: torch.Tensor, alphas_cumprod) -> MixtureScore:
        return cls(mean[None], torch.linalg.cholesky(covariance.double())[None], torch.ones(1), alphas_cumprod)

    def covariances(self) -> torch.Tensor:
        """(K, d, d) float64."""
        lower = self.factors.double().tril()
        return lower @ lower.mT + 1e-9 * torch.eye(lower.shape[-1], dtype=torch.float64, device=lower.device)

    def weights(self) -> torch.Tensor:
        return self.logits.double().softmax(0)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states=None, **_) -> UNet2DConditionOutput:
        self.mid_block(x_t)
        x, a = x_t.flatten(1).double(), self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eye = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
        cov = a * self.covariances()[None] + (1 - a) * eye  # (B, K, d, d)
        diff = x[:, None] - a[..., 0].sqrt() * self.means.double()[None]  # (B, K, d)
        solved = torch.linalg.solve(cov, diff[..., None])[..., 0]  # Cov^-1 (x - m)
        log_r = self.logits.double().log_softmax(0) - 0.5 * (diff * solved).sum(-1) - 0.5 * torch.logdet(cov)
        score = -(log_r.softmax(1)[..., None] * solved).sum(1)  # (B, d)
        eps = -(1 - a.view(-1, 1)).sqrt() * score
        return UNet2DConditionOutput(sample=eps.to(x_t.dtype).view_as(x_t))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` points of the (clean) mixture, (n, d, 1, 1) float32."""
        k = torch.multinomial(self.weights().float().cpu(), n, replacement=True, generator=generator)
        z = torch.randn((n, self.means.shape[1], 1), generator=generator, dtype=torch.float64)
        lower = self.factors.detach().double().cpu().tril()
        x = self.means.detach().double().cpu()[k] + (lower[k] @ z)[..., 0]
        return x.float()[..., None, None]


class OneStepGenerator(nn.Module):
    """A one-step generator x0 = net(z) behind the UNet's interface: called at t=999 on the noise z (B, d, 1, 1), it
    returns the epsilon whose x0 (``sdxs.onestep.predict_x0``) is net(z), so ``UNetStudent.sample`` draws net(z)."""

    def __init__(self, net: nn.Module, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states=None, **_) -> UNet2DConditionOutput:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(x_t.dtype)
        x0 = self.net(x_t.flatten(1)).view_as(x_t)
        return UNet2DConditionOutput(sample=(x_t - a.sqrt() * x0) / (1 - a).sqrt())


def affine(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """x0 = weight z + bias: a Gaussian generator N(bias, weight weight^T)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def mlp(d: int, hidden: int = 64, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d))


def solve_pairs(target: MixtureScore, n: int, seed: int = 0) -> Bank:
    """Stage 4's pairs on the toy: noise z (n, d, 1, 1) -> the teacher's deterministic DDIM ODE solution from z."""
    z = torch.randn((n, target.means.shape[1], 1, 1), generator=torch.Generator().manual_seed(seed))
    embeds = torch.zeros(n, 1, 1)
    x0 = ddim_sample(target, schedule().config, z, embeds, None, ODE_STEPS)
    return Bank({"noise": z, "embeds": embeds, "target": x0.float()})


def build(target: MixtureScore, net: nn.Module, out: Path, pairs: int = 2048, seed: int = 0, **config):
    """A ``OneStepTrainer`` over the exact ``target`` and a generator ``net``, with stage 4's config ``config``
    (feature matching on the points themselves, MSE)."""
    values = dict(output_dir=str(out), seed=seed, progress=False, feature_distance="mse", max_grad_norm=0.0,
                  latent_weight=0.0, num_pairs=pairs, ode_steps=ODE_STEPS, **config)  # fmt: skip
    cfg = from_dict(OneStepConfig, values)
    run = Runner(cfg, "known_answer")
    ac = schedule().alphas_cumprod
    teachers = Teachers(unet=target.requires_grad_(False), scheduler=schedule(), vae=None, text=None,
                        uncond=torch.zeros(1, 1, 1), controlnet=None)  # fmt: skip
    bank = Bank({"latents": target.sample(pairs, torch.Generator().manual_seed(seed + 1)), "embeds": torch.zeros(
        pairs, 1, 1)})  # fmt: skip
    student = UNetStudent(OneStepGenerator(net, ac))
    return OneStepTrainer.from_parts(cfg, run, teachers, student, LatentFeatures(), bank, solve_pairs(target, pairs))


def train(trainer: OneStepTrainer, steps: int, every: int = 0, probe=None) -> list[dict]:
    """``steps`` of the trainer's own ``step`` (warm-up, or fake updates then a score step); every ``every`` steps
    the step's logs plus ``probe(trainer)``."""
    rows = []
    for _ in range(steps):
        logs = trainer.step()
        trainer.run.state.step += 1
        if every and trainer.run.state.step % every == 0:
            rows.append({"step": trainer.run.state.step, **logs, **(probe(trainer) if probe else {})})
    return rows


@torch.no_grad()
def generate(trainer: OneStepTrainer, n: int, seed: int = 123) -> torch.Tensor:
    """``n`` fresh one-step samples (n, d) of the trainer's generator."""
    d = trainer.teachers.unet.means.shape[1]
    z = torch.randn((n, d, 1, 1), generator=torch.Generator().manual_seed(seed))
    return trainer.generate({"noise": z, "embeds": torch.zeros(n, 1, 1)}).flatten(1)


def sliced_w2(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between equal-sized point sets (n, d): the root mean over random directions of
    the squared distance between their sorted projections."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64),
                                               dim=0)  # fmt: skip
    pa, pb = (a.double() @ directions).sort(0).values, (b.double() @ directions).sort(0).values
    return float((pa - pb).pow(2).mean().sqrt())


def mode_shares(x: torch.Tensor, means: torch.Tensor) -> list[float]:
    """The share of points (n, d) nearest to each mode (K, d)."""
    nearest = torch.cdist(x.double(), means.double()).argmin(1)
    return [float((nearest == k).double().mean()) for k in range(len(means))]


def gaussian_kl(mean_p, cov_p, mean_q, cov_q) -> torch.Tensor:
    """KL(N(mean_p, cov_p) || N(mean_q, cov_q)) in float64 (differentiable)."""
    d = mean_p.shape[-1]
    inv_q = torch.linalg.inv(cov_q)
    diff = mean_q - mean_p
    return 0.5 * (torch.trace(inv_q @ cov_p) + diff @ inv_q @ diff - d + torch.logdet(cov_q) - torch.logdet(cov_p))


def noised(mean: torch.Tensor, cov: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian N(mean, cov) after q(x_t | x0) at alphas_cumprod ``a``."""
    return math.sqrt(a) * mean, a * cov + (1 - a) * torch.eye(len(mean), dtype=cov.dtype)


# ---- the four checks ----------------------------------------------------------------------------------------------

GAUSSIAN = dict(mean=torch.tensor([1.5, -1.0]), covariance=torch.tensor([[1.0, 0.6], [0.6, 0.8]]))


def circle_mixture(k: int = 4, radius: float = 2.0, std: float = 0.25) -> MixtureScore:
    """``k`` equal Gaussians on a circle: the mixture whose modes a generator must all cover."""
    angles = torch.arange(k) * 2 * math.pi / k
    means = radius * torch.stack([angles.cos(), angles.sin()], 1)
    return MixtureScore(means, std * torch.eye(2).expand(k, 2, 2), torch.ones(k) / k, schedule().alphas_cumprod)


def diff_instruct_gradient(out: Path, timesteps=(100, 300, 500, 700, 900), fake_steps: int = 300,
                           fake_batch: int = 512, batch: int = 4096) -> dict:  # fmt: skip
    """Check 1: a Gaussian generator x0 = A z + b against a Gaussian target.  The fake score is trained by
    ``fake_step`` (denoising loss on the generator's samples, from the teacher's copy) until it is the generator's
    Gaussian; then at each t one ``score_step`` with every row at t gives the generator's gradient, compared (cosine)
    with the gradient of the closed-form KL(p_t || q_t) with respect to (A, b): for Diff-Instruct's plain score
    difference (``normalise_score: false``) and for DMD's per-sample normalised one (the default)."""
    ac = schedule().alphas_cumprod
    target = MixtureScore.gaussian(GAUSSIAN["mean"], GAUSSIAN["covariance"], ac)
    weight, bias = torch.tensor([[0.5, -0.2], [0.3, 0.4]]), torch.tensor([-0.5, 0.8])
    trainer = build(target, affine(weight, bias), out, pairs=256, batch_size=fake_batch, score_on="all",
                    warmup_steps=0, fake_updates=1, fake_lr=0.05, lr=1e-3)  # fmt: skip
    for _ in range(fake_steps):
        trainer.fake_step()
        trainer.run.state.step += 1
    trainer.run.draws = StepDraws(trainer.cfg.seed, batch)  # the gradient's rows: a larger batch, less MC noise
    fake = trainer.fake_plain.unet
    result = {"fake_mean_error": float((fake.means[0].detach().double() - bias.double()).norm()),
              "fake_cov_error": float((fake.covariances()[0].detach() - (weight @ weight.T).double()).norm())}
    for normalise in (False, True):
        trainer.cfg.normalise_score = normalise
        key = "cosine_normalised" if normalise else "cosine"
        result[key] = {t: _cosine_at(trainer, t, weight, bias) for t in timesteps}
    return result


def _cosine_at(trainer: OneStepTrainer, t: int, weight: torch.Tensor, bias: torch.Tensor) -> float:
    """Cosine between the generator's gradient from one ``score_step`` with every row at ``t`` and the gradient of
    KL(p_t || q_t) at (weight, bias); the generator is put back afterwards."""
    net = trainer.student.trained.net
    state = copy.deepcopy(net.state_dict())
    trainer.cfg.t_min = trainer.cfg.t_max = t
    grads: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda g: grads.__setitem__(name, g.detach().double().clone())

    hooks = [p.register_hook(keep(n)) for n, p in net.named_parameters()]
    trainer.score_step()
    for h in hooks:
        h.remove()
    net.load_state_dict(state)
    got = torch.cat([grads["weight"].flatten(), grads["bias"]])
    w, b = weight.double().clone().requires_grad_(True), bias.double().clone().requires_grad_(True)
    a = float(schedule().alphas_cumprod[t])
    target = noised(GAUSSIAN["mean"].double(), GAUSSIAN["covariance"].double(), a)
    gaussian_kl(*noised(b, w @ w.T, a), *target).backward()
    want = torch.cat([w.grad.flatten(), b.grad])
    return float(torch.nn.functional.cosine_similarity(got, want, dim=0))


def mode_covering(out: Path, steps: int = 400, batch: int = 256, n: int = 2048, every: int = 50, **config) -> dict:
    """Check 2: Diff-Instruct alone (every row takes score distillation, no warm-up) on a 4-mode mixture, from an
    MLP generator whose samples start in a small blob at the origin.  Sliced W2 to fresh target samples falls towards
    the sliced W2 between two target sample sets of the same size (the sampling noise); every mode gets its share."""
    target = circle_mixture()
    settings = dict(fake_updates=5, fake_lr=0.01, lr=1e-3) | config  # 5: the paper's (DMD2's) two time scales
    trainer = build(target, mlp(2), out, pairs=256, batch_size=batch, score_on="all", warmup_steps=0,
                    max_steps=steps, **settings)  # fmt: skip
    reference = target.sample(n, torch.Generator().manual_seed(7)).flatten(1)
    noise_floor = sliced_w2(target.sample(n, torch.Generator().manual_seed(8)).flatten(1), reference)

    def probe(tr):
        x = generate(tr, n)
        return {"sliced_w2": sliced_w2(x, reference), "mode_shares": mode_shares(x, target.means.detach())}

    start = probe(trainer)
    rows = [{"step": 0, **start}] + train(trainer, steps, every, probe)
    return {"noise_floor": noise_floor, "curve": rows, "final": rows[-1], "samples": generate(trainer, n).tolist()}


def feature_matching(out: Path, steps: int = 300, batch: int = 256, every: int = 50) -> dict:
    """Check 3: feature matching alone (the warm-up) on the teacher's ODE pairs.  A Gaussian target's DDIM map is
    affine, so an affine generator can equal it: the relative error of the generator on held-out pairs falls to
    near 0, and its (A, b) approach the least-squares fit of the ODE map (and Sigma^1/2, mean: the exact flow)."""
    ac = schedule().alphas_cumprod
    target = MixtureScore.gaussian(GAUSSIAN["mean"], GAUSSIAN["covariance"], ac)
    trainer = build(target, affine(0.3 * torch.eye(2), torch.zeros(2)), out, pairs=2048, batch_size=batch,
                    warmup_steps=steps, max_steps=steps, lr=2e-2, fm_weight=1.0)  # fmt: skip
    held = solve_pairs(target, 512, seed=99).tensors
    z, x0 = held["noise"].flatten(1).double(), held["target"].flatten(1).double()
    fit = torch.linalg.lstsq(torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], 1), x0).solution

    def probe(tr):
        x = tr.generate({"noise": held["noise"], "embeds": torch.zeros(len(z), 1, 1)}).detach().flatten(1).double()
        return {"relative_error": float((x - x0).pow(2).sum() / (x0 - x0.mean(0)).pow(2).sum())}

    rows = [{"step": 0, **probe(trainer)}] + train(trainer, steps, every, probe)
    net = trainer.student.trained.net
    eigval, eigvec = torch.linalg.eigh(GAUSSIAN["covariance"].double())
    sym_root = eigvec @ torch.diag(eigval.sqrt()) @ eigvec.T  # the exact probability-flow map's matrix
    return {
        "curve": rows,
        "final": rows[-1],
        "generator_vs_ode_fit": float((net.weight.detach().double() - fit[:2].T).abs().max()),
        "ode_fit_vs_exact_flow": float((fit[:2].T - sym_root).abs().max()),
        "bias_vs_mean": float((net.bias.detach().double() - GAUSSIAN["mean"].double()).abs().max()),
    }


def feature_matching_mixture(out: Path, steps: int = 3000, batch: int = 256, n: int = 2048, every: int = 250) -> dict:
    """Check 3 on the 4-mode mixture: feature matching alone with an MLP generator; its sliced W2 to the target
    against the teacher's own 25-step ODE samples' (what matching the ODE outputs can reach)."""
    target = circle_mixture()
    trainer = build(target, mlp(2), out, pairs=4096, batch_size=batch, warmup_steps=steps, max_steps=steps, lr=2e-3)
    reference = target.sample(n, torch.Generator().manual_seed(7)).flatten(1)
    ode = solve_pairs(target, n, seed=5).tensors["target"].flatten(1)

    def probe(tr):
        return {"sliced_w2": sliced_w2(generate(tr, n), reference)}

    rows = train(trainer, steps, every, probe)
    return {"curve": rows, "final": rows[-1], "teacher_ode_sliced_w2": sliced_w2(ode, reference),
            "noise_floor": sliced_w2(target.sample(n, torch.Generator().manual_seed(8)).flatten(1), reference)}


def segmented_schedule(out: Path, warmup: int = 150, steps: int = 300, batch: int = 256, every: int = 25,
                       probe_every: int = 1, **config) -> dict:  # fmt: skip
    """Check 4: the paper's segmented Diff-Instruct on the 4-mode mixture: a feature-matching warm-up, then alpha
    lowered 0.95 -> 0.5 and lambda_FM 8 -> 4 (the miniature's settings) with ``score_on: low``.  Logged alpha and
    lambda_FM follow their schedules; the share of rows taking score distillation follows alpha (t ~ U[t_min,
    t_max]: (alpha T - t_min) / (t_max - t_min + 1)); sliced W2 stays near the sampling noise."""
    target = circle_mixture()
    settings = dict(lr=2e-3, fake_lr=0.01, fake_updates=5, fm_weight=8.0, fm_weight_end=4.0, segment_alpha=0.95,
                    segment_alpha_end=0.5, score_on="low") | config  # fmt: skip
    trainer = build(target, mlp(2), out, pairs=2048, batch_size=batch, warmup_steps=warmup, max_steps=steps,
                    **settings)  # fmt: skip
    n = 2048
    reference = target.sample(n, torch.Generator().manual_seed(7)).flatten(1)
    noise_floor = sliced_w2(target.sample(n, torch.Generator().manual_seed(8)).flatten(1), reference)

    def probe(tr):
        if probe_every and tr.run.state.step % probe_every == 0:
            return {"sliced_w2": sliced_w2(generate(tr, n), reference)}
        return {}

    rows = train(trainer, steps, 1, probe)
    cfg = trainer.cfg
    for r in rows:
        if "alpha" in r:
            r["expected_score_fraction"] = (r["alpha"] * 1000 - cfg.t_min) / (cfg.t_max - cfg.t_min + 1)
    probed = [r for r in rows if "sliced_w2" in r]
    curve = probed[:: max(1, every // max(1, probe_every))] if probed else rows[every - 1 :: every] if every else rows
    return {"noise_floor": noise_floor, "curve": curve, "rows": rows, "warmup_steps": warmup}


# ---- documentation ------------------------------------------------------------------------------------------------


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    g = results["gradient"]
    for key, style, label in (("cosine", "-o", "Diff-Instruct (plain)"), ("cosine_normalised", "--s",
                                                                          "DMD-normalised (default)")):  # fmt: skip
        ts = sorted(g[key])
        axes[0].plot(ts, [g[key][t] for t in ts], style, label=label)
    axes[0].axhline(0.99, color="grey", lw=0.6)
    axes[0].set_title("1: Diff-Instruct gradient vs d KL(p_t||q_t)/d(A, b): cosine", fontsize=9)
    axes[0].set_xlabel("t")
    axes[0].legend(fontsize=7)
    m = results["mode_covering"]
    target = circle_mixture()
    ref = target.sample(2048, torch.Generator().manual_seed(7)).flatten(1)
    axes[1].scatter(*ref.T, s=1, alpha=0.3, label="target")
    axes[1].scatter(*torch.tensor(m["samples"]).T, s=1, alpha=0.3, label="generator (Diff-Instruct only)")
    shares = [round(x, 2) for x in m["final"]["mode_shares"]]
    axes[1].set_title(f"2: Diff-Instruct alone after {m['final']['step']} steps; mode shares {shares}", fontsize=9)
    axes[1].legend(fontsize=7, markerscale=8)
    axes[1].set_aspect("equal")
    ax = axes[2]
    ax.plot([r["step"] for r in m["curve"]], [r["sliced_w2"] for r in m["curve"]], "-o", ms=3,
            label="2: Diff-Instruct only, 5 fake updates per step")
    m2 = results["mode_covering_2_fake_updates"]
    ax.plot([r["step"] for r in m2["curve"]], [r["sliced_w2"] for r in m2["curve"]], "-", alpha=0.6,
            label="2: the same, 2 fake updates")
    fm = results["feature_matching_mixture"]
    ax.plot([r["step"] for r in fm["curve"]], [r["sliced_w2"] for r in fm["curve"]], "--", label="3: feature matching")
    ax.axhline(fm["teacher_ode_sliced_w2"], color="k", lw=0.6, ls="--", label="teacher's 25-step ODE")
    s = results["segmented"]
    probed = [r for r in s["rows"] if "sliced_w2" in r]
    ax.plot([r["step"] for r in probed], [r["sliced_w2"] for r in probed], label="4: warm-up, then segmented")
    ax.axhline(m["noise_floor"], color="grey", lw=0.6, label="sampling noise")
    ax.axvline(s["warmup_steps"], color="grey", lw=0.6, ls=":")
    f = results["feature_matching"]
    ax.set_yscale("log")
    ax.set_title("sliced W2 to the 4-mode target", fontsize=9)
    ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax = axes[3]
    rows = [r for r in s["rows"] if "alpha" in r]
    ax.plot([r["step"] for r in rows], [r["alpha"] for r in rows], label="alpha")
    ax.plot([r["step"] for r in rows], [r["fm_weight"] / 8 for r in rows], label="lambda_FM / 8")
    frac = torch.tensor([r["score_fraction"] for r in rows])
    smooth = torch.nn.functional.avg_pool1d(frac[None, None], 9, 1, 4, count_include_pad=False)[0, 0]
    ax.plot([r["step"] for r in rows], smooth, label="rows taking score distillation (9-step mean)")
    ax.plot([r["step"] for r in rows], [r["expected_score_fraction"] for r in rows], ":", label="expected")
    ax.plot([r["step"] for r in f["curve"]], [r["relative_error"] for r in f["curve"]], "-o", ms=3,
            label="3: feature matching, relative error to the ODE")  # fmt: skip
    ax.set_title("4: the segmented schedule (3: feature matching alone, Gaussian)", fontsize=9)
    ax.legend(fontsize=6)
    ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out / "known_answer.png", dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="training/results/known_answer")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {
            "gradient": diff_instruct_gradient(tmp / "g"),
            "mode_covering": mode_covering(tmp / "m", steps=1500, every=50),
            "mode_covering_2_fake_updates": mode_covering(tmp / "m2", steps=1500, every=50, fake_updates=2),
            "feature_matching": feature_matching(tmp / "f", steps=400, every=25),
            "feature_matching_mixture": feature_matching_mixture(tmp / "fm", steps=3000, every=250),
            "segmented": segmented_schedule(tmp / "s", warmup=500, steps=1500, probe_every=10),
        }  # fmt: skip
    summary = {k: v for k, v in results.items() if k != "segmented"}
    for key in ("mode_covering", "mode_covering_2_fake_updates"):
        summary[key] = {k: v for k, v in results[key].items() if k != "samples"}
    summary["segmented"] = {k: v for k, v in results["segmented"].items() if k != "rows"}
    (out / "known_answer.json").write_text(json.dumps(summary, indent=1))
    plot(results, out)
    print(json.dumps({"gradient": results["gradient"],
                      "mode covering": results["mode_covering"]["final"],
                      "noise floor": results["mode_covering"]["noise_floor"],
                      "feature matching": results["feature_matching"]["final"]}, indent=1))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
