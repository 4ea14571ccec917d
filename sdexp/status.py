"""Where a sweep stands, from its folders alone (no SLURM calls): one row per run, with totals.

Safe to read while runs write (sdexp replaces every file atomically) and on half-written or damaged
folders: a file that cannot be read makes its run's row say so. The runs of a sweep that have not
started yet are found from ``multirun.yaml``, which Hydra writes before the first job, expanded as
Hydra's basic sweeper expands them.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import ListConfig, OmegaConf

from sdexp import run_folders, runs
from sdexp.files import read_file
from sdexp.overrides import shared_by_all
from sdexp.preflight import job_folders, sweep_jobs
from sdexp.wording import count

MULTIRUN = "multirun.yaml"
COLUMNS = ["run", "status", "epoch", "last val error %", "img/s", "time left", "slurm job"]


def planned_runs(sweep_dir: Path) -> tuple[dict[str, str], set[str] | None]:
    """The folder name of each of the sweep's jobs (from its ``multirun.yaml``; none without one, or
    where the names cannot be told from it), with the overrides that tell the job from the others,
    e.g. ``seed=1 stochastic_depth=off``; and the overrides all its jobs share (None: no names)."""
    path = sweep_dir / MULTIRUN
    if not path.is_file():
        return {}, None

    def parse(path: Path) -> tuple[list[list[str]], list[str]]:
        config = OmegaConf.load(path)
        jobs = sweep_jobs(config)  # a file that is no Hydra multirun record fails here, or below
        return jobs, job_folders(config, jobs)

    jobs, names = read_file(path, parse, runs.RunFolderError, "restore it, or start the sweep again")
    if len(set(names)) < len(names):  # a subdir read from the jobs' own values (seed${seed}): unknown here
        return {}, None  # so only the folders found are listed, each under its own name
    shared = shared_by_all(jobs)
    common = set(shared) if len(jobs) > 1 else set(jobs[0])
    return {name: _but(job, shared) for name, job in zip(names, jobs, strict=True)}, common


def _but(overrides: list[str], common: set[str] | frozenset[str]) -> str:
    """The overrides that tell a job apart: those not all the sweep's jobs share."""
    return " ".join(o for o in overrides if o not in common)


def _found_run_name(run_dir: Path, common: set[str] | None) -> str:
    """A run folder the sweep's record does not plan (of an earlier command into the same folder), named
    by its own overrides less those the sweep's jobs share (where it has them; the folder's name
    holds them all, long); by its folder's name where it is no sweep's job (None)."""
    if common is None:
        return run_dir.name
    try:
        overrides = read_file(run_dir / runs.OVERRIDES, OmegaConf.load, runs.RunFolderError, "")
    except runs.RunFolderError:  # none, or damaged: the folder's name will do
        return run_dir.name
    ok = isinstance(overrides, ListConfig) and all(isinstance(o, str) for o in overrides)
    return (_but(list(overrides), common) if ok else "") or run_dir.name


def run_row(run_dir: Path, shown: str | None = None) -> dict[str, Any]:
    """One run's row, named ``shown`` (else by its folder); a file that cannot be read gives the status
    ``unreadable`` and the reason."""
    row: dict[str, Any] = {"run": shown or run_dir.name}
    if not run_dir.is_dir():
        return {**row, "status": "not started"}
    try:
        result = runs.previous_result(run_dir)
        slurm = runs.read_slurm_job(run_dir) or {}
        if result is None:
            status = run_folders.status_before_result(run_dir)
            return {**row, "status": status, "slurm job": slurm.get("slurm_job_id")}
        runs.check_result(run_dir, result)
        epochs = _planned_epochs(run_dir)
        metrics = runs.read_metrics(run_dir) if (run_dir / runs.METRICS).exists() else []
    except runs.RunFolderError as exc:
        return {**row, "status": f"unreadable: {exc}"}
    done = result.get("epochs_completed", 0)
    status = run_folders.live_status(run_dir, result)
    evaluated = [m["val_error"] for m in metrics if not math.isnan(m.get("val_error", math.nan))]
    row.update(status=status, epoch=f"{done}/{epochs}", **{"slurm job": result.get("slurm_job_id")})
    if evaluated:
        row["last val error %"] = evaluated[-1]
    if metrics:
        row["img/s"] = metrics[-1].get("images_per_s")
    if status not in runs.FINISHED and done and "train_time_s" in result:
        row["time left"] = pd.Timedelta(seconds=round(result["train_time_s"] / done * max(epochs - done, 0)))
    return row


def _planned_epochs(run_dir: Path) -> int:
    trainer = runs.read_config(run_dir).get("trainer")
    epochs = trainer.get("epochs") if isinstance(trainer, dict) else None
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        path = run_dir / runs.CONFIG
        raise runs.RunFolderError(f"{path}: trainer.epochs is {epochs!r}, not an integer >= 1")
    return epochs


def sweep_status(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The rows of every run under ``paths`` (sweep or run folders): each sweep's planned runs, started
    or not, then any other run folder found there. With several paths, each row's name starts with
    its path. A damaged ``multirun.yaml`` is named in ``attrs["notes"]``, and only the runs found are
    listed."""
    if any(not str(path).strip() for path in paths):  # Path("") would be this folder
        raise runs.RunFolderError("an empty path was given: name sweep folders or run folders")
    rows, seen, unreadable = [], set(), []
    for path in (run_folders.folder_of(Path(path)) for path in paths):
        if not path.exists():
            raise runs.RunFolderError(f"{path}: no such folder")
        try:
            jobs, common = planned_runs(path)
        except runs.RunFolderError as exc:  # the runs that did start can still be shown
            unreadable.append(exc)
            jobs, common = {}, None
        planned = {path / name: shown for name, shown in jobs.items()}
        found = run_folders.run_folders_under(path)
        for folder in [*planned, *sorted(found - set(planned))]:
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                shown = planned.get(folder) or _found_run_name(folder, common)
                rows.append(run_row(folder, f"{path}: {shown}" if len(paths) > 1 else shown))
    if not rows:
        raise (
            unreadable[0]
            if unreadable
            else runs.RunFolderError(
                f"{', '.join(map(str, paths))}: no runs there (no {MULTIRUN}, no run folders)"
            )
        )
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table.attrs["notes"] = [
        f"{exc}; until then, runs that have not started are not listed" for exc in unreadable
    ]
    return table


def totals(table: pd.DataFrame) -> str:
    """``6 runs: 2 completed, 1 running, 3 not started; longest time left 1:02:03`` (of a started run)."""
    counts = table["status"].str.split(":").str[0].value_counts()
    line = f"{count(len(table), 'run')}: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    left = table["time left"].dropna()
    return line + (f"; longest time left {_clock(left.max())} (of a started run)" if len(left) else "")


def _clock(left: pd.Timedelta) -> str:
    """``1:02:03`` (and ``2 days, 1:02:03``)."""
    return str(datetime.timedelta(seconds=round(left.total_seconds())))


def render(table: pd.DataFrame) -> str:
    """The table as markdown, numbers rounded, empty cells blank."""
    shown = table.astype(object).where(table.notna(), "")
    shown["last val error %"] = [f"{v:.2f}" if v != "" else "" for v in shown["last val error %"]]
    shown["img/s"] = [f"{v:.0f}" if v != "" else "" for v in shown["img/s"]]
    shown["time left"] = [_clock(v) if v != "" else "" for v in shown["time left"]]
    return shown.to_markdown(index=False, disable_numparse=True)
