"""Aggregation of run folders: exact statistics on synthesized runs, statuses, files and errors."""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from sdexp import plots, report, runs, status
from tests.conftest import ROOT, TINY

# test_error_at_best_val per seed; constant depth then stochastic depth (differences -1, -1, -0.5).
CONSTANT, STOCHASTIC = [6.0, 6.5, 7.0], [5.0, 5.5, 6.5]
METRIC = "test_error_at_best_val"


def make_run(
    folder: Path, rule: str, seed: int, reported: float, status: str = "completed",
    final_survival: float | None = None, scaling: str = "test_time", epochs: int = 500,
    train_size: int | None = None, trainer: dict | None = None, optimizer: dict | None = None,
    model: str = "resnet110", **extra: object,
) -> None:  # fmt: skip
    """A run folder as the trainer writes it, with known values (three epochs of metrics, whatever
    ``epochs`` its config says)."""
    config = {
        "seed": seed,
        "model": {"name": model},
        "dataset": {"name": "cifar10", "root": f"/data/{seed}", "train_size": train_size},
        "stochastic_depth": {
            "rule": rule,
            "final_survival": (1.0 if rule == "off" else 0.5) if final_survival is None else final_survival,
            "scaling": scaling,
        },
        "trainer": {"epochs": epochs, "device": "cpu", **(trainer or {})},
        **({"optimizer": optimizer} if optimizer else {}),
    }
    runs.atomic_write_text(folder / runs.CONFIG, yaml.safe_dump(config))
    train_time = 100.0 if rule == "off" else 75.0
    result = {"status": status, "test_error_at_best_val": reported, "test_error": reported + 1}
    runs.write_result(folder, {**result, "train_time_s": train_time, "seed": seed, **extra})
    rows = [
        {"epoch": e, "lr": 0.1, "train_loss": 1.0, "train_error": 50.0, "val_error": 10.0 + e,
         "test_error": reported + 3 - e, "epoch_time_s": train_time / 3, "images_per_s": 1.0,
         "executed_block_fraction": 1.0}
        for e in (1, 2, 3)
    ]  # fmt: skip
    runs.write_metrics(folder, rows)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for seed, (c, s) in enumerate(zip(CONSTANT, STOCHASTIC, strict=True)):
        make_run(tmp_path / f"off,seed={seed}", "off", seed, c)
        make_run(tmp_path / f"linear,seed={seed}", "linear", seed, s)
    make_run(tmp_path / "uniform,seed=0", "uniform", 0, 5.9)
    make_run(tmp_path / "uniform,seed=1", "uniform", 1, 6.1)
    make_run(tmp_path / "linear,seed=3", "linear", 3, math.nan, status="failed", error_type="RuntimeError",
             error="CUDA out of memory")  # fmt: skip
    make_run(
        tmp_path / "off,seed=3", "off", 3, math.nan, status="diverged", diverged_at={"epoch": 2, "step": 17}
    )
    return tmp_path


def test_tables(sweep: Path) -> None:
    table, epochs, _ = report.load_runs([sweep])
    assert len(table) == 10 and len(epochs) == 30
    assert {"model.name", "stochastic_depth.rule", "seed", "status", "run_dir"} <= set(table.columns)
    assert report.experiment_keys(table) == ["dataset.name", "model.name", "stochastic_depth.rule",
                                             "stochastic_depth.final_survival"]  # fmt: skip


def test_summary_statistics_are_exact(sweep: Path) -> None:
    table, epochs, _ = report.load_runs([sweep])
    summary = report.summarize(table, epochs).set_index("stochastic_depth.rule")
    off, linear, uniform = summary.loc["off"], summary.loc["linear"], summary.loc["uniform"]
    assert (off["seeds"], linear["seeds"], uniform["seeds"]) == (3, 3, 2)
    assert off["mean"] == pytest.approx(6.5) and off["std"] == pytest.approx(0.5)
    assert linear["mean"] == pytest.approx(17 / 3) and linear["std"] == pytest.approx(0.7637626, abs=1e-6)
    assert linear["final_mean"] == pytest.approx(17 / 3 + 1)
    # Paired over seeds 0-2: differences -1, -1, -0.5; t = -5 with 2 degrees of freedom.
    assert linear["pairs"] == 3
    assert linear["diff_mean"] == pytest.approx(-5 / 6) and linear["diff_std"] == pytest.approx(
        0.2886751, abs=1e-6
    )
    assert linear["p_value"] == pytest.approx(0.03775, abs=1e-4)
    assert uniform["pairs"] == 2 and pd.isna(off["pairs"])
    assert linear["time_ratio"] == pytest.approx(0.75) and linear["epoch_time_ratio"] == pytest.approx(0.75)
    assert off["paper_test_error"] == 6.41 and linear["paper_test_error"] == 5.25
    assert math.isnan(uniform["paper_test_error"])
    assert (linear["not_completed"], off["not_completed"], uniform["not_completed"]) == (1, 1, 0)
    assert bool(uniform["fewer_seeds"]) and not bool(linear["fewer_seeds"])


@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 3},
        {"train_size": 5000},
        {"trainer": {"batch_size": 64}},
        {"optimizer": {"lr": 0.05}},
        {"scaling": "inverted"},
    ],
    ids=["3 epochs", "5,000 images", "batch 64", "lr 0.05", "inverted scaling"],
)
def test_the_paper_number_is_for_the_papers_protocol_only(tmp_path: Path, change: dict) -> None:
    """A shortened, subsampled or otherwise changed run of the paper's model and rule is another
    experiment: no paper number beside it; the same runs at the paper's settings (or without the key,
    from an older sdexp) get it."""
    make_run(tmp_path / "changed", "linear", 0, 6.0, **change)
    make_run(
        tmp_path / "paper",
        "off",
        0,
        6.0,
        optimizer={"lr": 0.1, "nesterov": True},
        trainer={"batch_size": 128},
    )
    table, epochs_table, _ = report.load_runs([tmp_path])
    summary = report.summarize(table, epochs_table).set_index("stochastic_depth.rule")
    assert (
        math.isnan(summary.loc["linear", "paper_test_error"])
        and summary.loc["off", "paper_test_error"] == 6.41
    )


def test_a_config_without_the_papers_keys_gets_no_number() -> None:
    assert math.isnan(report.paper_number({})) and math.isnan(report.paper_number({"seed": 0}))


def test_summary_of_runs_none_completed_lists_their_groups(tmp_path: Path) -> None:
    """The notebook's summary of a sweep that has only started: each group a row without seeds, with
    its count of runs that did not complete, not a merge error."""
    for rule in ("off", "linear"):
        make_run(tmp_path / rule, rule, 0, math.nan, status="failed")
    table, epochs, _ = report.load_runs([tmp_path])
    summary = report.summarize(table, epochs).set_index("stochastic_depth.rule")
    assert {"mean", "pairs", "paper_test_error"} <= set(summary.columns)
    assert summary[["seeds", "not_completed"]].to_dict("index") == {
        "linear": {"seeds": 0, "not_completed": 1},
        "off": {"seeds": 0, "not_completed": 1},
    }


def test_a_group_none_of_whose_runs_completed_is_a_row(tmp_path: Path) -> None:
    """A sweep over models where every ResNet-56 run ran out of memory: ResNet-56 is a row with no seeds
    and its two failed runs, not missing from the table."""
    for seed, rule in itertools.product((0, 1), ("off", "linear")):
        make_run(tmp_path / f"20,{rule},{seed}", rule, seed, 8.0 + seed)
        make_run(tmp_path / f"56,{rule},{seed}", rule, seed, math.nan, status="failed", model="resnet56")
    table, epochs, _ = report.load_runs([tmp_path])
    summary = report.summarize(table, epochs).set_index(["model.name", "stochastic_depth.rule"])
    assert summary["seeds"].to_dict() == {(m, r): 2 * (m == "resnet110") for m in ("resnet110", "resnet56")
                                          for r in ("linear", "off")}  # fmt: skip
    assert summary.loc[("resnet56", "linear"), "not_completed"] == 2
    shown = report.display_table(summary.reset_index(), ["model.name", "stochastic_depth.rule"], METRIC)
    assert shown["seeds"].tolist() == ["2", "2", "0", "0"]  # no "(fewer)" where there is nothing
    assert summary.loc[("resnet110", "linear"), "mean"] == pytest.approx(8.5)
    proc = aggregate(str(tmp_path))
    assert (
        proc.returncode == 0 and "note:" not in proc.stdout
    )  # no value: no completed run, not no test split
    assert "8 runs in 4 groups" in proc.stdout


def test_a_metric_no_run_has_is_said_with_the_way_out(tmp_path: Path) -> None:
    """Runs on an image folder without test/ have no test error: the table's rows are empty, and a
    note names the metric and the validation error's."""
    make_run(tmp_path / "run", "linear", 0, math.nan)
    proc = aggregate(str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "note: 1 group without a value of test_error_at_best_val (no test split?); --metric" in proc.stdout


def test_a_null_value_is_a_value_of_its_own(tmp_path: Path) -> None:
    """Runs on the whole training set (``dataset.train_size: null``) and on 5,000 images are two
    groups, in the table and in the plots' labels, not one average."""
    for seed, size in itertools.product((0, 1), (None, 5000)):
        make_run(
            tmp_path / f"{size},seed={seed}", "linear", seed, 6.0 if size is None else 9.0, train_size=size
        )
    table, epochs, _ = report.load_runs([tmp_path])
    assert "dataset.train_size" in report.experiment_keys(table)
    summary = report.summarize(table, epochs)
    assert sorted(summary["mean"]) == [6.0, 9.0] and summary["seeds"].tolist() == [2, 2]
    shown = report.display_table(summary, report.experiment_keys(table), "test_error_at_best_val")
    assert sorted(shown["dataset.train_size"].astype(str)) == ["5000", "null"]
    assert plots.group_labels(summary, report.experiment_keys(table)).nunique() == 2


def test_a_key_older_runs_lack_does_not_split_them(tmp_path: Path) -> None:
    """Constant-depth runs of an older sdexp, without a key that newer stochastic-depth runs have (at
    the default that keeps the old behaviour): still one baseline, paired seed by seed."""
    for seed, (c, s) in enumerate(zip(CONSTANT, STOCHASTIC, strict=True)):
        make_run(tmp_path / f"off,seed={seed}", "off", seed, c)
        make_run(tmp_path / f"linear,seed={seed}", "linear", seed, s, trainer={"cuda_graphs": False})
    table, epochs, _ = report.load_runs([tmp_path])
    by = report.experiment_keys(table)
    assert "trainer.cuda_graphs" not in by
    summary = report.summarize(table, epochs).set_index("stochastic_depth.rule")
    assert summary.loc["linear", "pairs"] == 3 and summary.loc["linear", "time_ratio"] == pytest.approx(0.75)
    assert report.keys_some_runs_lack(table, by) == {}  # no group mixes them: nothing to say


def test_a_key_runs_lack_is_said_in_a_note(sweep: Path) -> None:
    """Newer runs with a value their group's older runs lack (here inverted scaling): averaging them is
    right only if that was the older runs' behaviour, so aggregate says what it did and how to tell them
    apart. Not counted: runs that did not complete, runs of a group none of whose runs has the key
    (uniform), and constant depth, which lacks the gates' mode and scaling on purpose."""
    table, _, _ = report.load_runs([sweep])
    assert report.keys_some_runs_lack(table, report.experiment_keys(table)) == {}
    for path in sweep.glob("*/.hydra/config.yaml"):
        config = yaml.safe_load(path.read_text())
        del config["stochastic_depth"]["scaling"]
        path.write_text(yaml.safe_dump(config))
    for seed in (5, 6):
        make_run(sweep / f"linear,inverted,{seed}", "linear", seed, 5.0, scaling="inverted")
    proc = aggregate(str(sweep))
    assert proc.returncode == 0, proc.stderr
    assert (
        "note: 3 runs without stochastic_depth.scaling in the config (an older sdexp?) averaged as if it "
        "were inverted, as in the other runs of their group; --by dataset.name,model.name,"
        "stochastic_depth.rule,stochastic_depth.final_survival,stochastic_depth.scaling tells them apart"
    ) in " ".join(proc.stdout.split())


def test_problems_list_status_and_reason(sweep: Path) -> None:
    table, _, _ = report.load_runs([sweep])
    listed = report.problems(table).set_index("status")
    assert set(listed.index) == {"failed", "diverged"}
    assert listed.loc["failed", "error"] == "CUDA out of memory"
    assert listed.loc["diverged", "diverged_at.step"] == 17


def test_group_by_override(sweep: Path) -> None:
    table, epochs, _ = report.load_runs([sweep])
    summary = report.summarize(table, epochs, by=["model.name"])
    assert len(summary) == 1 and summary.loc[0, "seeds"] == 3  # seeds 0, 1, 2 (uniform has 0, 1)
    per_seed = [(6.0 + 5.0 + 5.9) / 3, (6.5 + 5.5 + 6.1) / 3, (7.0 + 6.5) / 2]  # each seed counts once
    assert summary.loc[0, "mean"] == pytest.approx(sum(per_seed) / 3)
    assert math.isnan(summary.loc[0, "paper_test_error"])  # mixed rules: no paper row applies
    assert math.isnan(summary.loc[0, "time_ratio"])  # nothing to compare without the rule key


def test_a_repeated_seed_counts_once(sweep: Path, tmp_path: Path) -> None:
    # The same sweep aggregated twice (a copy, or a rerun into a new timed folder): 3 seeds, not 6.
    copy = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(sweep, copy)
    table, epochs, _ = report.load_runs([sweep, copy])
    assert len(table) == 20 and report.repeated_seeds(table, report.experiment_keys(table)) == 8
    linear = report.summarize(table, epochs).set_index("stochastic_depth.rule").loc["linear"]
    assert (linear["seeds"], linear["pairs"]) == (3, 3)
    assert linear["std"] == pytest.approx(0.7637626, abs=1e-6)
    assert linear["p_value"] == pytest.approx(0.03775, abs=1e-4)


def test_constant_depth_is_one_baseline_per_seed(tmp_path: Path) -> None:
    # rule=off x final_survival=0.5,0.8 (a Hydra grid with p_L swept): both constant-depth runs of a
    # seed are the same experiment; each SD group is paired with one baseline per seed, also where
    # the constant-depth runs differ in a key that `by` splits them by (scaling).
    for seed, (c, s) in enumerate(zip(CONSTANT, STOCHASTIC, strict=True)):
        for p_l, scaling in ((0.5, "test_time"), (0.8, "inverted")):
            make_run(
                tmp_path / f"off,{p_l},{seed}", "off", seed, c + p_l, final_survival=p_l, scaling=scaling
            )
            make_run(tmp_path / f"linear,{p_l},{seed}", "linear", seed, s + p_l, final_survival=p_l)
    table, epochs, _ = report.load_runs([tmp_path])
    summary = report.summarize(table, epochs, by=report.experiment_keys(table)[:4])
    assert len(summary) == 3  # off (p_L 1.0), linear 0.5, linear 0.8
    off = summary.set_index("stochastic_depth.rule").loc["off"]
    assert (off["seeds"], off["mean"]) == (3, pytest.approx(6.5 + 0.65))  # the two runs of a seed averaged
    linear = summary[summary["stochastic_depth.rule"] == "linear"].set_index(
        "stochastic_depth.final_survival"
    )
    assert list(linear["pairs"]) == [3, 3]
    assert linear.loc[0.5, "diff_mean"] == pytest.approx(-5 / 6 + 0.5 - 0.65)
    assert list(linear["time_ratio"]) == pytest.approx([0.75, 0.75])
    for by in (["stochastic_depth.rule"], ["stochastic_depth.rule", "stochastic_depth.scaling"]):
        split = report.summarize(table, epochs, by=by)
        sd = split[split["stochastic_depth.rule"] == "linear"]
        assert list(sd["pairs"]) == [3] * len(sd) and list(sd["time_ratio"]) == pytest.approx(
            [0.75] * len(sd)
        )


def test_differences_that_do_not_vary_have_no_p_value(tmp_path: Path) -> None:
    for seed, (c, s) in enumerate([(6.0, 5.0), (7.0, 6.0), (8.0, 7.0)]):
        make_run(tmp_path / f"off,{seed}", "off", seed, c)
        make_run(tmp_path / f"linear,{seed}", "linear", seed, s)
    table, epochs, _ = report.load_runs([tmp_path])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw scipy warning either
        summary = report.summarize(table, epochs)
    linear = summary.set_index("stochastic_depth.rule").loc["linear"]
    assert (linear["pairs"], linear["diff_mean"], linear["diff_std"]) == (3, -1.0, 0.0)
    assert math.isnan(linear["p_value"])
    shown = report.display_table(summary, report.experiment_keys(table), "test_error_at_best_val")
    assert "-1.00 ± 0.00 (n=3)" in shown["SD − constant"].tolist()


def test_differences_equal_but_for_rounding_have_no_p_value(tmp_path: Path) -> None:
    """Each seed's SD run gets 116 of 10,000 test images more right: one difference, but for the rounding
    of 100 * wrong / 10000 (~1e-15), which made a t-test say p = 7e-32."""
    for seed, wrong in enumerate((641, 652, 630)):
        make_run(tmp_path / f"off,{seed}", "off", seed, 100.0 * wrong / 10000)
        make_run(tmp_path / f"linear,{seed}", "linear", seed, 100.0 * (wrong - 116) / 10000)
    table, epochs, _ = report.load_runs([tmp_path])
    linear = report.summarize(table, epochs).set_index("stochastic_depth.rule").loc["linear"]
    assert linear["pairs"] == 3 and linear["diff_mean"] == pytest.approx(-1.16)
    assert math.isnan(linear["p_value"])


def test_constant_depth_runs_are_one_group_whatever_their_scaling_or_mode(tmp_path: Path) -> None:
    """A sweep ``stochastic_depth=off,linear stochastic_depth.scaling=test_time,inverted``: the two
    constant-depth runs of a seed are one experiment (scaling does nothing there), one row, shown
    blank under scaling; each scaling of SD is its own row, paired with that baseline."""
    for seed, (c, s) in enumerate(zip(CONSTANT, STOCHASTIC, strict=True)):
        for scaling in ("test_time", "inverted"):
            make_run(tmp_path / f"off,{scaling},{seed}", "off", seed, c, scaling=scaling)
            make_run(tmp_path / f"linear,{scaling},{seed}", "linear", seed, s + (scaling == "inverted"),
                     scaling=scaling)  # fmt: skip
    table, epochs, _ = report.load_runs([tmp_path])
    by = report.experiment_keys(table)
    assert "stochastic_depth.scaling" in by
    summary = report.summarize(table, epochs, by)
    assert len(summary) == 3 and summary["pairs"].tolist()[:2] == [3, 3]
    shown = report.display_table(summary, by, "test_error_at_best_val")
    assert shown[["stochastic_depth.rule", "stochastic_depth.scaling"]].values.tolist() == [
        ["linear", "inverted"], ["linear", "test_time"], ["off", ""],
    ]  # fmt: skip
    off = report.load_runs(list(tmp_path.glob("off,*"))).table  # constant depth alone: --by scaling works
    assert report.summarize(off, epochs, ["stochastic_depth.rule", "stochastic_depth.scaling"])[
        "seeds"
    ].tolist() == [3]
    labels = [
        "linear · final_survival=0.5 · scaling=inverted",
        "linear · final_survival=0.5 · scaling=test_time",
        "off · final_survival=1 · scaling=–",
    ]
    assert plots.group_labels(summary, by).tolist() == labels


def test_labels_tell_apart_groups_a_key_some_runs_lack_splits() -> None:
    """The table groups runs without a key apart from runs with it (``--by`` naming it): so do the
    figures' labels, rather than draw both groups as one."""
    by = ["stochastic_depth.rule", "stochastic_depth.scaling"]
    summary = pd.DataFrame([["linear", math.nan], ["linear", "inverted"], ["off", math.nan]], columns=by)
    labels = ["linear · scaling=–", "linear · scaling=inverted", "off · scaling=–"]
    assert plots.group_labels(summary, by).tolist() == labels
    assert plots.group_labels(summary, by, plots.AXIS_SEP)[1] == "linear\nscaling=inverted"  # for an x axis


def test_the_papers_number_stands_beside_test_errors_only(sweep: Path) -> None:
    table, epochs, _ = report.load_runs([sweep])
    by = report.experiment_keys(table)
    for metric, shown in (("test_error_at_best_val", True), ("test_error", True), ("train_time_s", False)):
        summary = report.summarize(table, epochs, by, metric)
        assert ("paper %" in report.display_table(summary, by, metric).columns) == shown


def test_groups_without_a_seed_in_common_say_so(tmp_path: Path) -> None:
    """Constant depth on seeds 3 to 5, SD on 0 to 2: no pair, said in the SD − constant column rather
    than left blank; config values as text a person would write (0.5 and 1, also in LaTeX)."""
    for seed, (c, s) in enumerate(zip(CONSTANT, STOCHASTIC, strict=True)):
        make_run(tmp_path / f"off,{seed}", "off", seed + 3, c)
        make_run(tmp_path / f"linear,{seed}", "linear", seed, s)
    table, epochs, _ = report.load_runs([tmp_path])
    by = report.experiment_keys(table)
    shown = report.display_table(report.summarize(table, epochs, by), by, "test_error_at_best_val")
    assert shown["SD − constant"].tolist() == ["no common seed", ""]
    assert shown["stochastic_depth.final_survival"].tolist() == ["0.5", "1"]


def test_an_error_of_zero_is_drawn_on_a_linear_axis(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures: list = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    table, epochs, _ = report.load_runs([sweep])
    by = report.experiment_keys(table)
    plots.error_curves(table, epochs, by, sweep / "out")
    epochs.loc[epochs["epoch"] == 3, "test_error"] = 0.0
    plots.error_curves(table, epochs, by, sweep / "out")
    assert [figure.axes[0].get_yscale() for figure in figures] == ["log", "linear"]


def test_a_completed_run_without_the_metric_is_not_a_seed_of_it(sweep: Path) -> None:
    # a run whose test split is empty: its test_error_at_best_val is null
    make_run(sweep / "linear,seed=2", "linear", 2, math.nan)
    table, epochs, _ = report.load_runs([sweep])
    linear = report.summarize(table, epochs).set_index("stochastic_depth.rule").loc["linear"]
    assert (linear["seeds"], linear["pairs"]) == (2, 2)
    assert linear["mean"] == pytest.approx(5.25) and linear["diff_mean"] == pytest.approx(-1.0)


def test_metrics_with_text_leave_out_only_that_runs_epochs(sweep: Path) -> None:
    path = sweep / "off,seed=0" / runs.METRICS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines[:2], lines[2].replace(",33.333333333333336,", ",abc,"), *lines[3:]]))
    table, epochs, unusable = report.load_runs([sweep])
    assert len(table) == 10 and str(sweep / "off,seed=0") not in set(epochs["run_dir"])
    assert unusable["reason"].tolist() == [
        f"cannot read {path} (ValueError: column epoch_time_s holds text ('abc', line 3)): "
        "its epochs are left out of the curves"
    ]


def test_figures_show_what_the_table_shows(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completed runs only, a repeated seed once: the data each figure is drawn from."""
    copy = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(sweep, copy)
    make_run(copy / "off,seed=0", "off", 0, 9.0)  # seed 0 twice: 6.0 and 9.0, averaged to 7.5
    drawn: dict[str, pd.DataFrame] = {}
    for name in ("lineplot", "stripplot", "pointplot", "barplot"):
        monkeypatch.setattr(plots.sns, name, lambda *, data, name=name, **_: drawn.setdefault(name, data))
    table, epochs, _ = report.load_runs([sweep, copy])
    by = report.experiment_keys(table)
    plots.final_errors(table, by, "test_error_at_best_val", tmp_path / "out")
    plots.error_curves(table, epochs, by, tmp_path / "out")
    plots.epoch_times(table, epochs, by, tmp_path / "out")
    off = drawn["pointplot"][drawn["pointplot"]["stochastic_depth.rule"] == "off"]
    assert sorted(off["test_error_at_best_val"]) == [6.5, 7.0, 7.5]
    for name in ("lineplot", "barplot"):  # 8 seeds of groups completed, 3 epochs each, each seed once
        assert len(drawn[name]) == 8 * 3 and not drawn[name].duplicated(["group", "seed", "epoch"]).any()


def test_a_run_reached_by_two_paths_or_by_its_files_counts_once(
    sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sweep`` and its absolute path, or a run's result.json beside its folder: each run once, and
    ``*/result.json`` (a shell's glob) reads the runs."""
    monkeypatch.chdir(sweep.parent)
    once = len(report.load_runs([sweep]).table)
    twice = [sweep.name, str(sweep.resolve()), str(sweep / "off,seed=0" / runs.RESULT)]
    assert len(report.load_runs(twice).table) == once
    assert len(report.load_runs([str(sweep / "*" / runs.RESULT)]).table) == once
    assert status.sweep_status([sweep / "off,seed=0" / runs.RESULT])["run"].tolist() == ["off,seed=0"]


def test_linked_run_folders_are_followed_once(tmp_path: Path) -> None:
    """A folder of links to the runs to compare is read; a run linked beside itself and a loop of links
    count once."""
    make_run(tmp_path / "sweep" / "off,seed=0", "off", 0, 6.0)
    make_run(tmp_path / "sweep" / "linear,seed=0", "linear", 0, 5.0)
    compare = tmp_path / "compare"
    compare.mkdir()
    (compare / "off").symlink_to(tmp_path / "sweep" / "off,seed=0", target_is_directory=True)
    (compare / "loop").symlink_to(compare, target_is_directory=True)
    assert report.load_runs([compare]).table["stochastic_depth.rule"].tolist() == ["off"]
    assert sorted(report.load_runs([tmp_path]).table["stochastic_depth.rule"]) == ["linear", "off"]


def aggregate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "analysis" / "aggregate.py"), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_command_line_writes_files_that_parse_back(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = aggregate(str(sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "| dataset.name" in proc.stdout and "Not completed (2)" in proc.stdout
    assert "5.67 ± 0.76" in proc.stdout and "-0.83 ± 0.29 (p=0.0377, n=3)" in proc.stdout
    assert "| test_error_at_best_val %" in proc.stdout  # errors are in percent
    summary = pd.read_csv(out / "summary.csv").set_index("stochastic_depth.rule")
    assert summary.loc["linear", "mean"] == pytest.approx(17 / 3)
    counts = pd.read_csv(out / "summary.csv", dtype=str, keep_default_na=False)[["seeds", "pairs"]]
    assert counts.to_numpy().tolist() == [["3", "3"], ["3", ""], ["2", "2"]]  # integers; no pairs: blank
    assert len(pd.read_csv(out / "runs.csv")) == 10 and len(pd.read_csv(out / "epochs.csv")) == 30
    assert "\\begin{tabular}" in (out / "summary.tex").read_text()
    width, height = (round(v * plots.DPI) for v in plots.FIGSIZE)
    for name in plots.FIGURES:
        with Image.open(out / f"{name}.png") as image:
            assert image.size == (width, height)
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something is drawn
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_runs_without_metrics_are_noted_and_draw_no_empty_figures(sweep: Path, tmp_path: Path) -> None:
    """No completed run has a metrics.csv; the failed one does, so there are epochs, none to draw. An
    earlier report's figures in the same --out are removed, not left to be read as this one's."""
    assert aggregate(str(sweep), "--out", str(tmp_path / "out")).returncode == 0  # every figure
    for path in sweep.glob(f"*/{runs.METRICS}"):
        if runs.read_result(path.parent)["status"] == "completed":
            path.unlink()
    proc = aggregate(str(sweep), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    note = "note: 8 completed runs without a readable metrics.csv: left out of the error curves and times"
    assert note in proc.stdout
    figures = sorted(p.name for p in (tmp_path / "out").glob("*.p[nd][gf]"))
    assert figures == ["final_error.pdf", "final_error.png"]
    removed = "test_error_curves.png test_error_curves.pdf epoch_time.png epoch_time.pdf"
    assert f"removed an earlier report's {removed} (not drawn this time)" in proc.stdout


@pytest.mark.slow
def test_an_error_with_a_bar_and_lines_stays_one_row_of_the_markdown_table(sweep: Path) -> None:
    error = "CUDA error: out of memory\nCUDA kernel errors might be reported later | see above"
    make_run(sweep / "failed", "linear", 3, math.nan, status="failed", error=error)
    proc = aggregate(str(sweep))
    rows = [line for line in proc.stdout.splitlines() if "reported later" in line]
    assert len(rows) == 1 and r"out of memory CUDA kernel errors might be reported later \| see" in rows[0]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "latex"])
def test_printed_formats(sweep: Path, fmt: str) -> None:
    proc = aggregate(str(sweep), "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert ("\\begin{tabular}" in proc.stdout) == (fmt == "latex")
    assert "Not completed (2)" in proc.stderr  # stdout holds the table alone
    if fmt == "csv":
        assert pd.read_csv(io.StringIO(proc.stdout)).shape == (3, 11)
    if fmt == "latex":  # nothing pdflatex would choke on: unescaped % or _, raw ± or −
        assert re.search(r"(?<!\\)[%_]|[±−]", proc.stdout) is None, proc.stdout
        assert "$\\pm$" in proc.stdout and "SD $-$ constant" in proc.stdout


@pytest.mark.slow
def test_a_reader_that_leaves_early_ends_it_quietly(sweep: Path) -> None:
    # aggregate.py ... | head -1: the pipe closes before the table is written
    command = [sys.executable, str(ROOT / "analysis" / "aggregate.py"), str(sweep)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 128 + signal.SIGPIPE
    assert stderr == ""


@pytest.mark.slow
def test_glob_paths(sweep: Path) -> None:
    proc = aggregate(str(sweep / "linear,seed=*"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("4 runs in 1 group\n")


@pytest.mark.slow
def test_a_folder_named_with_a_list_value_is_a_path_not_a_glob(sweep: Path) -> None:
    named = sweep / "model.widths=[4,8,16],seed=0"
    (sweep / "linear,seed=0").rename(named)
    proc = aggregate(str(named), "--by", " stochastic_depth.rule,stochastic_depth.rule")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1 run in 1 group\n")
    globbed = report.load_runs([str(sweep / "*widths=[4,8,16],seed=*")]).table  # its brackets as they are
    assert globbed["run_dir"].tolist() == [str(named)]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty", "unknown_key", "by_seed"])
def test_bad_paths_and_keys_fail_clearly(tmp_path: Path, sweep: Path, case: str) -> None:
    (tmp_path / "empty").mkdir()
    args = {"missing": [str(tmp_path / "nope")], "empty": [str(tmp_path / "empty")],
            "unknown_key": [str(sweep), "--by", "model.depth"],
            "by_seed": [str(sweep), "--by", "stochastic_depth.rule,seed"]}[case]  # fmt: skip
    proc = aggregate(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def execute_notebook(sweep: str, folder: Path) -> list:
    """The notebook's outputs on ``sweep`` (figures into ``folder/figures``); a cell's error ends it
    there, as Jupyter's "Run All" does, and is among the outputs."""
    notebook = nbformat.read(ROOT / "analysis" / "report.ipynb", as_version=4)
    env = {"SDEXP_SWEEP": sweep, "SDEXP_REPORT": str(folder / "figures")}
    with pytest.MonkeyPatch.context() as patch, contextlib.suppress(nbclient.exceptions.CellExecutionError):
        for key, value in env.items():
            patch.setenv(key, value)
        nbclient.NotebookClient(
            notebook, timeout=300, resources={"metadata": {"path": str(folder)}}
        ).execute()
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def run_notebook(sweep: str, folder: Path) -> list:
    """The notebook's outputs on ``sweep``, failing on a cell's error."""
    outputs = execute_notebook(sweep, folder)
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


@pytest.mark.slow
def test_notebook_on_a_folder_that_is_not_there_shows_one_line(tmp_path: Path) -> None:
    """A bad ``SDEXP_SWEEP``: the line the commands print, not an IPython traceback."""
    errors = [o for o in execute_notebook(str(tmp_path / "nope"), tmp_path) if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "RunFolderError"
    assert errors[0].traceback == [f"error: {tmp_path / 'nope'}: no such file or folder"]


@pytest.mark.slow
def test_notebook_on_a_sweep_that_has_only_started(tmp_path: Path) -> None:
    """No completed run yet: it says so, lists the runs, and draws nothing (a cell error before)."""
    make_run(tmp_path / "runs" / "failed", "linear", 0, math.nan, status="failed")
    outputs = run_notebook(str(tmp_path / "runs"), tmp_path)
    printed = "".join(o.get("text", "") for o in outputs)
    assert "1 run, none completed yet" in printed and not (tmp_path / "figures").exists()


@pytest.mark.slow
def test_notebook_on_runs_without_metrics_draws_the_final_errors(sweep: Path, tmp_path: Path) -> None:
    """No completed run has a metrics.csv (moved away; the failed one has): the table, the one figure
    that needs none, and the note aggregate.py prints; an earlier report's other figures are removed."""
    assert sum("image/png" in o.get("data", {}) for o in run_notebook(str(sweep), tmp_path)) == 3
    for path in sweep.glob(f"*/{runs.METRICS}"):
        if runs.read_result(path.parent)["status"] == "completed":
            path.unlink()
    outputs = run_notebook(str(sweep), tmp_path)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1
    printed = "".join(o.get("text", "") for o in outputs)
    assert "note: 8 completed runs without a readable metrics.csv" in printed
    assert "removed an earlier report's test_error_curves.png" in printed
    assert sorted(p.stem for p in (tmp_path / "figures").iterdir()) == ["final_error", "final_error"]


@pytest.mark.slow
def test_notebook_executes_on_a_real_tiny_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", *TINY, "trainer.epochs=2", "seed=0,1",
         "stochastic_depth=off,linear", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (sweep / "broken").mkdir()
    (sweep / "broken" / runs.LOG).write_text(
        "[2026-12-06 05:00:00,000][sdexp.failure][ERROR] - error: no data\n"
    )
    outputs = run_notebook(os.path.relpath(sweep, ROOT), tmp_path)  # from the repository, as README says
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(markdown) == 1 and "±" in markdown[0] and "linear" in markdown[0]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    texts = [o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]
    assert any("no result.json: failed: no data" in text for text in texts)  # what it could not use
    assert (tmp_path / "figures" / "test_error_curves.png").is_file()
