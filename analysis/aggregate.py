"""Turn sweep and run folders into the paper's table and plots.

    python analysis/aggregate.py multirun/2026-11-27/ [more folders or globs] [--out report/]

Prints the table (markdown by default); with ``--out`` also writes summary.csv, runs.csv, epochs.csv,
summary.tex, summary.md and the plots (PNG and PDF). Runs that did not complete are listed below the
table; with ``--format csv`` or ``latex`` the table is alone on stdout, the rest on stderr. The
functions live in ``sdexp.report`` and ``sdexp.plots`` (the notebook uses them too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sdexp import plots, report, runs
from sdexp.errors import SdexpError, reported
from sdexp.files import atomic_write_text, file_in_the_way, why_unwritable
from sdexp.wording import count


def render(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "latex":  # special characters escaped, ± and − as math: it compiles with booktabs alone
        return table.to_latex(index=False, escape=True).replace("±", r"$\pm$").replace("−", "$-$")
    return table.apply(lambda column: column.map(_markdown_cell)).to_markdown(index=False)


def _markdown_cell(value: object) -> object:
    """A text cell as one markdown table cell: a ``|`` or a line break (CUDA's errors have them) would
    end it."""
    return value.replace("|", r"\|").replace("\n", " ") if isinstance(value, str) else value


def _group_keys(by: str | None, table: pd.DataFrame) -> list[str]:
    """``--by`` as a list of keys (spaces stripped, each once), or the keys that vary."""
    if by is None:
        return report.experiment_keys(table)
    keys = list(dict.fromkeys(k.strip() for k in by.split(",") if k.strip()))
    if "seed" in keys or not keys:
        raise SdexpError(f"--by {by!r}: give config keys other than seed (each row is a mean over seeds)")
    return keys


def _check_keys(table: pd.DataFrame, by: list[str], metric: str) -> None:
    unknown = [k for k in by if k not in table.columns]
    if unknown:
        keys = ", ".join(report.experiment_keys(table))
        raise SdexpError(f"{', '.join(unknown)} not found in the runs' configs; keys such as {keys}")
    numbers = [k for k in runs.NUMBER_FIELDS if k in table.columns and k != "seed"]
    values = table[metric].dropna() if metric in table.columns else None
    if metric not in numbers and (
        values is None or report.is_config_key(metric) or not pd.api.types.is_numeric_dtype(values)
    ):
        raise SdexpError(
            f"--metric {metric} is not a result.json number; choose one of {', '.join(numbers)} (or another "
            "number in result.json)"
        )


def _write_outputs(out: Path, loaded: report.Runs, summary: pd.DataFrame, shown: pd.DataFrame,
                   by: list[str], metric: str) -> tuple[list[str], list[str]]:  # fmt: skip
    """The tables and figures, each written atomically: the names written, and those of an earlier
    report's figures removed because they are not drawn this time (no epochs to draw), so that the
    folder holds one report."""
    texts = {
        "summary.csv": summary.to_csv(index=False),
        "runs.csv": loaded.table.to_csv(index=False),
        "epochs.csv": loaded.epochs.to_csv(index=False),
        "summary.tex": render(shown, "latex"),
        "summary.md": render(shown, "md") + "\n",
    }
    for name, text in texts.items():
        atomic_write_text(out / name, text)
    figures, stale = plots.draw_all(loaded.table, loaded.epochs, by, metric, out)
    return [*texts, *(p.name for p in figures)], [p.name for p in stale]


def _check_out(out: str) -> None:
    """Refuse an ``--out`` that cannot become a folder here before any run is read, not after."""
    if not out.strip():
        raise SdexpError("--out is empty: give a folder for the files, e.g. --out report")
    folder = Path(out)
    if (blocking := file_in_the_way(folder)) is not None:
        raise SdexpError(f"--out {out}: {blocking} is a file, not a folder")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if (why := why_unwritable(existing)) is not None:
        raise SdexpError(f"--out {out}: no file can be written in {existing} ({why})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep folders, run folders or globs (searched recursively)")
    parser.add_argument("--by", help="comma-separated config keys to group by (default: the keys that vary)")
    parser.add_argument("--metric", default="test_error_at_best_val", help="result.json field to report")
    parser.add_argument("--out", help="folder for the CSV/LaTeX/markdown files and plots")
    parser.add_argument("--format", choices=("md", "csv", "latex"), default="md", help="printed format")
    args = parser.parse_args(argv)
    if args.out is not None:
        _check_out(args.out)
    info = sys.stdout if args.format == "md" else sys.stderr  # csv, LaTeX: the table alone on stdout
    loaded = report.load_runs(args.paths)
    table = loaded.table
    completed = table[table["status"] == "completed"] if len(table) else table
    if len(completed) == 0:
        statuses = table["status"].value_counts().to_dict() if len(table) else {}
        counts = [f"{n} {status}" for status, n in statuses.items()]
        counts += [f"{len(loaded.unusable)} without a usable result"] if len(loaded.unusable) else []
        folders = count(len(table) + len(loaded.unusable), "run folder")
        print(
            f"nothing to show yet: {folders}, none completed ({', '.join(counts) or 'none found'})", file=info
        )
    else:
        by = _group_keys(args.by, table)
        _check_keys(table, by, args.metric)
        summary = report.summarize(table, loaded.epochs, by, args.metric)
        shown = report.display_table(summary, by, args.metric)
        repeats = report.repeated_seeds(table, by)
        averaged = f" ({count(repeats, 'run')} repeating a seed of its group: averaged)" if repeats else ""
        print(f"{count(len(table), 'run')} in {count(summary.shape[0], 'group')}{averaged}\n", file=info)
        print(render(shown, args.format))
        for note in report.notes(loaded, summary, by, args.metric):
            print(f"\nnote: {note}", file=info)
    unfinished = report.problems(table) if len(table) else table
    if len(unfinished):
        print(f"\nNot completed ({len(unfinished)}):\n\n{render(unfinished, args.format)}", file=info)
    if len(loaded.unusable):
        print(
            f"\nCould not use ({len(loaded.unusable)}):\n\n{render(loaded.unusable, args.format)}", file=info
        )
    if args.out and len(completed):
        written, removed = _write_outputs(Path(args.out), loaded, summary, shown, by, args.metric)
        print(f"\nwrote {args.out}/: {' '.join(written)}", file=info)
        if removed:
            print(f"removed an earlier report's {' '.join(removed)} (not drawn this time)", file=info)
    elif args.out:
        print(f"\nwrote nothing to {args.out}/: no run has completed yet", file=info)
    return 0


if __name__ == "__main__":
    with reported(prints_output=True):
        sys.exit(main())
