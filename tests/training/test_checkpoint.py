"""Checkpoint round trips (models, several optimisers, lr scheduler, EMA, RNG, step) and bit-exact resume on CPU."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.training_utils import EMAModel

from training.checkpoint import TrainState, checkpoints, latest_checkpoint, resolve_resume, save_checkpoint
from training.draws import StepDraws

OPTIMISERS = {
    "adamw": lambda p: torch.optim.AdamW(p, 1e-2, weight_decay=0.1),
    "adam": lambda p: torch.optim.Adam(p, 1e-2),
    "sgd": lambda p: torch.optim.SGD(p, 1e-2, momentum=0.9, nesterov=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, 1e-3),
}


def _session(optimiser: str, out, resume=False):
    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    opt = OPTIMISERS[optimiser](model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    model, opt, sched = acc.prepare(model, opt, sched)
    state = TrainState()
    ema = EMAModel(model.parameters(), decay=0.9)
    acc.register_for_checkpointing(state)
    acc.register_for_checkpointing(ema)
    if resume:
        acc.load_state(str(latest_checkpoint(out)))
    return acc, model, opt, sched, state, ema


def _train(acc, model, opt, sched, state, ema, steps):
    for _ in range(steps):
        x = StepDraws(3, 16).start(state.step).randn((8,))  # keyed by the step: nothing to restore
        noise = torch.randn(16, 1)  # global RNG: restored from the checkpoint too (dropout uses it as well)
        loss = (model(x) - x.sum(1, keepdim=True) - noise).pow(2).mean()
        acc.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        ema.step(model.parameters())
        state.step += 1


def _snapshot(model, ema, sched, state):
    return (
        [p.detach().clone() for p in model.parameters()]
        + [p.clone() for p in ema.shadow_params]
        + [torch.tensor(sched.get_last_lr()), torch.tensor(state.step)]
    )


@pytest.mark.parametrize("optimiser", sorted(OPTIMISERS))
def test_resume_is_bit_exact(tmp_path, optimiser):
    straight = _session(optimiser, tmp_path / "a")
    _train(*straight, steps=6)
    want = _snapshot(straight[1], straight[5], straight[3], straight[4])

    first = _session(optimiser, tmp_path / "b")
    _train(*first, steps=3)
    save_checkpoint(first[0], tmp_path / "b", first[4].step, limit=2)
    _train(*first, steps=1)  # progress after the checkpoint is lost, as in a crash
    resumed = _session(optimiser, tmp_path / "b", resume=True)
    assert resumed[4].step == 3
    _train(*resumed, steps=3)
    got = _snapshot(resumed[1], resumed[5], resumed[3], resumed[4])
    for a, b in zip(want, got):
        assert torch.equal(a, b)


def test_checkpoint_limit_and_resume_resolution(tmp_path):
    acc, *_ = _session("adam", tmp_path)
    assert resolve_resume(tmp_path, "latest") is None and resolve_resume(tmp_path, None) is None
    for step in (1, 2, 3, 4):
        save_checkpoint(acc, tmp_path, step, limit=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    assert resolve_resume(tmp_path, "latest").name == "step_0000004"
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step_0000003")).name == "step_0000003"
    with pytest.raises(FileNotFoundError):
        resolve_resume(tmp_path, str(tmp_path / "nope"))
