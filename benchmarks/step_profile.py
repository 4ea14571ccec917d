"""Where a training step's time goes: wall time per step against the device time of its kernels,
GPU activities per step, and the costliest kernels; for sdexp's step or for the plain PyTorch peer.

Builds one case of ``train_speed.py`` (model, optimizer, training step and loader as a run builds
them) or, with ``--peer graph|eager``, the step of ``plain_peer.py`` (graph: its whole step as one
CUDA graph, the mark the segments are measured against). Times one epoch, then profiles another with
``torch.profiler`` (kernels inside CUDA-graph replays included). A GPU busy for most of the wall time
means the kernels set the pace; idle for much of it, the host. On the CPU the table lists operators
by their own CPU time instead (summed over threads).

    python benchmarks/step_profile.py                         # ResNet-110, the default step, SD
    python benchmarks/step_profile.py --step autograd --rule off
    python benchmarks/step_profile.py --peer graph            # the plain model's whole-step graph
    python benchmarks/step_profile.py --conv-weight-grad gemm # GEMM weight gradients
    python benchmarks/step_profile.py --quick                 # seconds on the CPU; what CI runs
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import arg_types  # sibling scripts: benchmarks/ is on sys.path
import pandas as pd
import torch
from arg_types import count, one_of
from plain_peer import build_step, cifar_depth
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from train_speed import Case, Setting, check_images, sync

from sdexp.config import group_options, register_configs
from sdexp.conv import ConvWeightGrad
from sdexp.environment import resolve_device
from sdexp.errors import SdexpError, reported
from sdexp.step import StepKind


def profiled(epoch: Callable[[], None], device: torch.device) -> tuple[float, pd.DataFrame, int]:
    """Wall seconds of one unprofiled ``epoch``, then the profile of another: total microseconds and
    calls per kernel (per operator on the CPU), and the number of device activities."""
    on_cuda = device.type == "cuda"
    sync(device)
    start = time.perf_counter()
    epoch()
    sync(device)
    wall = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_cuda else [])]) as prof:
        epoch()
        sync(device)
    kind = DeviceType.CUDA if on_cuda else DeviceType.CPU
    # record_function ranges (zero_grad, optimizer step) also appear on the device: not kernels
    events = [
        e for e in prof.events() if e.device_type == kind and not getattr(e, "is_user_annotation", False)
    ]
    times = pd.DataFrame({
        "name": [e.name[:80] for e in events],
        "us": [e.time_range.elapsed_us() if on_cuda else e.self_cpu_time_total for e in events],
    })  # fmt: skip
    return (
        wall,
        times.groupby("name")["us"].agg(["sum", "count"]).sort_values("sum", ascending=False),
        len(events),
    )


def main() -> None:
    parser = arg_types.parser(__doc__)
    parser.add_argument("--model", default=None, help="resnet110 (--quick: resnet20)")
    parser.add_argument("--device", type=arg_types.device, default="auto")
    parser.add_argument("--rule", type=one_of(*group_options("stochastic_depth")), default="linear",
                        help=f"stochastic_depth: {', '.join(group_options('stochastic_depth'))}")  # fmt: skip
    parser.add_argument(
        "--step", type=one_of(*StepKind), default="auto", help=f"one of {', '.join(StepKind)}"
    )
    parser.add_argument(
        "--peer", type=one_of("graph", "eager"), help="graph or eager: the plain peer instead"
    )
    parser.add_argument(
        "--conv-weight-grad", type=one_of(*ConvWeightGrad), default="native", help="native or gemm"
    )
    parser.add_argument(
        "--precision", type=one_of("fp32", "bf16"), help="fp32 or bf16 (default: bf16 on CUDA)"
    )
    parser.add_argument("--images", type=count, default=None, help="images per profiled epoch (6400)")
    parser.add_argument("--top", type=count, default=None, help="rows of the table (15)")
    parser.add_argument("--quick", action="store_true", help="tiny and fast: checks the script runs")
    args = parser.parse_args()
    arg_types.fill(
        args,
        {"model": "resnet20", "images": 256, "top": 5},
        {"model": "resnet110", "images": 6400, "top": 15},
    )
    args.repeats, args.workers = 1, 0  # what Case reads besides
    register_configs()
    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    precision = args.precision or ("bf16" if on_cuda else "fp32")
    if on_cuda and hasattr(torch.profiler, "_utils"):  # CUPTI must start before graphs are captured
        getattr(torch.profiler._utils, "_init_for_cuda_graphs", lambda: None)()
    if args.peer == "graph" and not on_cuda:
        raise SdexpError(
            "--peer graph replays a CUDA graph: it needs a CUDA device (--peer eager runs anywhere)"
        )
    if args.peer and args.rule not in ("off", "linear"):
        raise SdexpError(
            f"--rule {args.rule}: the plain peer drops blocks by the linear rule or not at all (off)"
        )
    if args.peer:
        depth, batch = cifar_depth(args.model), 128
        check_images(args.images, batch)
        step = build_step(depth, args.peer, args.rule != "off", precision == "bf16", batch, device)
        steps = args.images // batch
        what = f"plain peer ({args.peer})"

        def epoch() -> None:
            for _ in range(steps):
                step()

    else:
        setting = Setting(precision, True, args.step, False, False, "fast", args.conv_weight_grad)
        case = Case(args, args.rule, setting)
        batch, steps = case.batch, len(case.loader)
        what = f"trainer.step={args.step} (took {case.step.kind}), conv_weight_grad={args.conv_weight_grad}"

        def epoch() -> None:
            case.train(case.loader)

    wall, table, activities = profiled(epoch, device)
    wall_ms, busy_ms = wall * 1000 / steps, table["sum"].sum() / 1000 / steps
    unit = "kernel" if on_cuda else "operator (own CPU time)"
    where = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    print(f"\n{args.model}, stochastic_depth={args.rule}, {what}, {precision}, on {where}, "
          f"torch {torch.__version__}: {steps} steps of {batch}")  # fmt: skip
    print(f"wall per step {wall_ms:.2f} ms (unprofiled); {unit} time per step {busy_ms:.2f} ms "
          f"({100 * busy_ms / wall_ms:.0f} % of the wall time); {activities / steps:.0f} "
          f"{'device activities (kernels, copies, fills)' if on_cuda else 'operators'} per step")  # fmt: skip
    top = table.head(args.top)
    print(pd.DataFrame({
        unit: top.index,
        "ms per step": (top["sum"] / 1000 / steps).map("{:.3f}".format),
        "share %": (100 * top["sum"] / table["sum"].sum()).map("{:.1f}".format),
        "calls per step": (top["count"] / steps).map("{:.1f}".format),
    }).to_markdown(index=False, disable_numparse=True))  # fmt: skip


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        sys.exit(main())
