"""Known-answer checks of stage 4 (``training.known_answer``): the project's own ``OneStepTrainer`` steps and losses
on 2-D targets whose score is exact.  Small versions of the checks ``python -m training.known_answer`` runs and draws
for training/README.md ("Known-answer checks")."""

import pytest
import torch

from training import known_answer as K
from training.losses import decayed_weight
from training.stages.onestep import segment_alpha_at

torch.set_num_threads(1)


def test_the_exact_score_is_the_denoisers_optimum_and_ddim_on_it_draws_the_target(tmp_path):
    ac = K.schedule().alphas_cumprod
    target = K.MixtureScore.gaussian(K.GAUSSIAN["mean"], K.GAUSSIAN["covariance"], ac)
    x0 = target.sample(4096, torch.Generator().manual_seed(0))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.full((len(x0),), 500)
    x_t = ac[500].sqrt() * x0 + (1 - ac[500]).sqrt() * eps
    with torch.no_grad():
        exact = (target(x_t, t).sample - eps).pow(2).mean()
        shifted = K.MixtureScore.gaussian(K.GAUSSIAN["mean"] + 0.3, K.GAUSSIAN["covariance"], ac)
        assert exact < (shifted(x_t, t).sample - eps).pow(2).mean()  # the right target's score denoises best
    x = K.solve_pairs(target, 2048).tensors["target"].flatten(1)
    assert torch.allclose(x.mean(0), K.GAUSSIAN["mean"], atol=0.1)
    assert torch.allclose(torch.cov(x.T), K.GAUSSIAN["covariance"], atol=0.2)  # 25 DDIM steps: a little tighter


def test_the_diff_instruct_gradient_is_the_integral_kls_at_every_noise_level(tmp_path):
    result = K.diff_instruct_gradient(tmp_path, timesteps=(100, 500, 900), fake_steps=250, batch=4096)
    assert result["fake_mean_error"] < 0.1 and result["fake_cov_error"] < 0.1  # fake_step learnt the generator
    assert min(result["cosine"].values()) >= 0.99, result
    # DMD's per-sample normalisation (the stage's default) reweights the rows: close, not the same direction
    assert 0.95 <= min(result["cosine_normalised"].values()) < 0.995, result


def test_diff_instruct_alone_covers_every_mode_of_a_mixture(tmp_path):
    result = K.mode_covering(tmp_path, steps=300, batch=64, n=1024, every=300)
    start, final = result["curve"][0], result["final"]
    assert max(start["mode_shares"]) > 0.75  # the generator starts on (about) one mode
    assert min(final["mode_shares"]) >= 0.15, final
    assert final["sliced_w2"] < start["sliced_w2"] / 2.5 and final["sliced_w2"] < 5 * result["noise_floor"], result


def test_feature_matching_alone_matches_the_teachers_ode_outputs(tmp_path):
    result = K.feature_matching(tmp_path, steps=200, batch=128, every=200)
    assert result["curve"][0]["relative_error"] > 0.3 and result["final"]["relative_error"] < 0.01, result
    assert result["generator_vs_ode_fit"] < 0.05 and result["bias_vs_mean"] < 0.1, result


def test_the_segmented_schedule_lowers_alpha_and_lambda_fm_and_routes_rows_by_their_timestep(tmp_path):
    warmup, steps = 10, 70
    result = K.segmented_schedule(tmp_path, warmup=warmup, steps=steps, batch=128, every=0, probe_every=0,
                                  fake_updates=1)  # fmt: skip
    rows = result["rows"]
    assert all("sd" not in r for r in rows[:warmup]) and all("sd" in r for r in rows[warmup:])
    phase = rows[warmup:]
    for r in phase:
        progress = (r["step"] - 1 - warmup) / (steps - warmup)
        cfg = type("C", (), dict(segment_alpha=0.95, segment_alpha_end=0.5, alpha_decay="linear"))
        assert r["alpha"] == pytest.approx(segment_alpha_at(cfg, progress))
        assert r["fm_weight"] == pytest.approx(decayed_weight(8.0, 4.0, progress))
    assert phase[0]["alpha"] == pytest.approx(0.95) and phase[-1]["alpha"] < 0.51
    observed = torch.tensor([r["score_fraction"] for r in phase])
    expected = torch.tensor([r["expected_score_fraction"] for r in phase])
    assert (observed - expected).mean().abs() < 3 * (0.25 / (128 * len(phase))) ** 0.5  # binomial standard error
    assert observed[:10].mean() > 0.8 and observed[-10:].mean() < 0.6  # score distillation gives way to FM
