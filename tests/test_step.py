"""The segment-wise training step against autograd over the whole model (on the CPU, where its
segments run eagerly; benchmarks/cuda_graphs_check.py checks the captured graphs on a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from sdexp.config import ConfigError, compose_config, validate
from sdexp.models import ResNet
from sdexp.optim import build_optimizer
from sdexp.step import AutogradStep, SegmentStep
from sdexp.stochastic_depth import set_survival_probs, survival_probs

TINY_MODELS = {
    "pad shortcut": {"blocks_per_stage": [2, 2, 2], "widths": [4, 8, 16], "stem_width": 4},
    "projection, bottleneck": {
        "blocks_per_stage": [1, 2],
        "widths": [4, 8],
        "stem_width": 8,
        "block": "bottleneck",
        "shortcut": "projection",
    },
    "inverted scaling": {
        "blocks_per_stage": [2, 2],
        "widths": [4, 8],
        "stem_width": 4,
        "sd_scaling": "inverted",
    },
}


def _trainer(kind: type, model: ResNet) -> tuple[ResNet, torch.optim.Optimizer, object]:
    model = copy.deepcopy(model)
    optimizer, _ = build_optimizer(model, compose_config().optimizer, epochs=10)
    return model, optimizer, kind(model, optimizer, None)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_segment_step_trains_like_autograd(name: str) -> None:
    """Bit for bit on the CPU: each segment's backward is autograd's, on the same tensors."""
    torch.manual_seed(0)
    model = ResNet(num_classes=5, gate_seed=3, **TINY_MODELS[name])
    set_survival_probs(model.sd_blocks, survival_probs("uniform", len(model.sd_blocks), 0.5))
    model.train()
    reference, ref_opt, ref_step = _trainer(AutogradStep, model)
    segmented, seg_opt, seg_step = _trainer(SegmentStep, model)
    dropped, dropped_transitions = 0, 0
    for _ in range(8):
        x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
        ref_loss, ref_logits = ref_step(x, y)
        seg_loss, seg_logits = seg_step(x, y)
        gates = [b.gate for b in segmented.sd_blocks]
        assert gates == [b.gate for b in reference.sd_blocks]  # the same host generator, drawn alike
        assert segmented.executed_last == reference.executed_last == sum(gates)
        dropped += len(gates) - sum(gates)
        dropped_transitions += sum(
            not b.gate for b in segmented.sd_blocks if not isinstance(b.shortcut, torch.nn.Identity)
        )
        torch.testing.assert_close(seg_loss, ref_loss, rtol=0, atol=0)
        torch.testing.assert_close(seg_logits, ref_logits, rtol=0, atol=0)
    assert 0 < dropped < 8 * len(gates) and dropped_transitions > 0  # both segments of a transition ran
    # weights, BatchNorm statistics (a dropped block's are untouched) and momentum buffers
    for (key, ours), theirs in zip(
        segmented.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=key)
    for ours, theirs in zip(seg_opt.state.values(), ref_opt.state.values(), strict=True):
        torch.testing.assert_close(ours["momentum_buffer"], theirs["momentum_buffer"], rtol=0, atol=0)


def test_segment_step_leaves_batchnorm_statistics_alone_and_refuses_other_batches() -> None:
    model = ResNet([1, 1], [4, 8], 4, num_classes=3, gate_seed=0).train()
    before = copy.deepcopy(model.state_dict())
    _, _, step = _trainer(SegmentStep, model)
    step._build(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    for key, value in step.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="built for batches of"):
        step(torch.randn(3, 3, 8, 8), torch.zeros(3, dtype=torch.long))
    step.model.eval()
    with pytest.raises(RuntimeError, match=r"call model\.train\(\) first"):
        step(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.compile=true"], "trainer.step=segments and trainer.compile=true: choose one"),
        (["stochastic_depth.mode=row"], "needs stochastic_depth.mode=batch"),
    ],
)
def test_segment_step_refuses_what_it_cannot_capture(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(["trainer.step=segments", *overrides]))
