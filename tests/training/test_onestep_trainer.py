"""``OneStepTrainer``'s named steps, one at a time, on the toy teacher (stage 4's UNet student and stage 5's
ControlNet student): each update moves its own model and only it."""

import pytest
import torch

from training.config import from_dict
from training.draws import StepDraws
from training.mini.models import RECIPE_DICT
from training.runner import Runner
from training.stages.onestep import OneStepConfig, OneStepTrainer


def _trainer(toy, tmp_path, controlnet: bool, **extra) -> OneStepTrainer:
    values = dict(
        output_dir=str(tmp_path), teacher=str(toy.teacher), recipe=RECIPE_DICT, data=toy.data_cfg(), num_pairs=4,
        ode_steps=2, batch_size=2, max_steps=4, warmup_steps=2, fake_updates=1, lr=1e-3, fake_lr=1e-3, progress=False,
        **extra,
    )  # fmt: skip
    if controlnet:
        values.update(teacher_controlnet=str(toy.teacher_controlnet), embedding_channels=[16, 32, 64],
                      control_kind="sobel")  # fmt: skip
    cfg = from_dict(OneStepConfig, values)
    return OneStepTrainer(cfg, Runner(cfg, "onestep"), controlnet_mode=controlnet)


@pytest.fixture(scope="module", params=[False, True], ids=["unet", "controlnet"])
def trainer(request, toy, tmp_path_factory) -> OneStepTrainer:
    return _trainer(toy, tmp_path_factory.mktemp("trainer"), request.param, gan_weight=0.1)


def _snapshot(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _moved(module, before) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before))


def test_generate_and_validate_shapes(trainer):
    batch = trainer.pairs.take(torch.tensor([0, 1]), trainer.device)
    x = trainer.generate(batch)
    assert x.shape == batch["target"].shape and x.dtype == torch.float32 and x.requires_grad
    images = trainer.validate()
    n = min(trainer.cfg.num_validation, len(trainer.pairs))
    rows = 2 * n if "control" in batch else n  # stage 5: the controls above the samples
    assert images.shape[0] == rows and images.shape[1] == 3 and 0 <= float(images.min()) <= float(images.max()) <= 1


def test_warmup_step_moves_only_the_student(trainer):
    student, fake = _snapshot(trainer.trained), _snapshot(trainer.fake)
    logs = trainer.warmup_step()
    assert _moved(trainer.trained, student) and not _moved(trainer.fake, fake)
    assert logs["loss"] > 0 and "sd" not in logs


def test_fake_step_moves_only_the_fake_score_and_its_gan_head(trainer):
    student, fake = _snapshot(trainer.trained), _snapshot(trainer.fake)
    logs = trainer.fake_step()
    assert _moved(trainer.fake, fake) and not _moved(trainer.trained, student)
    assert logs["fake_loss"] > 0 and logs["gan_d"] > 0


def test_score_step_routes_samples_by_their_timestep_and_moves_only_the_student(trainer):
    trainer.run.state.step = trainer.cfg.warmup_steps  # phase (b)
    student, fake = _snapshot(trainer.trained), _snapshot(trainer.fake)
    logs = trainer.score_step()
    assert _moved(trainer.trained, student) and not _moved(trainer.fake, fake)
    assert {"sd", "fm", "gan_g", "alpha", "fm_weight", "score_fraction"} <= set(logs)
    assert logs["alpha"] == trainer.cfg.segment_alpha and 0 <= logs["score_fraction"] <= 1


def test_teacher_controlnet_residuals_are_constants_unless_the_gan_term_asks_for_their_gradient(trainer):
    """Stage 5's frozen teacher ControlNet (on both score models): constants for the scores and the fake model's
    update, differentiable with respect to x_t for the GAN generator term, never trained; stage 4 has none."""
    x_t = torch.randn(2, 4, 8, 8, requires_grad=True)
    t, embeds, control = torch.tensor([10, 900]), trainer.teachers.uncond.expand(2, -1, -1), torch.rand(2, 3, 32, 32)
    controlnet = trainer.teachers.controlnet
    if controlnet is None:
        assert trainer.residuals(x_t, t, embeds, None, grad=True) == {}
        return
    mid = controlnet.controlnet_mid_block.weight
    saved = mid.detach().clone()
    with torch.no_grad():
        mid.normal_(std=0.1)  # a trained ControlNet: not zero-initialised
    try:
        assert not trainer.residuals(x_t, t, embeds, control)["mid_block_additional_residual"].requires_grad
        live = trainer.residuals(x_t, t, embeds, control, grad=True)
        live["mid_block_additional_residual"].pow(2).sum().backward()
        assert x_t.grad is not None and x_t.grad.abs().sum() > 0
        assert not any(p.grad is not None for p in controlnet.parameters())  # the teacher stays frozen
    finally:
        with torch.no_grad():
            mid.copy_(saved)


def test_fresh_noise_replaces_only_the_chosen_rows(trainer):
    batch = trainer.pairs.take(torch.tensor([0, 1]), trainer.device)
    draws = StepDraws(0, 2).start(0)
    mixed = trainer.with_fresh_noise(batch, draws, torch.tensor([True, False]))
    assert not torch.equal(mixed["noise"][0], batch["noise"][0]) and torch.equal(mixed["noise"][1], batch["noise"][1])
    assert torch.equal(mixed["target"], batch["target"])  # the targets stay the pairs'


def test_a_step_switches_the_feature_matching_teacher_when_asked(toy, tmp_path):
    trainer = _trainer(toy, tmp_path, False, switch_teacher_at=1)
    trainer.step()
    assert trainer.fm_teacher is None
    trainer.run.state.step = 1
    trainer.step()
    assert trainer.fm_teacher is not None and not any(p.requires_grad for p in trainer.fm_teacher.parameters())


def test_logged_steps_report_each_loss_terms_gradient_and_leave_its_time_out(toy, tmp_path):
    trainer = _trainer(toy, tmp_path, False, log_grad_norms=True, log_every=1, latent_weight=0.3, segment_alpha=0.9)
    warm = trainer.warmup_step()
    assert warm["grad_norm/fm"] > 0 and warm["grad_norm/latent"] > 0
    trainer.run.state.step = trainer.cfg.warmup_steps  # phase (b)
    logs = trainer.score_step()
    assert {"grad_norm/sd", "grad_norm/fm", "grad_norm/latent", "grad_cos/sd_fm"} <= set(logs)
    assert -1 <= logs["grad_cos/sd_fm"] <= 1 and trainer.diagnostic_seconds > 0
    before = trainer.diagnostic_seconds
    trainer.run.timing.clear()
    trainer.step()  # the step's own timing leaves the diagnostics' seconds out
    spent = trainer.diagnostic_seconds - before
    assert spent > 0 and trainer.run.timing["diff_instruct_seconds"] > 0


def test_gradient_logs_are_each_terms_own_gradient():
    from training.diagnostics import gradient_logs

    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    terms = {"a": (w * torch.tensor([3.0, 0.0])).sum(), "b": -(w * torch.tensor([3.0, 0.0])).sum(), "c": w.sum() * 0}
    logs = gradient_logs(terms, [w], pairs=[("a", "b"), ("a", "c")])
    assert logs["grad_norm/a"] == pytest.approx(3.0) and logs["grad_norm/c"] == 0
    assert logs["grad_cos/a_b"] == pytest.approx(-1.0) and logs["grad_cos/a_c"] == 0
