"""Sweep wall time.

CPU mode: N tiny jobs through Hydra's basic launcher (in-process, one after another) and the local
launcher (separate processes, ``--workers`` at a time), against the ideal ⌈N/slots⌉ × one job.

GPU mode (``--runs-per-gpu 1,2,4,8``): N identical short ResNet-110 runs through the local launcher on
GPU 0, k at a time for each k: wall time, aggregate img/s, each run's peak GPU memory, and the paper's
grid (6 runs of 500 epochs) projected from the runs' own speed at that k.

    python benchmarks/sweep.py [--jobs 6] [--workers 2] [--quick]
    python benchmarks/sweep.py --runs-per-gpu 1,2,4,8 --jobs 8 [extra overrides, e.g. trainer.step=segments]
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from sdexp import runs
from sdexp.errors import reported

ROOT = Path(__file__).resolve().parents[1]
JOB = ["model=resnet20", "dataset=synthetic", "model.widths=[8,16,32]", "model.stem_width=8",
       "dataset.train_size=1024", "dataset.val_size=128", "dataset.test_size=128", "trainer.epochs=2",
       "trainer.device=cpu", "trainer.progress=false"]  # fmt: skip


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    flags = [a for a in args if a == "-m"]  # Hydra wants -m before the overrides
    overrides = [a for a in args if a != "-m"]
    subprocess.run([sys.executable, str(ROOT / "run.py"), *flags, *JOB, *overrides], cwd=cwd, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - start


GPU_JOB = ["model=resnet110", "dataset=synthetic", "dataset.train_size=12800", "dataset.val_size=1000",
           "dataset.test_size=1000", "trainer.epochs=2", "trainer.device=cuda", "trainer.progress=false",
           "hydra/launcher=local", "hydra.launcher.gpus=[0]"]  # fmt: skip
PAPER_GRID_RUNS, PAPER_EPOCHS, PAPER_TRAIN_IMAGES = 6, 500, 45_000


def gpu_mode(args: argparse.Namespace) -> None:
    """N runs at k at a time for each k; ``--quick``: tiny CPU runs (the launcher still sees GPU 0
    where ``CUDA_VISIBLE_DEVICES=0`` is set), which checks the script, not the GPU."""
    job = GPU_JOB if not args.quick else [*JOB, "hydra/launcher=local", "hydra.launcher.gpus=[0]"]
    seeds = "seed=" + ",".join(map(str, range(args.jobs)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in map(int, args.runs_per_gpu.split(",")):
            sweep_dir = Path(tmp, f"k{k}")
            overrides = [
                *job,
                *args.overrides,
                seeds,
                f"hydra.launcher.runs_per_gpu={k}",
                f"hydra.sweep.dir={sweep_dir}",
            ]
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", *overrides], cwd=tmp, check=True,
                           capture_output=True)  # fmt: skip
            wall = time.perf_counter() - start
            results = [runs.read_result(p.parent) for p in sorted(sweep_dir.glob("*/result.json"))]
            last_epochs = [runs.read_metrics(p.parent)[-1] for p in sorted(sweep_dir.glob("*/result.json"))]
            per_run = statistics.median(r["images_per_s"] for r in last_epochs)  # the last epoch: warm
            images = sum(r["epochs_completed"] for r in results) * int(
                _value(overrides, "dataset.train_size")
            )
            grid_h = math.ceil(PAPER_GRID_RUNS / k) * PAPER_EPOCHS * PAPER_TRAIN_IMAGES / per_run / 3600
            rows.append({"k": k, "runs": len(results), "wall s": f"{wall:.1f}",
                         "aggregate img/s (wall)": f"{images / wall:.0f}", "per-run img/s": f"{per_run:.0f}",
                         "k × per-run": f"{k * per_run:.0f}",
                         "peak GiB per run": f"{max(r.get('peak_gpu_memory_gib', 0.0) for r in results):.2f}",
                         "paper grid h (training only)": f"{grid_h:.2f}"})  # fmt: skip
    print(f"\n{args.jobs} runs per k; overrides: {' '.join(job + args.overrides)}")
    print(pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True))


def _value(overrides: list[str], key: str) -> str:
    """The value the last override of ``key`` sets."""
    return [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 jobs: checks the script runs")
    parser.add_argument("--runs-per-gpu", default=None, help="GPU mode: comma list of k (runs at a time)")
    parser.add_argument("overrides", nargs="*", help="GPU mode: more overrides for every run")
    args = parser.parse_args()
    if args.quick:
        args.jobs = 2
    if args.runs_per_gpu:
        return gpu_mode(args)
    seeds = "seed=" + ",".join(map(str, range(args.jobs)))
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        one = timed(["hydra.run.dir=single"], cwd)
        basic = timed(["-m", seeds, "hydra.sweep.dir=basic"], cwd)
        local = timed(["-m", seeds, "hydra/launcher=local", f"hydra.launcher.cpu_workers={args.workers}",
                       "hydra.sweep.dir=local"], cwd)  # fmt: skip
    ideal = math.ceil(args.jobs / args.workers) * one
    print(f"\n{args.jobs} jobs; one job alone (a full process) {one:.1f} s; {args.workers} local workers")
    table = pd.DataFrame({
        "launcher": ["basic (sequential, in-process)", f"local ({args.workers} workers)"],
        "wall s": [f"{basic:.1f}", f"{local:.1f}"],
        "/ ideal ⌈N/slots⌉ × one job": [
            f"{basic / (args.jobs * one):.2f} of N × one job", f"{local / ideal:.2f}"
        ],
    })  # fmt: skip
    print(table.to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        main()
