"""The segment-wise training step against autograd over the whole model (on the CPU, where its
segments run eagerly; benchmarks/cuda_graphs_check.py checks the captured graphs on a GPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from sdexp import step as step_module
from sdexp.config import ConfigError, compose_config, validate
from sdexp.conv import use_gemm_weight_grads
from sdexp.models import ResNet
from sdexp.optim import build_optimizer
from sdexp.step import build_step
from sdexp.step.autograd import AutogradStep
from sdexp.step.segments import SegmentStep
from sdexp.stochastic_depth import set_survival_probs, survival_probs

TINY_MODELS = {
    "pad shortcut": {"blocks_per_stage": [2, 2, 2], "widths": [4, 8, 16], "stem_width": 4},
    "avgpool shortcut": {
        "blocks_per_stage": [2, 2],
        "widths": [4, 8],
        "stem_width": 4,
        "shortcut": "avgpool",
    },
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


def _trainer(
    kind: type, model: ResNet, amp_dtype: torch.dtype | None = None
) -> tuple[ResNet, torch.optim.Optimizer, object]:
    model = copy.deepcopy(model)
    optimizer, _ = build_optimizer(model, compose_config().optimizer, epochs=10)
    return model, optimizer, kind(model, optimizer, amp_dtype)


@pytest.mark.parametrize("weight_grad", ["native", "gemm"])
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", TINY_MODELS)
def test_segment_step_trains_like_autograd(
    name: str, amp_dtype: torch.dtype | None, weight_grad: str
) -> None:
    """Bit for bit on the CPU: each segment's backward is autograd's, on the same tensors; with
    autocast, the convolutions' own low-precision weights give the numbers autocast's casts give; with
    GEMM weight gradients (trainer.conv_weight_grad=gemm) too."""
    torch.manual_seed(0)
    model = ResNet(num_classes=5, gate_seed=3, **TINY_MODELS[name])
    if weight_grad == "gemm":
        assert use_gemm_weight_grads(model) > 0
    set_survival_probs(model.sd_blocks, survival_probs("uniform", len(model.sd_blocks), 0.5))
    model.train()
    reference, ref_opt, ref_step = _trainer(AutogradStep, model, amp_dtype)
    segmented, seg_opt, seg_step = _trainer(SegmentStep, model, amp_dtype)
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
    step.build(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
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


@pytest.mark.parametrize(
    ("overrides", "device", "reason"),
    [
        ([], "cpu", "the segments capture CUDA graphs; this run is on cpu"),
        (["trainer.cuda_graphs=true"], "cuda", "trainer.cuda_graphs=true graphs the branches instead"),
        (["trainer.compile=true"], "cuda", "trainer.compile=true compiles the branches instead"),
        (["+debug=default"], "cuda", "trainer.detect_anomaly=true needs autograd"),
        (["stochastic_depth.mode=row"], "cuda", "stochastic_depth.mode=row draws random numbers"),
        ([], "cuda", None),
    ],
)
def test_auto_step_takes_segments_only_on_cuda_where_nothing_stands_in_their_way(
    overrides: list[str], device: str, reason: str | None
) -> None:
    cfg = compose_config(overrides)
    assert cfg.trainer.step == "auto"  # the default
    why = step_module._why_not_segments(cfg.trainer, cfg.stochastic_depth.mode, torch.device(device))
    assert why == reason if reason is None else why.startswith(reason)


def test_auto_step_on_the_cpu_is_autograd_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config()
    model = ResNet([1, 1], [4, 8], 4, num_classes=3, gate_seed=0)
    optimizer, _ = build_optimizer(model, cfg.optimizer, epochs=10)
    with caplog.at_level("INFO", logger="sdexp.step"):
        step = build_step(cfg.trainer, cfg.stochastic_depth.mode, model, optimizer, None)
    assert isinstance(step, AutogradStep)
    [message] = caplog.messages
    assert message == "trainer.step=auto: autograd (the segments capture CUDA graphs; this run is on cpu)"


def test_auto_step_falls_back_to_autograd_with_one_warning_where_the_segments_fail(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As where a GPU refuses a capture, or a replay does not match its eager run."""
    torch.manual_seed(0)
    model = ResNet([2, 2], [4, 8], 4, num_classes=3, gate_seed=1).train()
    set_survival_probs(model.sd_blocks, survival_probs("linear", len(model.sd_blocks), 0.5))
    _, _, ref_step = _trainer(AutogradStep, model)
    auto_model, auto_opt, segments = _trainer(SegmentStep, model)
    before = copy.deepcopy(auto_model.state_dict())

    def failing_build(self: SegmentStep, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.stem(x)  # moves BatchNorm statistics, as the warm-ups do
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(SegmentStep, "_build", failing_build)
    step = step_module.AutoStep(segments, AutogradStep(auto_model, auto_opt, None))
    assert step.kind == "auto"  # not built yet
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    with caplog.at_level("WARNING", logger="sdexp.step"):
        with pytest.raises(RuntimeError):  # the public build restores the statistics around _build
            segments.build(x, y)
        for key, value in auto_model.state_dict().items():
            assert torch.equal(value, before[key]), key
        for _ in range(3):
            torch.testing.assert_close(step(x, y), ref_step(x, y), rtol=0, atol=0)
    assert step.step is step.fallback and step.segments is None and segments.shape is None
    assert step.kind == "autograd"  # what train_speed.py and step_profile.py report
    [warning] = caplog.messages
    assert warning.startswith("trainer.step=auto: the segment-wise step failed (CUDA error: operation not")
    assert warning.endswith("); using autograd")


def test_auto_step_says_which_step_it_took() -> None:
    model = ResNet([1, 1], [4, 8], 4, num_classes=3, gate_seed=0).train()
    optimizer, _ = build_optimizer(model, compose_config().optimizer, epochs=10)
    step = step_module.AutoStep(SegmentStep(model, optimizer, None), AutogradStep(model, optimizer, None))
    assert step.kind == "auto"
    step(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))  # the CPU builds the segments eagerly
    assert step.kind == "segments" and step.step is step.segments
