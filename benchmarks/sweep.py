"""Sweep wall time: N tiny jobs through Hydra's basic launcher (in-process, one after another) and the
local launcher (separate processes, ``--workers`` at a time), against the ideal ⌈N/slots⌉ × one job.

    python benchmarks/sweep.py [--jobs 6] [--workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 jobs: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.jobs = 2
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
