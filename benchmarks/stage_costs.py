"""What each stage's residual branches cost inside a real training step, and the SD/constant ratio
those costs predict.

Times whole training steps (forward, backward, optimizer step) of the configured model with every
branch run, with each stage's branches dropped in turn, and with all of them dropped (survival
probability 1 or 0 per block, so the trainer's own gating does the dropping). A stage's cost is the
full step minus the step without it: cache and memory effects of training are included, which timing
one branch alone misses. The prediction for a survival rule is (fixed + Σ_s p̄_s·T_s) / (fixed + Σ_s T_s),
with T_s a stage's cost and p̄_s its blocks' mean survival probability. A second table times one
stride-1 3×3 convolution of each stage alone (forward; backward for input and weight) and gives its
GFLOP/s. In the CIFAR ResNets these convolutions have equal FLOPs in every stage, so unequal rates
show how much of the stages' unequal costs the convolutions explain; the rest is BatchNorm, ReLU and
the add, whose work follows the activation size (4× larger in stage 1 than in stage 3).

    python benchmarks/stage_costs.py model=resnet110 trainer.device=cpu
    python benchmarks/stage_costs.py model=resnet110 trainer.precision=bf16 --repeats 9
    python benchmarks/stage_costs.py --quick                       # seconds; what CI runs
"""

from __future__ import annotations

import statistics
import time

import arg_types
import pandas as pd
import torch
from arg_types import count
from torch import nn
from torch.nn import functional as F
from train_speed import sync  # a sibling script: benchmarks/ is on sys.path when a benchmark runs

from sdexp.config import compose_config, register_configs, validate
from sdexp.environment import resolve_device, speed_settings
from sdexp.errors import reported
from sdexp.models import IMAGE_SIZE, ResNet
from sdexp.optim import build_optimizer
from sdexp.stochastic_depth import StochasticDepthBlock, set_survival_probs, survival_probs
from sdexp.train import prepare_model


def stage_blocks(model: ResNet) -> list[list[StochasticDepthBlock]]:
    """The model's blocks, stage by stage."""
    return [[m for m in stage.modules() if isinstance(m, StochasticDepthBlock)] for stage in model.stages]


class StepTimer:
    """Times training steps of one model on one random batch, with chosen stages dropped."""

    def __init__(self, overrides: list[str], steps: int) -> None:
        cfg = compose_config(overrides)
        validate(cfg)  # a value run.py refuses, or a device this machine lacks
        self.cfg, self.steps = cfg, steps
        self.device = resolve_device(cfg.trainer.device)
        self.amp_dtype, channels_last = speed_settings(cfg.trainer, self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        torch.manual_seed(0)
        self.model = prepare_model(cfg, 10, self.device).train()
        self.optimizer, _ = build_optimizer(self.model, cfg.optimizer, cfg.trainer.epochs)
        batch = cfg.trainer.batch_size
        self.x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device=self.device).contiguous(
            memory_format=self.memory_format
        )
        self.y = torch.randint(0, 10, (batch,), device=self.device)
        self.stages = stage_blocks(self.model)

    def step_ms(self, dropped: set[int]) -> float:
        """Mean time of ``steps`` steps (after one untimed step) with the stages in ``dropped`` skipped."""
        probs = [0.0 if s in dropped else 1.0 for s, blocks in enumerate(self.stages) for _ in blocks]
        set_survival_probs(self.model.sd_blocks, probs)
        times = []
        for _ in range(self.steps + 1):
            sync(self.device)
            start = time.perf_counter()
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss = F.cross_entropy(self.model(self.x), self.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sync(self.device)
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.mean(times[1:])


def stage_convs(model: ResNet) -> list[nn.Conv2d]:
    """Each stage's first stride-1 3×3 convolution."""
    return [
        next(
            m
            for m in stage.modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1)
        )
        for stage in model.stages
    ]


def conv_rates(timer: StepTimer, repeats: int) -> list[tuple[torch.Size, float, float, float]]:
    """(input shape, forward ms, backward ms, GFLOP per forward) of each stage's 3×3 convolution, timed
    alone on its own input shape (median of ``repeats``), with the step's precision and memory format."""
    convs = stage_convs(timer.model)
    shapes: dict[nn.Conv2d, torch.Size] = {}
    hooks = [c.register_forward_hook(lambda m, args, _: shapes.update({m: args[0].shape})) for c in convs]
    timer.step_ms(set())
    for hook in hooks:
        hook.remove()
    rows = []
    for conv in convs:
        x = torch.randn(shapes[conv], device=timer.device).contiguous(memory_format=timer.memory_format)
        x.requires_grad_()
        forward, backward = [], []
        for _ in range(repeats + 1):
            with torch.autocast(
                timer.device.type, dtype=timer.amp_dtype, enabled=timer.amp_dtype is not None
            ):
                sync(timer.device)
                start = time.perf_counter()
                y = conv(x)
                sync(timer.device)
                middle = time.perf_counter()
            torch.autograd.grad(y, (x, conv.weight), torch.ones_like(y))
            sync(timer.device)
            forward.append(middle - start)
            backward.append(time.perf_counter() - middle)
        n, _, h, w = y.shape
        gflop = 2 * n * h * w * conv.out_channels * conv.in_channels * conv.weight[0, 0].numel() / 1e9
        rows.append(
            (x.shape, 1e3 * statistics.median(forward[1:]), 1e3 * statistics.median(backward[1:]), gflop)
        )
    return rows


def main() -> None:
    parser = arg_types.parser(__doc__)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for run.py")
    parser.add_argument("--repeats", type=count, default=None, help="rounds over all cases (median; 5)")
    parser.add_argument("--steps", type=count, default=None, help="timed steps per case and round (3)")
    parser.add_argument("--quick", action="store_true", help="tiny and fast: checks the script runs")
    args = parser.parse_args()
    register_configs()
    arg_types.fill(args, {"repeats": 1, "steps": 1}, {"repeats": 5, "steps": 3})
    defaults = {"model": "resnet110"}
    if args.quick:
        defaults = {"model": "resnet20", "trainer.device": "cpu", "trainer.batch_size": "32"}
    given = {o.split("=", 1)[0] for o in args.overrides}
    overrides = [f"{k}={v}" for k, v in defaults.items() if k not in given] + args.overrides
    timer = StepTimer(overrides, args.steps)
    n_stages = len(timer.stages)
    cases = [frozenset()] + [frozenset({s}) for s in range(n_stages)] + [frozenset(range(n_stages))]
    rounds: dict[frozenset[int], list[float]] = {case: [] for case in cases}
    for _ in range(args.repeats):  # cases interleaved, so drift on a shared machine hits all alike
        for case in cases:
            rounds[case].append(timer.step_ms(set(case)))
    ms = {case: statistics.median(t) for case, t in rounds.items()}
    full, fixed = ms[frozenset()], ms[frozenset(range(n_stages))]
    costs = [full - ms[frozenset({s})] for s in range(n_stages)]
    sd = timer.cfg.stochastic_depth
    rule = sd.rule if sd.rule != "off" else "linear"
    probs = survival_probs(rule, len(timer.model.sd_blocks), sd.final_survival)
    mean_p, first = [], 0
    for blocks in timer.stages:
        mean_p.append(statistics.mean(probs[first : first + len(blocks)]))
        first += len(blocks)

    batch = timer.cfg.trainer.batch_size
    print(f"\n{timer.cfg.model.name} on {timer.device}, torch {torch.__version__}, batch {batch}, "
          f"median of {args.repeats} rounds of {args.steps} steps")  # fmt: skip
    parts = [
        {"part": f"stage {s + 1} branches", "blocks": str(len(blocks)), "ms per step": f"{cost:.1f}",
         "ms per block": f"{cost / len(blocks):.2f}", "mean p": f"{p:.3f}"}
        for s, (blocks, cost, p) in enumerate(zip(timer.stages, costs, mean_p, strict=True))
    ]  # fmt: skip
    parts.append({"part": "fixed (stem, shortcuts, head, loss, optimizer)", "ms per step": f"{fixed:.1f}"})
    parts.append({"part": "whole step", "ms per step": f"{full:.1f}"})
    print(pd.DataFrame(parts).fillna("").to_markdown(index=False, disable_numparse=True))
    predicted = (fixed + sum(p * c for p, c in zip(mean_p, costs, strict=True))) / (fixed + sum(costs))
    print(f"\npredicted SD/constant step time ({rule}, p_L = {sd.final_survival}): {predicted:.3f}; "
          f"mean survival probability {statistics.mean(probs):.3f}")  # fmt: skip

    convs = [
        {"stage": str(s), "3×3 conv input": "×".join(map(str, shape)), "forward ms": f"{fwd:.2f}",
         "forward GFLOP/s": f"{gflop / fwd * 1e3:.0f}", "backward ms": f"{bwd:.2f}",
         "backward GFLOP/s": f"{2 * gflop / bwd * 1e3:.0f}"}
        for s, (shape, fwd, bwd, gflop) in enumerate(conv_rates(timer, 5 * args.repeats), start=1)
    ]  # fmt: skip
    print("\n" + pd.DataFrame(convs).to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        main()
