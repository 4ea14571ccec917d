"""Stochastic-depth semantics against the paper (Huang et al. 2016, Eq. 2-5)."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import binomtest
from torch.nn import functional as F

from sdexp.models import ResNet
from sdexp.stochastic_depth import (
    StochasticDepthBlock,
    sample_gates,
    set_survival_probs,
    survival_probs,
)


def _tiny(mode: str = "batch", scaling: str = "test_time", rule: str = "linear") -> ResNet:
    model = ResNet([3, 3, 3], [4, 8, 16], 4, sd_mode=mode, sd_scaling=scaling, gate_seed=0)
    set_survival_probs(model.sd_blocks, survival_probs(rule, len(model.sd_blocks), 0.5))
    return model


def test_linear_rule_resnet110() -> None:
    probs = survival_probs("linear", 54, 0.5)
    assert probs == pytest.approx([1 - (layer / 54) * 0.5 for layer in range(1, 55)], abs=1e-12)
    assert probs[-1] == pytest.approx(0.5)


def test_other_rules() -> None:
    assert survival_probs("off", 5, 0.5) == [1.0] * 5
    assert survival_probs("uniform", 5, 0.8) == [0.8] * 5
    first = survival_probs("linear_epochs", 5, 0.5, epoch=0, epochs=10)
    middle = survival_probs("linear_epochs", 5, 0.5, epoch=3, epochs=7)
    last = survival_probs("linear_epochs", 5, 0.5, epoch=9, epochs=10)
    assert first == [1.0] * 5 and last == pytest.approx([0.5] * 5)
    assert middle == pytest.approx([0.75] * 5)
    with pytest.raises(ValueError, match="'cubic' is not a valid Rule"):
        survival_probs("cubic", 5, 0.5)


def test_gate_frequencies_match_survival_probabilities() -> None:
    model = _tiny()
    probs = [b.survival for b in model.sd_blocks]
    draws = 4000
    kept = torch.zeros(len(probs))
    for _ in range(draws):
        sample_gates(model.sd_blocks, model.gate_generator)
        kept += torch.tensor([float(b.gate) for b in model.sd_blocks])
    for k, p in zip(kept.int().tolist(), probs, strict=True):
        # Two-sided binomial test per block; with 9 blocks, 1e-3 each keeps the family error < 1 %.
        assert binomtest(k, draws, p).pvalue > 1e-3, (k, draws, p)
        # ...and the test has power: a rule off by 0.05 would be rejected.
        assert binomtest(k, draws, min(p + 0.05, 1.0) if p < 0.9 else p - 0.05).pvalue < 1e-3


def test_executed_block_count_is_reported() -> None:
    model = _tiny()
    model.train()
    x = torch.randn(2, 3, 32, 32)
    steps, executed = 300, 0
    for _ in range(steps):
        model(x)
        executed += model.executed_last
    expected = sum(b.survival for b in model.sd_blocks) / len(model.sd_blocks)
    n = steps * len(model.sd_blocks)
    fraction = executed / n
    assert abs(fraction - expected) < 4 * (expected * (1 - expected) / n) ** 0.5


def test_row_mode_masks_each_sample() -> None:
    torch.manual_seed(0)
    residual = torch.nn.Conv2d(2, 2, 1)  # zero weights, bias 1: the branch adds exactly 1 where kept
    torch.nn.init.zeros_(residual.weight)
    torch.nn.init.ones_(residual.bias)
    block = StochasticDepthBlock(residual, torch.nn.Identity(), "row", "none")
    block.set_survival_prob(0.3)
    block.train()
    out = block(torch.zeros(20000, 2, 1, 1))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    per_sample = out.flatten(1)
    assert torch.equal(per_sample[:, 0], per_sample[:, 1])  # one gate per sample, not per element
    assert binomtest(int(per_sample[:, 0].sum()), len(out), 0.3).pvalue > 1e-3


def _explicit_eq5(model: ResNet, x: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 5 written out: H_l = ReLU(p_l · f_l(H_{l-1}) + id(H_{l-1}))."""
    h = model.stem(x)
    for block in model.sd_blocks:
        p = float(block.survival_prob)
        h = F.relu(p * block.residual(h) + block.shortcut(h))
    return model.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def test_eval_output_is_equation_5() -> None:
    model = _tiny().eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _explicit_eq5(model, x), atol=1e-5, rtol=1e-5)


def test_inverted_scaling_leaves_eval_unscaled() -> None:
    model = _tiny(scaling="inverted").eval()
    reference = copy.deepcopy(model)
    set_survival_probs(reference.sd_blocks, [1.0] * len(reference.sd_blocks))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _explicit_eq5(reference, x), atol=1e-5, rtol=1e-5)


def test_inverted_scaling_divides_kept_branch_in_training() -> None:
    residual = torch.nn.Conv2d(2, 2, 1)
    block = StochasticDepthBlock(residual, torch.nn.Identity(), "batch", "inverted")
    block.set_survival_prob(0.25)
    block.train()
    block.gate = True
    x = torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(block(x), F.relu(x + residual(x) / 0.25))


def test_dropped_block_is_identity_without_compute_gradient_or_bn_update() -> None:
    model = _tiny()
    model.train()
    block = model.sd_blocks[3]  # the first block of stage 2: a transition (stride 2, 4 -> 8 channels)
    calls = []
    block.residual.register_forward_hook(lambda *_: calls.append(1))
    bn = block.residual[1]
    running_mean = bn.running_mean.clone()
    block.gate = False
    x = torch.randn(4, 4, 32, 32).relu().requires_grad_()  # a block's input is a ReLU output
    out = block(x)
    out.sum().backward()
    assert calls == []
    torch.testing.assert_close(out, block.shortcut(x))  # subsampled, zero channels appended
    assert all(p.grad is None for p in block.residual.parameters())
    torch.testing.assert_close(bn.running_mean, running_mean)
    assert bn.num_batches_tracked.item() == 0
    block.gate = True
    block(x).sum().backward()
    assert calls == [1]
    assert all(p.grad is not None for p in block.residual.parameters())
    assert not torch.equal(bn.running_mean, running_mean)


def test_a_dropped_block_skips_its_relu_without_changing_any_gradient() -> None:
    model = _tiny(rule="uniform")  # p = 0.5 everywhere: many dropped blocks
    relu_always = copy.deepcopy(model)
    for block in relu_always.sd_blocks:
        block.nonnegative_shortcut = False
    assert all(block.nonnegative_shortcut for block in model.sd_blocks)  # identity or pad shortcuts
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    losses = []
    for m in (model, relu_always):
        m.train()
        m.gate_generator.manual_seed(1)
        loss = F.cross_entropy(m(x), torch.arange(16) % 10)
        loss.backward()
        losses.append(loss)
    dropped = [not block.gate for block in model.sd_blocks]
    assert 0 < sum(dropped) < len(dropped)
    assert dropped[0] and dropped[3]  # an identity and a pad (stride 2) shortcut among them
    assert torch.equal(losses[0], losses[1])
    for p, q in zip(model.parameters(), relu_always.parameters(), strict=True):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)
    x = torch.randn(2, 4, 32, 32).relu()
    block = model.sd_blocks[1]  # identity shortcut: a dropped block hands its input on unchanged
    block.gate = False
    assert block(x) is x


@pytest.mark.parametrize("block_index", [1, 3])  # identity and pad (stride 2) shortcuts
def test_a_kept_block_adds_and_rectifies_in_place_with_the_numbers_of_the_formula(
    block_index: int,
) -> None:
    block = _tiny().sd_blocks[block_index].train()
    block.gate = True
    reference = copy.deepcopy(block)
    x = torch.randn(4, block.residual[0].in_channels, 32, 32).relu().requires_grad_()
    x_before = x.detach().clone()
    x_ref = x.detach().clone().requires_grad_()
    out = block(x)
    expected = F.relu(reference.shortcut(x_ref) + reference.residual(x_ref))
    assert torch.equal(out, expected)  # bit for bit: a + b == b + a in floating point
    assert torch.equal(x.detach(), x_before)  # the block's input (the identity shortcut) is left alone
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(x.grad, x_ref.grad)
    for p, q in zip(block.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_survival_probabilities_are_in_the_state_dict() -> None:
    model = _tiny()
    state = model.state_dict()
    keys = [k for k in state if k.endswith("survival_prob")]
    assert len(keys) == len(model.sd_blocks)
    fresh = _tiny(rule="off")
    assert all(b.survival == 1.0 for b in fresh.sd_blocks)
    fresh.load_state_dict(state)
    assert [b.survival for b in fresh.sd_blocks] == pytest.approx([b.survival for b in model.sd_blocks])
