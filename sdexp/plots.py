"""Figures of a set of runs (seaborn): error curves over epochs, final errors, time per epoch.

Each figure is written as PNG and PDF at a fixed size (``FIGSIZE`` inches at ``DPI``). Like the table
(:func:`sdexp.report.summarize`), they show completed runs only, and runs of a group with the same seed
count once (averaged).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib import ticker

from sdexp import report
from sdexp.files import atomic_write

FIGSIZE = (8.0, 4.5)
DPI = 150
FORMATS = ("png", "pdf")
FINAL_ERROR, ERROR_CURVES, EPOCH_TIME = FIGURES = ("final_error", "test_error_curves", "epoch_time")  # names
LEGEND_SEP = " · "  # between the keys of a group's label in a legend
AXIS_SEP = "\n"  # and under an x axis: a line per key, so that long labels do not overlap


def group_labels(table: pd.DataFrame, by: Sequence[str], sep: str = LEGEND_SEP) -> pd.Series:
    """``resnet110 · linear · final_survival=0.8``-style labels of each row's group: the keys with more
    than one value, the identity keys (:data:`~sdexp.report.IDENTITY_KEYS`) by value alone, the others
    by name too. A key some runs lack (``stochastic_depth.scaling`` at constant depth) is ``–`` there:
    the table groups those runs apart, so the labels tell them apart too."""
    varying = [k for k in by if table[k].nunique(dropna=False) > 1] or list(by)[:1]

    def part(key: str, value: object) -> str:
        text = "–" if pd.isna(value) else str(report.config_cell(value))
        return text if key in report.IDENTITY_KEYS else f"{key.rsplit('.', 1)[-1]}={text}"

    rows = zip(*(table[k] for k in varying), strict=True)
    return pd.Series([sep.join(map(part, varying, row)) for row in rows], index=table.index, dtype=object)


def _seed_epochs(
    table: pd.DataFrame, epochs: pd.DataFrame, by: Sequence[str], value: str, sep: str
) -> pd.DataFrame:
    """``value`` per group label (parts joined by ``sep``), seed and epoch of the completed runs (a
    seed run twice averaged); empty where none of them has a metrics.csv."""
    done = table[table["status"] == "completed"]
    groups = group_labels(done, by, sep)
    runs = pd.DataFrame({"group": groups, "seed": done["seed"], "run_dir": done["run_dir"]})
    data = epochs.merge(runs, on="run_dir").dropna(subset=[value])
    return data.groupby(["group", "seed", "epoch"], as_index=False)[value].mean()


def figure_files(out: Path, name: str) -> list[Path]:
    """The files of figure ``name`` (one of :data:`FIGURES`) in ``out``, one per format."""
    return [out / f"{name}.{suffix}" for suffix in FORMATS]


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = figure_files(out, name)
    for path in paths:
        atomic_write(path, lambda tmp, path=path: fig.savefig(tmp, dpi=DPI, format=path.suffix[1:]))
    plt.close(fig)
    return paths


def error_curves(table: pd.DataFrame, epochs: pd.DataFrame, by: Sequence[str], out: Path) -> list[Path]:
    """Test error against epoch per group: mean line and a ±1 std band over seeds (paper Fig. 3 style),
    on a log axis so that the end of training is readable (linear where an error is 0); none without
    epochs of completed runs."""
    data = _seed_epochs(table, epochs, by, "test_error", LEGEND_SEP)
    if data.empty:
        return []
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    sns.lineplot(data=data, x="epoch", y="test_error", hue="group", errorbar="sd", ax=ax)
    # an error of 0 % has no place on a log axis
    scale = "log" if (data["test_error"] > 0).all() else "linear"
    ax.set(yscale=scale, xlabel="epoch", ylabel="test error (%)", title="Test error during training")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(ticker.FormatStrFormatter("%g"))  # plain numbers on the log axis
    return _save(fig, out, ERROR_CURVES)


def final_errors(table: pd.DataFrame, by: Sequence[str], metric: str, out: Path) -> list[Path]:
    """The reported error per group: each seed as a point, and the mean with ±1 std."""
    data = report.seed_means(table[table["status"] == "completed"], by, [metric])
    data = data.assign(group=group_labels(data, by, AXIS_SEP))
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    sns.stripplot(data=data, x="group", y=metric, color="0.6", ax=ax)
    sns.pointplot(data=data, x="group", y=metric, errorbar="sd", linestyle="none", capsize=0.2, ax=ax)
    label = report.metric_label(metric).replace("_", " ").replace(" %", " (%)")
    ax.set(xlabel="", ylabel=label, title=f"Final {metric.replace('_', ' ')} over seeds")
    return _save(fig, out, FINAL_ERROR)


def epoch_times(table: pd.DataFrame, epochs: pd.DataFrame, by: Sequence[str], out: Path) -> list[Path]:
    """Seconds per training epoch per group (stochastic vs constant depth), mean ± std over epochs; none
    without epochs of completed runs."""
    data = _seed_epochs(table, epochs, by, "epoch_time_s", AXIS_SEP)
    if data.empty:
        return []
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    sns.barplot(data=data, x="group", y="epoch_time_s", errorbar="sd", ax=ax)
    ax.set(xlabel="", ylabel="seconds per epoch", title="Training time per epoch")
    return _save(fig, out, EPOCH_TIME)


def draw_all(
    table: pd.DataFrame, epochs: pd.DataFrame, by: Sequence[str], metric: str, out: Path
) -> tuple[list[Path], list[Path]]:
    """Every figure, into ``out``: the files written, and those of an earlier report's figures that this
    one does not draw (no epochs of completed runs), removed so that ``out`` holds one report."""
    drawn = final_errors(table, by, metric, out) + error_curves(table, epochs, by, out)
    drawn += epoch_times(table, epochs, by, out)
    files = [path for name in FIGURES for path in figure_files(out, name)]
    stale = [path for path in files if path not in drawn and path.exists()]
    for path in stale:
        path.unlink()
    return drawn, stale
