"""Where a training step's time goes: wall time per step against the device time of its kernels,
kernels per step, and the kernels that take the most time.

Builds one case of ``train_speed.py`` (model, optimizer, training step and loader as a run builds
them), trains its warm-up epoch, times one epoch of the trainer's ``train_one_epoch``, then profiles
another with ``torch.profiler`` (kernels inside CUDA-graph replays included). A GPU busy for most of
the wall time means the kernels set the pace; idle for much of it, the host. On the CPU the table
lists operators by their own CPU time instead (summed over threads).

    python benchmarks/step_profile.py                         # ResNet-110, the default step, SD
    python benchmarks/step_profile.py --step autograd --rule off
    python benchmarks/step_profile.py --quick                 # seconds on the CPU; what CI runs
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from train_speed import Case, Setting, sync  # a sibling script: benchmarks/ is on sys.path

from sdexp.config import register_configs
from sdexp.environment import resolve_device
from sdexp.errors import reported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet110")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rule", default="linear", help="stochastic_depth: linear, off, ...")
    parser.add_argument("--step", default="auto", help="trainer.step: auto, autograd or segments")
    parser.add_argument("--precision", default=None, help="fp32 or bf16 (default: bf16 on CUDA, else fp32)")
    parser.add_argument("--images", type=int, default=6400, help="images per profiled epoch")
    parser.add_argument("--top", type=int, default=15, help="rows of the table")
    parser.add_argument("--quick", action="store_true", help="tiny and fast: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.model, args.images, args.top = "resnet20", 256, 5
    args.repeats, args.workers = 1, 0  # what Case reads besides
    register_configs()
    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    precision = args.precision or ("bf16" if on_cuda else "fp32")
    case = Case(args, args.rule, Setting(precision, True, args.step, False, False, "fast"))
    steps = len(case.loader)
    sync(device)
    start = time.perf_counter()
    case.train(case.loader)
    wall_ms = (time.perf_counter() - start) * 1000 / steps
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_cuda else [])]) as prof:
        case.train(case.loader)
    kind = DeviceType.CUDA if on_cuda else DeviceType.CPU
    events = [e for e in prof.events() if e.device_type == kind]
    times = pd.DataFrame(
        {
            "name": [e.name[:80] for e in events],
            "us": [e.time_range.elapsed_us() if on_cuda else e.self_cpu_time_total for e in events],
        }
    )
    table = times.groupby("name")["us"].agg(["sum", "count"]).sort_values("sum", ascending=False)
    busy_ms = table["sum"].sum() / 1000 / steps
    what = "kernel" if on_cuda else "operator (own CPU time)"
    print(f"\n{args.model}, stochastic_depth={args.rule}, trainer.step={args.step}, {precision}, on "
          f"{torch.cuda.get_device_name(device) if on_cuda else 'cpu'}, torch {torch.__version__}: "
          f"{steps} steps of {case.batch}")  # fmt: skip
    share = 100 * busy_ms / wall_ms  # on the CPU summed over threads: it can pass 100
    print(f"wall per step {wall_ms:.2f} ms (unprofiled); {what} time per step {busy_ms:.2f} ms "
          f"({share:.0f} % of the wall time); {len(events) / steps:.0f} per step")  # fmt: skip
    top = table.head(args.top)
    print(pd.DataFrame({
        what: top.index,
        "ms per step": (top["sum"] / 1000 / steps).map("{:.3f}".format),
        "share %": (100 * top["sum"] / table["sum"].sum()).map("{:.1f}".format),
        "calls per step": (top["count"] / steps).map("{:.1f}".format),
    }).to_markdown(index=False, disable_numparse=True))  # fmt: skip


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        sys.exit(main())
