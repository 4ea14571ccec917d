"""From run folders to the paper's table: tidy pandas tables, per-group summaries over seeds, paired
stochastic-vs-constant-depth differences, and the paper's own numbers beside ours.

Used by ``analysis/aggregate.py`` (the command line) and ``analysis/report.ipynb``; the plots are in
:mod:`sdexp.plots`. Errors are in percent.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import ttest_rel

from sdexp import run_folders, runs
from sdexp.files import read_file
from sdexp.wording import count

# Config keys that never tell experiments apart (where or how fast a run ran, not what it computed): the
# keys a run may change when it is resumed, and these.
NOT_EXPERIMENT_KEYS = {
    "seed",
    *runs.RESUMABLE_CHANGES,
    "trainer.eval_batch_size",
    "dataset.root",
    "dataset.loader",
}
_CONFIG_GROUPS = {"model", "dataset", "optimizer", "stochastic_depth", "trainer"}
# Always shown first, varying or not.
IDENTITY_KEYS = ["dataset.name", "model.name", "stochastic_depth.rule"]
PAPER_RESULTS = Path(__file__).with_name("paper_results.csv")
EPOCH_COLUMNS = ("epoch", "test_error", "epoch_time_s")  # what the curves and times read of metrics.csv
NOT_AT_CONSTANT_DEPTH = ("stochastic_depth.mode", "stochastic_depth.scaling")  # these do nothing there
PAPER_METRICS = ("test_error_at_best_val", "test_error")  # what the paper's numbers can stand beside
SAME_DIFFERENCE = 1e-9  # percentage points: paired differences closer than this do not vary


class Runs(NamedTuple):
    """What :func:`load_runs` found."""

    table: pd.DataFrame  # one row per run: the config flattened, every result.json field, run_dir
    epochs: pd.DataFrame  # every metrics.csv row, with run_dir
    unusable: pd.DataFrame  # run_dir and reason, for each folder (or file) that could not be read


def _hashable(value: Any) -> Any:
    """Lists (``model.blocks_per_stage``, ``optimizer.milestones``) as their text, so that they can be
    compared and grouped by like any other value."""
    return str(value) if isinstance(value, list) else value


def config_values(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as one flat row of comparable values (also for the paper's protocol).

    None becomes the text ``null``, a value of its own (``dataset.train_size: null`` is all the images),
    where pandas would drop it when it counts or groups values and average those runs with runs on
    5,000; lists become their text. At constant depth p_L is 1, whatever it was set to, and the gates'
    mode and the scaling, which do nothing there, are NaN (blank): the baseline is one group."""
    row = {key: "null" if value is None else _hashable(value) for key, value in runs.flatten(config).items()}
    if row.get("stochastic_depth.rule") == "off":  # every block survives
        row["stochastic_depth.final_survival"] = 1.0
        row.update(dict.fromkeys(NOT_AT_CONSTANT_DEPTH, math.nan))
    return row


def _run_row(run_dir: Path) -> dict[str, Any]:
    """The run's config and result as one flat row; a damaged or foreign folder raises RunFolderError."""
    result = runs.read_result(run_dir)
    runs.check_result(run_dir, result)
    result["status"] = run_folders.live_status(run_dir, result)
    outcome = {key: _hashable(value) for key, value in runs.flatten(result).items()}
    return {**config_values(runs.read_config(run_dir)), **outcome, "run_dir": str(run_dir)}


def _epochs(run_dir: Path) -> pd.DataFrame:
    """The run's metrics.csv (empty if it has none yet); a damaged one raises RunFolderError."""
    path = run_dir / runs.METRICS
    if not path.exists():
        return pd.DataFrame()

    def parse(path: Path) -> pd.DataFrame:
        epochs = pd.read_csv(io.StringIO(runs.metrics_text(path)))
        missing = set(EPOCH_COLUMNS) - set(epochs.columns)
        if missing:
            raise ValueError(f"no column {', '.join(sorted(missing))}")
        for column in epochs.columns:
            numbers = pd.to_numeric(epochs[column], errors="coerce")
            text = epochs[column][numbers.isna() & epochs[column].notna()]
            if len(text):
                raise ValueError(f"column {column} holds text ({text.iloc[0]!r}, line {text.index[0] + 2})")
        short = epochs[["epoch", "epoch_time_s"]].isna().any(axis=1)  # never NaN in a whole row
        if short.any():
            raise ValueError(f"line {short.to_numpy().argmax() + 2} is cut short")
        return epochs.assign(run_dir=str(run_dir))

    return read_file(path, parse, runs.RunFolderError, "its epochs are left out of the curves")


def load_runs(paths: Sequence[str | Path]) -> Runs:
    """Every run folder at or under ``paths`` (globs expanded) as tidy tables; folders whose
    ``result.json`` or config cannot be read, those without ``result.json`` (failed before training,
    or not started yet), and unreadable ``metrics.csv`` files are listed in ``unusable`` with the reason
    instead."""
    rows, epoch_tables = [], []
    run_dirs, empty = run_folders.find_run_dirs(paths)
    unusable = [{"run_dir": path, "reason": run_folders.NO_RUN_FOLDERS} for path in empty]
    for run_dir in run_dirs:
        if not (run_dir / runs.RESULT).exists():
            reason = f"no {runs.RESULT}: {run_folders.status_before_result(run_dir)}"
            unusable.append({"run_dir": str(run_dir), "reason": reason})
            continue
        try:
            rows.append(_run_row(run_dir))
            epoch_tables.append(_epochs(run_dir))  # if this fails, the run is kept without its epochs
        except runs.RunFolderError as exc:
            unusable.append({"run_dir": str(run_dir), "reason": str(exc)})
    table = _null_keys_as_text(pd.DataFrame(rows))
    epoch_tables = [epochs for epochs in epoch_tables if len(epochs)]
    # no metrics.csv at all: no rows, but the columns, so that what reads epochs needs no case of its own
    none = pd.DataFrame(
        {c: pd.Series(dtype=float) for c in EPOCH_COLUMNS} | {"run_dir": pd.Series(dtype=object)}
    )
    epochs = pd.concat(epoch_tables, ignore_index=True) if epoch_tables else none
    return Runs(table, epochs, pd.DataFrame(unusable, columns=["run_dir", "reason"]))


def _null_keys_as_text(table: pd.DataFrame) -> pd.DataFrame:
    """Each config key that is ``null`` in some runs as text in all (``5000``, ``null``), so that its
    values sort and merge as one type."""
    for key in filter(is_config_key, table.columns):
        if table[key].eq("null").any():
            table[key] = table[key].map(lambda v: v if pd.isna(v) else str(v))
    return table


def is_config_key(column: str) -> bool:
    """Whether a column of :func:`load_runs`' table comes from the config (not from result.json)."""
    return column == "seed" or column.split(".")[0] in _CONFIG_GROUPS


def varies(column: pd.Series) -> bool:
    """Whether a config key takes more than one value. A run without the key (made by an older sdexp, at
    what is now its default) adds none, whichever pandas version (in pandas 2, ``astype(str)`` makes NaN
    the text ``nan``)."""
    return column.dropna().astype(str).nunique() > 1


def keys_some_runs_lack(table: pd.DataFrame, by: Sequence[str]) -> dict[str, tuple[int, Any]]:
    """Config keys outside ``by`` that some completed runs lack (an older sdexp, or a config edited by
    hand) in a group of ``by`` whose other runs have it, all with one value: ``key -> (runs without
    it in such groups, that value)``. Those runs are averaged with the others as if they had that value,
    which is right only if it was their behaviour. Constant-depth runs lack
    :data:`NOT_AT_CONSTANT_DEPTH` on purpose."""
    done = table[table["status"] == "completed"]
    lacking = {}
    for key in filter(is_config_key, done.columns):
        rows = done
        if key in NOT_AT_CONSTANT_DEPTH and "stochastic_depth.rule" in done.columns:
            rows = done[done["stochastic_depth.rule"] != "off"]
        values = rows[key].dropna().unique()
        if key in by or key in NOT_EXPERIMENT_KEYS or len(values) != 1:
            continue
        lacks = rows[key].isna().rename("lacks")
        per_group = lacks.groupby([rows[k] for k in by], dropna=False).agg(["sum", "size"])
        mixed = per_group[(per_group["sum"] > 0) & (per_group["sum"] < per_group["size"])]
        if len(mixed):
            lacking[key] = (int(mixed["sum"].sum()), values[0])
    return lacking


def notes(loaded: Runs, summary: pd.DataFrame, by: Sequence[str], metric: str) -> list[str]:
    """What a reader of the table should know that the table does not show: groups without a value of
    ``metric``, runs averaged as if they had a key they lack, completed runs left out of the curves."""
    said = []
    empty = int((summary["seeds"].eq(0) & summary["train_time_s"].notna()).sum())  # completed, no value
    if empty and metric != "best_val_error":
        said.append(
            f"{count(empty, 'group')} without a value of {metric} (no test split?); --metric best_val_error "
            "reports the validation error"
        )
    for key, (n, value) in keys_some_runs_lack(loaded.table, by).items():
        said.append(
            f"{count(n, 'run')} without {key} in the config (an older sdexp?) averaged as if it were "
            f"{value}, as in the other runs of their group; --by {','.join([*by, key])} tells them apart"
        )
    done = loaded.table[loaded.table["status"] == "completed"]
    if without := int((~done["run_dir"].isin(loaded.epochs["run_dir"])).sum()):
        said.append(
            f"{count(without, 'completed run')} without a readable {runs.METRICS}: left out of the error "
            "curves and times per epoch"
        )
    return said


def experiment_keys(table: pd.DataFrame) -> list[str]:
    """The identity keys, then every other config key whose value differs between runs (not the seed)."""
    config_keys = [c for c in table.columns if "." in c and is_config_key(c)]
    varying = [
        k for k in config_keys if k not in NOT_EXPERIMENT_KEYS and k not in IDENTITY_KEYS and varies(table[k])
    ]
    return [k for k in IDENTITY_KEYS if k in table.columns] + varying


def summarize(
    table: pd.DataFrame, epochs: pd.DataFrame, by: Sequence[str] | None = None,
    metric: str = "test_error_at_best_val",
) -> pd.DataFrame:  # fmt: skip
    """One row per group (grouped ``by`` the experiment keys by default), also a group none of whose
    runs completed: ``seeds`` (completed, with a value of ``metric``), mean and std of ``metric`` and
    of the final ``test_error``, mean training time and seconds per epoch, their ratio to the matching
    constant-depth group, the paired difference to it (``diff_mean``, ``diff_std``, ``pairs``,
    ``p_value`` of a paired t-test over seeds; none where the differences do not vary), the paper's
    number where one matches, the count of runs that did not complete and a flag for a
    group with fewer seeds than the largest.

    Each seed counts once in a group: runs of a group with the same seed (a sweep aggregated twice,
    rerun into a new folder, or variants that ``by`` does not tell apart) are averaged first, so that
    the statistics are over seeds, as ``seeds`` says (:func:`repeated_seeds` counts them)."""
    by = list(by or experiment_keys(table))
    done = table[table["status"] == "completed"].copy()
    per_run_epoch = epochs.groupby("run_dir")["epoch_time_s"].mean()
    done["epoch_time_s"] = done["run_dir"].map(per_run_epoch)
    values = list(dict.fromkeys([metric, "test_error", "train_time_s", "epoch_time_s"]))
    per_seed = seed_means(done, by, values)
    groups = per_seed.groupby(by, dropna=False, sort=True)
    summary = groups.agg(
        seeds=(metric, "count"),  # seeds with a value: a run without a test split has none
        mean=(metric, "mean"),
        std=(metric, "std"),
        final_mean=("test_error", "mean"),
        final_std=("test_error", "std"),
        train_time_s=("train_time_s", "mean"),
        epoch_time_s=("epoch_time_s", "mean"),
    ).reset_index()
    if "stochastic_depth.rule" in by:  # stochastic vs constant depth can be compared
        summary = summary.merge(_paired(per_seed, by, metric), on=by, how="left")
        summary = _with_time_ratio(summary, by)
    else:
        summary = summary.assign(pairs=math.nan, diff_mean=math.nan, diff_std=math.nan, p_value=math.nan,
                                 time_ratio=math.nan, epoch_time_ratio=math.nan)  # fmt: skip
    summary = _with_paper(summary, done, by)
    unfinished = table[table["status"] != "completed"]
    counts = unfinished.groupby(by, dropna=False).size().rename("not_completed").reset_index()
    summary = summary.merge(counts, on=by, how="outer").fillna({"not_completed": 0, "seeds": 0})
    # counts as integers; pairs blank where there is no pairing (constant depth; no rule in `by`)
    summary = summary.astype({"not_completed": int, "seeds": int, "pairs": "Int64"})
    summary["fewer_seeds"] = summary["seeds"].between(1, summary["seeds"].max() - 1)  # 0: nothing to flag
    return summary


def seed_means(done: pd.DataFrame, by: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """One row per group and seed of the completed runs ``done``: the mean of each of ``values`` over
    the seed's runs, so that a seed run twice counts once."""
    return done.groupby([*by, "seed"], dropna=False, as_index=False)[list(values)].mean()


def repeated_seeds(table: pd.DataFrame, by: Sequence[str]) -> int:
    """How many completed runs repeat the seed of another in their group (averaged by :func:`summarize`)."""
    done = table[table["status"] == "completed"]
    return int(done.duplicated([*by, "seed"]).sum())


def _base_keys(by: Sequence[str]) -> list[str]:
    """The keys that a stochastic-depth group shares with its constant-depth baseline."""
    return [k for k in by if not k.startswith("stochastic_depth.")]


def _paired(per_seed: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """Each stochastic-depth group against its constant-depth baseline, seed by seed (``per_seed``: one
    row per group and seed)."""
    base = _base_keys(by)
    constant = per_seed[per_seed["stochastic_depth.rule"] == "off"]
    # one baseline per seed, also where `by` splits the constant-depth runs
    constant = constant.groupby([*base, "seed"], dropna=False, as_index=False)[metric].mean()
    sd = per_seed[per_seed["stochastic_depth.rule"] != "off"]
    pairs = sd.merge(constant, on=[*base, "seed"], suffixes=("", "_constant"))
    pairs["diff"] = pairs[metric] - pairs[f"{metric}_constant"]
    pairs = pairs.dropna(subset=["diff"])

    def stats(group: pd.DataFrame) -> pd.Series:
        n = len(group)
        # else a t-test has no p-value (it is 0 or NaN); equal differences of percentages of a test set
        # (100 * wrong / 10000) differ by rounding, ~1e-15
        spread = n >= 2 and group["diff"].std() > SAME_DIFFERENCE
        p = ttest_rel(group[metric], group[f"{metric}_constant"]).pvalue if spread else math.nan
        return pd.Series({"pairs": n, "diff_mean": group["diff"].mean(), "diff_std": group["diff"].std(),
                          "p_value": p})  # fmt: skip

    if pairs.empty:  # the group keys keep their types, for the merge
        return (
            per_seed[list(by)]
            .head(0)
            .assign(pairs=0, diff_mean=math.nan, diff_std=math.nan, p_value=math.nan)
        )
    return (
        pairs.groupby(list(by), dropna=False)[[metric, f"{metric}_constant", "diff"]]
        .apply(stats)
        .reset_index()
    )


def _with_time_ratio(summary: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    base = _base_keys(by)
    constant = summary[summary["stochastic_depth.rule"] == "off"]
    constant = constant[[*base, "train_time_s", "epoch_time_s"]].rename(
        columns={"train_time_s": "_train_c", "epoch_time_s": "_epoch_c"}
    )
    if base:  # one baseline per base, also where `by` splits the constant-depth runs
        constant = constant.groupby(base, dropna=False, as_index=False)[["_train_c", "_epoch_c"]].mean()
        merged = summary.merge(constant, on=base, how="left")
    else:
        merged = summary.assign(_train_c=constant["_train_c"].mean(), _epoch_c=constant["_epoch_c"].mean())
    merged["time_ratio"] = merged["train_time_s"] / merged["_train_c"]
    merged["epoch_time_ratio"] = merged["epoch_time_s"] / merged["_epoch_c"]
    return merged.drop(columns=["_train_c", "_epoch_c"])


def paper_results() -> pd.DataFrame:
    """The paper's reported test errors with its protocol (``sdexp/paper_results.csv``, with its
    source): a column per config key, as text (empty: any value), then ``paper_test_error``."""
    table = pd.read_csv(PAPER_RESULTS, comment="#", dtype=str, keep_default_na=False)
    return table.astype({"paper_test_error": float})


def _same(ours: Any, paper: str) -> bool:
    """Whether a run's config value is the paper's (written as text): numbers as numbers (``500`` and
    ``500.0``, ``1e-4`` and ``0.0001``), the rest as lower-case text (``True`` and ``true``)."""
    if paper == "":
        return True
    try:
        return float(ours) == float(paper)
    except (TypeError, ValueError):
        return str(ours).lower() == paper.lower()


def paper_number(values: dict[str, Any] | pd.Series) -> float:
    """The paper's test error for runs with these config values (as :func:`config_values` gives them),
    or NaN where they are not one of the paper's experiments. A key the runs lack (an older sdexp:
    absent, or NaN) is not compared."""
    paper = paper_results()
    known = {key: value for key, value in values.items() if not pd.isna(value)}  # NaN: a key it lacks
    keys = [key for key in paper.columns if key != "paper_test_error" and key in known]
    if not keys:  # nothing to tell the experiment by
        return math.nan
    for _, row in paper.iterrows():
        if all(_same(known[key], row[key]) for key in keys):
            return row["paper_test_error"]
    return math.nan


def _with_paper(summary: pd.DataFrame, done: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    keys = [key for key in paper_results().columns if key in done.columns]
    groups = done.groupby(list(by), dropna=False)
    mixed = groups[keys].nunique(dropna=False).gt(1).any(axis=1)  # no one value: not one experiment
    first = groups[keys].first()[~mixed]
    numbers = [paper_number(row) for _, row in first.iterrows()]
    matched = first.index.to_frame(index=False).assign(paper_test_error=numbers)
    return summary.merge(matched, on=list(by), how="left")


def problems(table: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not complete, with their status and why."""
    columns = ["run_dir", "status", "error_type", "error", "diverged_at.epoch", "diverged_at.step",
               "interrupted_in_epoch", "epochs_completed"]  # fmt: skip
    unfinished = table[table["status"] != "completed"]
    return unfinished[[c for c in columns if c in unfinished.columns]].reset_index(drop=True)


def metric_label(metric: str) -> str:
    """``test_error %``: errors are in percent; other result fields (``best_epoch``) are counts or s."""
    return f"{metric} %" if "error" in metric else metric


def config_cell(value: Any) -> Any:
    """A config value as the table shows it: ``0.5`` (not LaTeX's ``0.500000``), ``5000`` (not the
    ``5000.0`` of a column with a blank), blank where runs lack the key."""
    if isinstance(value, float):
        return "" if math.isnan(value) else str(int(value)) if value.is_integer() else str(value)
    return value


def display_table(summary: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """The summary as a person reads it: ``mean ± std`` strings, one column per key."""

    def pm(mean: float, std: float) -> str:
        if np.isnan(mean):
            return ""
        return f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} ± {std:.2f}"

    out = summary[list(by)].apply(lambda column: column.map(config_cell))
    out["seeds"] = summary["seeds"].astype(str) + np.where(summary["fewer_seeds"], " (fewer)", "")
    out[metric_label(metric)] = [pm(m, s) for m, s in zip(summary["mean"], summary["std"], strict=True)]
    out["final test error %"] = [
        pm(m, s) for m, s in zip(summary["final_mean"], summary["final_std"], strict=True)
    ]
    if metric in PAPER_METRICS:
        out["paper %"] = summary["paper_test_error"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    # an SD group beside a baseline (it has a time ratio) but without a seed both have a value for
    unpaired = summary["diff_mean"].isna() & summary["time_ratio"].notna() & summary["seeds"].gt(0)
    if "stochastic_depth.rule" in summary:  # else there is no time ratio either
        unpaired &= summary["stochastic_depth.rule"].ne("off")
    diffs = summary[["diff_mean", "diff_std", "p_value", "pairs"]].itertuples(index=False)
    out["SD − constant"] = [
        ("no common seed" if alone else "")
        if pd.isna(m)
        else f"{pm(m, s)} ({'' if pd.isna(p) else f'p={p:.3g}, '}n={int(n)})"
        for (m, s, p, n), alone in zip(diffs, unpaired, strict=True)
    ]
    out["time ratio"] = summary["time_ratio"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    out["not completed"] = summary["not_completed"]
    return out
