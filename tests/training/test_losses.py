"""Every loss of training/losses.py, including the score-distillation surrogate's gradient and the segment mask."""

import math

import pytest
import torch
import torch.nn.functional as F

from training import losses as L


def test_output_and_feature_kd():
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.allclose(L.output_kd_loss(s, t), F.mse_loss(s, t))
    feats_s = {"down.0": torch.randn(2, 8, 4, 4), "up.0": torch.randn(2, 8, 4, 4)}
    feats_t = {"down.0": torch.randn(2, 8, 4, 4), "up.1": torch.randn(2, 8, 4, 4)}
    got = L.feature_kd_loss(feats_s, feats_t, [("down.0", "down.0"), ("up.1", "up.0")])
    want = (F.mse_loss(feats_s["down.0"], feats_t["down.0"]) + F.mse_loss(feats_s["up.0"], feats_t["up.1"])) / 2
    assert torch.allclose(got, want)


def test_kd_does_not_backprop_into_teacher():
    t = torch.randn(2, 3, requires_grad=True)
    s = torch.randn(2, 3, requires_grad=True)
    L.output_kd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_downsampled_l1_ignores_detail_below_the_factor():
    base = torch.rand(2, 3, 32, 32)
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 0.2 - 0.1  # zero mean in every 8x8 cell
    assert L.downsampled_l1(base + checker, base, 8).item() < 1e-6
    assert L.downsampled_l1(base + 0.1, base, 8).item() == pytest.approx(0.1, abs=1e-5)
    assert L.downsampled_l1(base + checker, base, 1).item() == pytest.approx(0.1, abs=1e-5)


def test_hinge_gan_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert L.hinge_discriminator_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert L.hinge_generator_loss(fake).item() == pytest.approx(1.0)
    assert L.softplus_generator_loss(torch.zeros(3)).item() == pytest.approx(math.log(2))


def test_discriminators_shapes():
    d = L.PatchDiscriminator(3, (16, 32))
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 16, 16)
    head = L.FeatureGANHead(32)
    assert head(torch.randn(3, 32, 2, 2)).shape == (3,)


@pytest.mark.parametrize("distance", ["ssim", "mse", "lpips"])
def test_feature_distances_zero_on_identical_and_positive_otherwise(distance):
    fn = L.FEATURE_DISTANCES[distance]
    feats = [torch.randn(3, 8, 16, 16), torch.randn(3, 16, 4, 4), torch.randn(3, 32, 1, 1)]
    same = fn(feats, [f.clone() for f in feats])
    other = fn(feats, [torch.randn_like(f) for f in feats])
    assert same.shape == (3,) and other.shape == (3,)
    assert same.abs().max().item() < 1e-5
    assert (other > 0.05).all()


def test_ssim_matches_definition_on_a_flat_window():
    # seeded, with an absolute floor: two random windows can give an SSIM near 0, where float32 cancellation
    # exceeds any relative tolerance (unseeded, 40 draws in 2000 failed rel=1e-4)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.rand(1, 1, 7, 7, generator=generator, dtype=torch.float64) for _ in range(2))
    # a 7x7 map with a 7x7 Gaussian window gives one SSIM value; check it against the closed form with those weights
    w = L._gaussian_window(7, 1.5, 1, a)[0, 0]
    mu_a, mu_b = (w * a).sum(), (w * b).sum()
    va, vb = (w * a * a).sum() - mu_a**2, (w * b * b).sum() - mu_b**2
    cov = (w * a * b).sum() - mu_a * mu_b
    c1, c2 = 1e-4, 9e-4
    want = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    assert L.ssim_per_sample(a, b).item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


def test_lpips_style_is_scale_invariant_per_position():
    f = torch.randn(2, 8, 4, 4)
    assert L.lpips_feature_distance([f * 3.0], [f]).abs().max() < 1e-6


@pytest.mark.parametrize("normalise", [True, False])
def test_score_distillation_gradient_equals_the_analytic_score_difference(normalise):
    torch.manual_seed(0)
    x = torch.randn(4, 4, 8, 8, requires_grad=True)
    fake, real = torch.randn(4, 4, 8, 8).double(), torch.randn(4, 4, 8, 8).double()
    L.score_distillation_per_sample(x, fake, real, normalise).sum().backward()
    want = fake - real
    if normalise:
        want = want / (x.detach().double() - real).abs().mean((1, 2, 3), keepdim=True)
    assert torch.allclose(x.grad.double() * x[0].numel(), want, atol=1e-5)


def test_score_distillation_gradient_is_the_ikl_score_difference_direction():
    """Diff-Instruct: d KL / dx = s_fake(x_t) - s_real(x_t) with s = (sqrt(a) x0 - x_t) / (1 - a) times dx_t/dx."""
    torch.manual_seed(1)
    a = torch.tensor(0.3, dtype=torch.float64)
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    x_t = torch.randn(1, 4, 4, 4).double()
    fake, real = torch.randn_like(x_t), torch.randn_like(x_t)
    score = lambda x0: (a.sqrt() * x0 - x_t) / (1 - a)  # noqa: E731
    ikl = (score(fake) - score(real)) * a.sqrt()
    L.score_distillation_per_sample(x, fake, real, normalise=False).sum().backward()
    cos = F.cosine_similarity(x.grad.double().flatten(), ikl.flatten(), dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)


def test_score_distillation_leaves_no_graph_into_the_score_models():
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    fake = torch.randn(2, 4, 4, 4, requires_grad=True)
    L.score_distillation_per_sample(x, fake, torch.randn(2, 4, 4, 4)).sum().backward()
    assert fake.grad is None


def test_segment_mask_routes_each_timestep_where_the_config_says():
    t = torch.tensor([0, 1, 499, 500, 501, 999])
    assert L.score_distillation_mask(t, 0.5, 1000, "low").tolist() == [True, True, True, False, False, False]
    assert L.score_distillation_mask(t, 0.5, 1000, "high").tolist() == [False, False, False, True, True, True]
    assert L.score_distillation_mask(t, 0.5, 1000, "all").all()
    assert L.score_distillation_mask(t, 0.3, 1000, "low").tolist() == [True, True, False, False, False, False]
    with pytest.raises(ValueError):
        L.score_distillation_mask(t, 0.5, 1000, "middle")


def test_segmented_loss_sends_each_sample_to_one_loss():
    sd = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    fm = torch.tensor([10.0, 20.0, 30.0], requires_grad=True)
    mask = torch.tensor([True, False, True])
    loss = L.segmented_loss(sd, fm, mask, feature_weight=0.5)
    assert loss.item() == pytest.approx((1 + 0.5 * 20 + 3) / 3)
    loss.backward()
    assert sd.grad.tolist() == pytest.approx([1 / 3, 0, 1 / 3])
    assert fm.grad.tolist() == pytest.approx([0, 0.5 / 3, 0])


def test_feature_matching_weight_decays():
    assert L.decayed_weight(1.0, 0.0, 0.0) == 1.0 and L.decayed_weight(1.0, 0.0, 1.0) == 0.0
    assert L.decayed_weight(1.0, 0.0, 0.25) == pytest.approx(0.75)
    assert L.decayed_weight(1.0, 0.2, 0.5, "cosine") == pytest.approx(0.6)
    assert L.decayed_weight(1.0, 0.0, 0.7, "constant") == 1.0
    assert L.decayed_weight(1.0, 0.0, 2.0) == 0.0


def test_diff_instruct_learning_rate_survives_the_scheduler_and_a_resume():
    from diffusers.optimization import get_scheduler

    from training.stages.onestep import set_learning_rate

    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([param], lr=2e-4)
    sched = get_scheduler("constant", opt)
    set_learning_rate(opt, sched, 2e-5)
    param.grad = torch.ones(3)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-5)
    # a resume restores the warm-up's rate; setting it again (as every phase-(b) step does) wins
    opt.load_state_dict({**opt.state_dict(), "param_groups": [{**opt.param_groups[0], "lr": 2e-4}]})
    set_learning_rate(opt, sched, 2e-5)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-5)


def test_latent_mse_is_the_per_sample_mean_squared_difference():
    x, target = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8)
    expected = torch.stack([F.mse_loss(a.float(), b) for a, b in zip(x, target)])
    assert torch.allclose(L.latent_mse_per_sample(x, target), expected)


def test_latent_moments_ignore_the_layout_and_see_the_scale_and_offset():
    target = torch.randn(2, 4, 8, 8)
    shuffled = target.flatten(2)[:, :, torch.randperm(64)].view_as(target)  # same values per channel, new layout
    assert torch.allclose(L.latent_moments_per_sample(shuffled, target), torch.zeros(2), atol=1e-6)
    assert L.latent_mse_per_sample(shuffled, target).min() > 0.5
    doubled = L.latent_moments_per_sample(2 * target, target)  # std doubles: (2s - s)^2 = s^2 per channel ...
    shifted = L.latent_moments_per_sample(target + 1, target)  # ... and a unit offset costs exactly 1
    assert torch.allclose(doubled, target.flatten(2).std(2).pow(2).mean(1) + (target.flatten(2).mean(2)).pow(2).mean(1))
    assert torch.allclose(shifted, torch.ones(2), atol=1e-5)
    x = target.clone().requires_grad_(True)
    (L.latent_moments_per_sample(1.5 * x, target).sum()).backward()  # a gradient that shrinks an inflated scale
    assert (x.grad * target).sum() > 0
