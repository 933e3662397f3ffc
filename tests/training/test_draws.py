"""A step's random draws and its optimiser step do not depend on how the global batch is split
(``training.draws.StepDraws``, ``training.runner.Runner.accumulated_step``)."""

import pytest
import torch

from training.config import TrainConfig
from training.data import Bank
from training.draws import StepDraws
from training.runner import Runner


def _all_draws(draws: StepDraws, bank: Bank) -> list[torch.Tensor]:
    """Every kind of draw, in a fixed order, for the micro-batch ``draws`` was started on."""
    return [draws.randn((2, 3)), draws.rand(), draws.randint(1000, low=20), draws.sample(bank)["x"]]


@pytest.mark.parametrize("world,accum", [(2, 1), (1, 2), (2, 2), (3, 1)])
def test_any_split_of_the_global_batch_draws_the_same_rows(world, accum):
    bank = Bank({"x": torch.arange(50.0)})
    whole = _all_draws(StepDraws(7, 2 * world * accum).start(5, phase=1), bank)
    parts = [
        _all_draws(StepDraws(7, 2, rank, world, accum).start(5, phase=1, micro=micro), bank)
        for micro in range(accum)
        for rank in range(world)
    ]  # micro-batch k of rank r holds global rows (k * world + r) * 2 ...
    for i, draw in enumerate(whole):
        assert torch.equal(torch.cat([p[i] for p in parts]), draw)


def test_steps_phases_draws_and_seeds_differ():
    first = StepDraws(0, 4).start(0).randn((8,))
    assert not torch.equal(first, StepDraws(0, 4).start(1).randn((8,)))  # another step
    assert not torch.equal(first, StepDraws(0, 4).start(0, phase=1).randn((8,)))  # another phase
    assert not torch.equal(first, StepDraws(1, 4).start(0).randn((8,)))  # another seed
    again = StepDraws(0, 4).start(0)
    assert torch.equal(again.randn((8,)), first) and not torch.equal(again.randn((8,)), first)  # the next draw
    assert not torch.equal(first[0], first[1])  # rows differ
    with pytest.raises(ValueError, match="micro-batch"):
        StepDraws(0, 4, accum=2).start(0, micro=2)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        StepDraws(0, 4, rank=2, world=2)


def _train(tmp_path, batch_size: int, grad_accum: int) -> torch.Tensor:
    """Three Adam steps of a linear model on per-row draws, through ``Runner.accumulated_step``."""
    cfg = TrainConfig(
        output_dir=str(tmp_path / f"b{batch_size}a{grad_accum}"), batch_size=batch_size, grad_accum=grad_accum,
        lr=0.05, max_grad_norm=0.5, progress=False,
    )  # fmt: skip
    run = Runner(cfg, "draws")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = run.optimizer(model.parameters())
    model, opt = run.prepare(model, opt)

    def micro_loss(draws, micro):
        x = draws.randn((3,))
        return (model(x).squeeze(1) - x.sum(1) * draws.rand()).pow(2).mean(), None

    for step in range(3):
        run.state.step = step
        run.accumulated_step(model, opt, None, 0, micro_loss)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulating_micro_batches_takes_the_step_of_the_whole_batch(tmp_path):
    whole = _train(tmp_path, 4, 1)
    assert torch.allclose(_train(tmp_path, 2, 2), whole, atol=1e-6)
    assert torch.allclose(_train(tmp_path, 1, 4), whole, atol=1e-6)
    assert not torch.allclose(_train(tmp_path, 2, 1), whole, atol=1e-3)  # half the batch is another run
