"""The optimizer and learning-rate schedule follow the paper."""

from __future__ import annotations

import itertools

import pytest
import torch

from sdexp.config import compose_config
from sdexp.models import build_model
from sdexp.optim import build_optimizer


def _setup(overrides: list[str]) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    cfg = compose_config(["model=resnet20", "model.widths=[4,8,16]", "model.stem_width=4", *overrides])
    model = build_model(cfg.model, cfg.stochastic_depth, 10, seed=0)
    optimizer, scheduler = build_optimizer(model, cfg.optimizer, cfg.trainer.epochs)
    return model, optimizer, scheduler


def _lrs(optimizer: torch.optim.Optimizer, scheduler: object, epochs: int) -> list[float]:
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_paper_schedule_divides_after_epochs_250_and_375() -> None:
    _, optimizer, scheduler = _setup([])
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 1e-4)
    lrs = _lrs(optimizer, scheduler, 500)  # lrs[e - 1] is the rate used in epoch e
    assert lrs[249] == pytest.approx(0.1) and lrs[250] == pytest.approx(0.01)
    assert lrs[374] == pytest.approx(0.01) and lrs[375] == pytest.approx(0.001)
    assert lrs[-1] == pytest.approx(0.001)


def test_cosine_schedule_decays_to_zero() -> None:
    _, optimizer, scheduler = _setup(["optimizer=sgd_cosine", "trainer.epochs=10"])
    lrs = _lrs(optimizer, scheduler, 10)
    assert lrs[0] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] < 0.01


def test_cosine_schedule_says_milestones_are_not_used(caplog: pytest.LogCaptureFixture) -> None:
    _, optimizer, scheduler = _setup(["optimizer.schedule=cosine", "trainer.epochs=10"])  # sgd_paper's kept
    assert "optimizer.milestones [0.5, 0.75] are not used: optimizer.schedule=cosine" in caplog.text
    assert _lrs(optimizer, scheduler, 10)[5:7] == pytest.approx([0.05, 0.0345], abs=1e-3)  # no step at 5


def test_dropped_block_still_gets_momentum_and_weight_decay() -> None:
    model, optimizer, _ = _setup([])
    model.train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    block = model.sd_blocks[0]
    conv = block.residual[0].weight
    for p in (1.0, 0.0):  # a step with the block run, then one with it dropped
        block.set_survival_prob(p)
        optimizer.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        assert block.gate == (p == 1.0)
        before = conv.detach().clone()
        optimizer.step()
    assert torch.count_nonzero(conv.grad) == 0  # no gradient through the dropped branch...
    assert not torch.equal(conv.detach(), before)  # ...but momentum and weight decay still apply


def test_milestones_that_fall_on_one_epoch_are_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="sdexp.optim"):
        _, optimizer, scheduler = _setup(["trainer.epochs=3"])  # 0.5 and 0.75 of 3 epochs: both epoch 2
    assert "[0.5, 0.75] of 3 epochs round to the same epoch: after epoch 2 the rate drops by gamma more" in (
        caplog.text
    )
    assert _lrs(optimizer, scheduler, 3) == pytest.approx([0.1, 0.1, 0.001])  # what the warning says
    for epochs in (4, 1):  # after epochs 2 and 3; after the last epoch, where no epoch uses the rate
        caplog.clear()
        with caplog.at_level("WARNING", logger="sdexp.optim"):
            _setup([f"trainer.epochs={epochs}"])
        assert caplog.text == ""
