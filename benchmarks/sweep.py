"""Sweep wall time.

CPU mode: N tiny jobs through Hydra's basic launcher (in-process, one after another) and the local
launcher (separate processes, ``--workers`` at a time), against the ideal ⌈N/slots⌉ × one job.

GPU mode (``--runs-per-gpu 1,2,4,8``): for each k, N identical short ResNet-110 runs through the local
launcher on GPU 0, k at a time (N = k by default: one round): wall time; aggregate img/s over the
wall time and while all k runs were past their first epoch (start-ups left out, evaluations kept); each
run's peak GPU memory; the paper's grid (6 runs of 500 epochs) projected from the runs' own speed.

    python benchmarks/sweep.py [--jobs 6] [--workers 2] [--quick]
    python benchmarks/sweep.py --runs-per-gpu 1,2,4,8 [--jobs N] [overrides, e.g. hydra.launcher.mps=false]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import arg_types  # a sibling script: benchmarks/ is on sys.path
import pandas as pd
import torch
from arg_types import count, counts
from train_speed import PAPER_EPOCHS, PAPER_TRAIN_IMAGES

from hydra_plugins.sdexp_launcher.local_launcher import visible_gpus
from sdexp import runs
from sdexp.errors import SdexpError, reported

ROOT = Path(__file__).resolve().parents[1]
JOB = ["model=resnet20", "dataset=synthetic", "model.widths=[8,16,32]", "model.stem_width=8",
       "dataset.train_size=1024", "dataset.val_size=128", "dataset.test_size=128", "trainer.epochs=2",
       "trainer.device=cpu", "trainer.progress=false"]  # fmt: skip


def run_py(args: list[str], cwd: Path) -> str:
    """Run ``run.py`` with ``args``; its output, or its end on stderr and an error if it failed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True
    )
    if done.returncode != 0:
        print(*(done.stdout + done.stderr).splitlines()[-30:], sep="\n", file=sys.stderr)
        raise SdexpError(
            f"run.py {' '.join(args)} exited with status {done.returncode} (its output's end is above)"
        )
    return done.stdout + done.stderr


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    flags = [a for a in args if a == "-m"]  # Hydra wants -m before the overrides
    run_py([*flags, *JOB, *(a for a in args if a != "-m")], cwd)
    return time.perf_counter() - start


GPU_JOB = ["model=resnet110", "dataset=synthetic", "dataset.train_size=12800", "dataset.val_size=1000",
           "dataset.test_size=1000", "trainer.epochs=4", "trainer.device=cuda", "trainer.progress=false",
           "hydra/launcher=local", "hydra.launcher.gpus=[0]"]  # fmt: skip
PAPER_GRID_RUNS = 6  # seeds 0-2 x {constant depth, stochastic depth}


def gpu_mode(args: argparse.Namespace) -> None:
    """N runs at k at a time for each k; ``--quick``: tiny CPU runs (the launcher still sees GPU 0
    where ``CUDA_VISIBLE_DEVICES=0`` is set), which checks the script, not the GPU. Each k's row is
    printed as soon as it is measured (stderr), the table at the end."""
    job = GPU_JOB
    if args.quick:  # 4 epochs, as on the GPU, so that the runs' epochs overlap after their start-ups
        job = [*(o for o in JOB if not o.startswith("trainer.epochs=")), "trainer.epochs=4",
               "hydra/launcher=local", "hydra.launcher.gpus=[0]"]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.runs_per_gpu:
            rows.append(measure(k, [*job, *args.overrides], args.jobs or k, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\n{args.jobs or 'k'} runs per k; overrides: {' '.join(job + args.overrides)}")
    print(pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True))


def measure(k: int, job: list[str], jobs: int, tmp: Path) -> dict:
    """One sweep of ``jobs`` runs of ``job``, k at a time on GPU 0: its table row."""
    sweep_dir = tmp / f"k{k}"
    seeds = "seed=" + ",".join(map(str, range(jobs)))
    overrides = [*job, seeds, f"hydra.launcher.runs_per_gpu={k}", f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    output = run_py(["-m", *overrides], tmp)
    wall = time.perf_counter() - start
    folders = sorted(p.parent for p in sweep_dir.glob(f"*/{runs.RESULT}"))
    said = [line for line in output.splitlines() if "launcher" in line or "MPS" in line]
    said += [line for line in (folders[0] / runs.LOG).read_text().splitlines() if "trainer.step" in line]
    print(f"k={k}:", *said, sep="\n  ", file=sys.stderr)  # the launcher's summary, one run's step
    results = [runs.read_result(f) for f in folders]
    per_run = statistics.median(runs.read_metrics(f)[-1]["images_per_s"] for f in folders)  # warm
    train_size = int(_value(overrides, "dataset.train_size"))
    images = sum(r["epochs_completed"] for r in results) * train_size
    concurrent = concurrent_images_per_s([epoch_ends(f / runs.LOG) for f in folders], train_size)
    grid_h = math.ceil(PAPER_GRID_RUNS / k) * PAPER_EPOCHS * PAPER_TRAIN_IMAGES / per_run / 3600
    return {"k": k, "runs": len(results), "wall s": f"{wall:.1f}",
            "aggregate img/s (wall)": f"{images / wall:.0f}",
            "aggregate img/s (all running)": f"{concurrent:.0f}" if concurrent else "-",
            "per-run img/s": f"{per_run:.0f}", "k × per-run": f"{k * per_run:.0f}",
            "peak GiB per run": f"{max(r.get('peak_gpu_memory_gib', 0.0) for r in results):.2f}",
            "paper grid h (training only)": f"{grid_h:.2f}"}  # fmt: skip


EPOCH_LINE = re.compile(r"^\[([\d-]+ [\d:]+,\d+)\]\[sdexp\.train\]\[INFO\] - epoch \d+/\d+ ")


def epoch_ends(log: Path) -> list[float]:
    """When each epoch of a run ended (its evaluation included), in seconds, from its ``train.log``."""
    found = (EPOCH_LINE.match(line) for line in log.read_text().splitlines())
    return [datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() for m in found if m]


def concurrent_images_per_s(ends: list[list[float]], train_size: int) -> float | None:
    """Training images per second over the time when every run was past its first epoch and none had
    finished: start-ups left out, evaluations kept, each epoch's images spread evenly over its span.
    None where there was no such time (runs in several rounds, or start-ups longer than the runs)."""
    if any(len(e) < 2 for e in ends):
        return None
    start, stop = max(e[0] for e in ends), min(e[-1] for e in ends)
    if stop <= start:
        return None
    images = sum(
        train_size * max(0.0, min(b, stop) - max(a, start)) / (b - a)
        for e in ends
        for a, b in itertools.pairwise(e)
    )
    return images / (stop - start)


def _value(overrides: list[str], key: str) -> str:
    """The value the last override of ``key`` sets."""
    return [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key][-1]


def main() -> None:
    parser = arg_types.parser(__doc__)
    parser.add_argument("--jobs", type=count, default=None, help="runs per sweep (6; GPU mode: k, one round)")
    parser.add_argument("--workers", type=count, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny CPU runs: checks the script runs")
    parser.add_argument(
        "--runs-per-gpu", type=counts, default=None, help="GPU mode: comma list of k (runs at a time)"
    )
    parser.add_argument("overrides", nargs="*", help="GPU mode: more overrides for every run")
    args = parser.parse_args()
    if args.runs_per_gpu:
        if "0" not in visible_gpus():
            parser.error(
                "--runs-per-gpu needs GPU 0, which is not visible here: "
                + ("set CUDA_VISIBLE_DEVICES=0 (--quick's runs train on the CPU)" if args.quick
                   else "--quick with CUDA_VISIBLE_DEVICES=0 checks the script on the CPU")
            )  # fmt: skip
        if not args.quick and not torch.cuda.is_available():
            parser.error("--runs-per-gpu trains on the GPU, and CUDA is not available here: add --quick")
        return gpu_mode(args)
    if args.overrides:
        parser.error(f"{args.overrides[0]}: overrides are for GPU mode (--runs-per-gpu)")
    args.jobs = args.jobs or (2 if args.quick else 6)
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
