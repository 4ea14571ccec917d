"""Turn sweep and run folders into the paper's table and plots.

    python analysis/aggregate.py multirun/2026-11-27/ [more folders or globs] [--out report/]

Prints the table (markdown by default); with ``--out`` also writes summary.csv, runs.csv, epochs.csv,
summary.tex, summary.md and the plots (PNG and PDF). Runs that did not complete are listed below the
table. The functions live in ``sdexp.report`` and ``sdexp.plots`` (the notebook uses them too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sdexp import plots, report, runs


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "latex":
        return table.to_latex(index=False)
    return table.to_markdown(index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="sweep folders, run folders or globs (searched recursively)")
    parser.add_argument("--by", help="comma-separated config keys to group by (default: the keys that vary)")
    parser.add_argument("--metric", default="test_error_at_best_val", help="result.json field to report")
    parser.add_argument("--out", type=Path, help="folder for the CSV/LaTeX/markdown files and plots")
    parser.add_argument("--format", choices=("md", "csv", "latex"), default="md", help="printed format")
    args = parser.parse_args(argv)
    try:
        table, epochs = report.load_runs(args.paths)
    except runs.RunFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    by = args.by.split(",") if args.by else report.experiment_keys(table)
    unknown = [k for k in [*by, args.metric] if k not in table.columns]
    if unknown:
        print(f"error: {', '.join(unknown)} not found in the runs; columns: {', '.join(table.columns)}",
              file=sys.stderr)  # fmt: skip
        return 2
    summary = report.summarize(table, epochs, by, args.metric)
    shown = report.display_table(summary, by, args.metric)
    unfinished = report.problems(table)
    print(f"{len(table)} runs in {summary.shape[0]} groups\n")
    print(render(shown, args.format))
    if len(unfinished):
        print(f"\nNot completed ({len(unfinished)}):\n")
        print(render(unfinished, args.format))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        summary.to_csv(args.out / "summary.csv", index=False)
        table.to_csv(args.out / "runs.csv", index=False)
        epochs.to_csv(args.out / "epochs.csv", index=False)
        (args.out / "summary.tex").write_text(render(shown, "latex"))
        (args.out / "summary.md").write_text(render(shown, "md") + "\n")
        written = plots.final_errors(table, by, args.metric, args.out)
        if len(epochs):
            written += plots.error_curves(table, epochs, by, args.out)
            written += plots.epoch_times(table, epochs, by, args.out)
        print(f"\nwrote {args.out}/: summary.csv runs.csv epochs.csv summary.tex summary.md "
              + " ".join(p.name for p in written))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
