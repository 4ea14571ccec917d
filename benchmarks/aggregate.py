"""Aggregation speed: load and summarise many synthesised run folders (default 1,000 runs × 500 epochs).

python benchmarks/aggregate.py [--runs 1000] [--epochs 500] [--quick]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import arg_types
import numpy as np
import pandas as pd
import yaml
from arg_types import count  # a sibling script: benchmarks/ is on sys.path

from sdexp import report, runs
from sdexp.errors import reported


def synthesise(root: Path, n_runs: int, n_epochs: int) -> None:
    """Run folders as the trainer writes them: 2 rules × 5 models × seeds, with random curves."""
    rng = np.random.default_rng(0)
    epochs = np.arange(1, n_epochs + 1)
    for i in range(n_runs):
        rule, model, seed = ("off", "linear")[i % 2], f"resnet{20 + 12 * (i // 2 % 5)}", i // 10
        folder = root / f"model={model},seed={seed},stochastic_depth={rule}"
        (folder / ".hydra").mkdir(parents=True)
        survival = 1.0 if rule == "off" else 0.5
        config = {"seed": seed, "model": {"name": model}, "dataset": {"name": "cifar10"},
                  "stochastic_depth": {"rule": rule, "final_survival": survival}}  # fmt: skip
        (folder / runs.CONFIG).write_text(yaml.safe_dump(config))
        curve = 5 + 60 * np.exp(-epochs / 50) + rng.normal(0, 0.3, n_epochs)
        metrics = pd.DataFrame({"epoch": epochs, "lr": 0.1, "train_loss": curve / 50, "train_error": curve,
                                "val_error": curve + 0.2, "test_error": curve, "epoch_time_s": 10.0,
                                "images_per_s": 4500.0, "executed_block_fraction": 0.75})  # fmt: skip
        metrics.to_csv(folder / runs.METRICS, index=False)
        best = int(metrics["val_error"].idxmin())
        result = {"status": "completed", "epochs_completed": n_epochs, "seed": seed,
                  "test_error": float(curve[-1]), "best_val_error": float(curve[best] + 0.2),
                  "best_epoch": best + 1, "test_error_at_best_val": float(curve[best]),
                  "train_time_s": 10.0 * n_epochs}  # fmt: skip
        (folder / runs.RESULT).write_text(json.dumps(result))


def main() -> None:
    parser = arg_types.parser(__doc__)
    parser.add_argument("--runs", type=count, default=None, help="(1000)")
    parser.add_argument("--epochs", type=count, default=None, help="(500)")
    parser.add_argument("--quick", action="store_true", help="20 runs × 10 epochs: checks the script runs")
    args = parser.parse_args()
    arg_types.fill(args, {"runs": 20, "epochs": 10}, {"runs": 1000, "epochs": 500})
    with tempfile.TemporaryDirectory() as tmp:
        synthesise(Path(tmp), args.runs, args.epochs)
        start = time.perf_counter()
        table, epochs, _ = report.load_runs([tmp])
        loaded = time.perf_counter()
        summary = report.summarize(table, epochs)
        done = time.perf_counter()
    print(f"\n{args.runs} runs × {args.epochs} epochs ({len(epochs):,} metric rows) -> {len(summary)} groups")
    steps = {"load run folders": loaded - start, "summarise": done - loaded, "total": done - start}
    print(
        pd.Series(steps, name="seconds")
        .rename_axis("step")
        .reset_index()
        .to_markdown(index=False, floatfmt=".2f")
    )


if __name__ == "__main__":
    with reported():  # one line and an exit status on failure, as every sdexp command
        main()
