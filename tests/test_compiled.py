"""torch.compile of the residual branches (trainer.compile): same numbers as eager, no recompiles."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import pytest
import torch

from sdexp import train
from sdexp.compiled import compile_residual_branches, compiled_graph_count
from sdexp.config import ConfigError, compose_config, validate
from sdexp.stochastic_depth import set_survival_probs
from tests.conftest import TINY


@pytest.mark.slow
def test_compiled_branches_match_eager_in_training_and_eval() -> None:
    torch.manual_seed(0)  # the weights: the same in any test order
    eager = train.prepare_model(compose_config(TINY), 10, torch.device("cpu"))
    set_survival_probs(eager.sd_blocks, [0.5] * len(eager.sd_blocks))
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()  # no graphs from earlier tests: this one must build its own
    before = compiled_graph_count()
    compile_residual_branches(compiled)
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outputs = []
    for model in (eager, compiled):
        model.train()
        model.gate_generator.manual_seed(1)  # the same gates in both
        loss = model(x).square().mean()
        loss.backward()
        model.eval()
        with torch.no_grad():
            outputs.append((loss.detach(), [p.grad for p in model.parameters()], model(x)))
    (loss_e, grads_e, eval_e), (loss_c, grads_c, eval_c) = outputs
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert [g is None for g in grads_c] == [g is None for g in grads_e]  # dropped branches: no gradient
    dropped = [not block.gate for block in compiled.sd_blocks]
    assert dropped == [not block.gate for block in eager.sd_blocks] and 0 < sum(dropped) < len(dropped)
    for grad_c, grad_e in zip(grads_c, grads_e, strict=True):
        if grad_e is not None:  # fp32 sums in another order: errors scale with the largest entry (a
            # BatchNorm bias under torch 2.4: 1.7e-3 of it; a wrong gradient is off by its own size)
            torch.testing.assert_close(grad_c, grad_e, rtol=1e-3, atol=5e-3 * grad_e.abs().max().item())
    torch.testing.assert_close(eval_c, eval_e, rtol=1e-4, atol=1e-5)
    assert compiled_graph_count() > before  # compiled, not run eagerly (nn.Module.compile under torch 2.11)


@pytest.mark.slow
def test_a_compiled_run_builds_its_graphs_in_the_first_epoch_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = compiled_graph_count()
    cfg = compose_config([*TINY, "trainer.compile=true", "trainer.epochs=3"])
    with caplog.at_level(logging.INFO, logger="sdexp.train"):
        result = train.run(cfg, tmp_path)
    assert result["status"] == "completed"
    counts = [int(n) for n in re.findall(r"torch.compile: (\d+) graphs built so far", caplog.text)]
    assert len(counts) == 3
    assert counts[0] > before  # the first epoch compiled (training and eval graphs)
    assert counts[1] == counts[2] == counts[0]  # and later epochs did not
    assert "more graphs" not in caplog.text


def test_a_compiled_run_that_compiles_nothing_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        train, "compile_residual_branches", lambda model: None
    )  # as nn.Module.compile on 2.11
    torch._dynamo.utils.counters.clear()  # no graphs from earlier tests in this process
    cfg = compose_config([*TINY, "trainer.compile=true", "trainer.epochs=1"])
    with caplog.at_level(logging.INFO, logger="sdexp.train"):
        assert train.run(cfg, tmp_path)["status"] == "completed"
    assert "trainer.compile=true, but torch" in caplog.text and "the branches ran eagerly" in caplog.text


def test_compile_and_cuda_graphs_are_exclusive() -> None:
    cfg = compose_config([*TINY, "trainer.compile=true", "trainer.cuda_graphs=true"])
    with pytest.raises(ConfigError, match="choose one of the two"):
        validate(cfg)
