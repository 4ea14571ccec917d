"""What sdexp's launchers share: each job's run folder and state before the launch, the summary after.

A job whose run folder holds a finished run with the same config is not launched again: it is
``skipped``; one whose folder holds a run with another config is ``refused`` (it would fail at once).
The others are ``resumed`` (the folder has a checkpoint) or ``new``; the SLURM launcher marks those whose
job from an earlier launch is still in the queue ``queued`` and waits for that job instead.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from sdexp import run_folders, runs
from sdexp.checkpoint import restore_metrics
from sdexp.errors import SdexpError, SweepFailed
from sdexp.files import file_in_the_way
from sdexp.overrides import quote_override, shared_by_all
from sdexp.preflight import hydra_config_of
from sdexp.signals import LAUNCHER_PID
from sdexp.wording import count

log = logging.getLogger(__name__)


# How a run's process stopped by a signal passed on to it ends: 128 + signal from run.py's own handler
# (Ctrl-C; SIGTERM while it loads its data), or killed by it (the default handler, after a checkpoint).
STOPPED_BY = {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM}


def check_count(key: str, value: object, least: int) -> None:
    """Refuse ``hydra.launcher.<key>`` unless it is an integer (a bool is not) of at least ``least``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise SdexpError(f"hydra.launcher.{key}={value} is not allowed: an integer >= {least}")


class Job(NamedTuple):  # not a dataclass: Hydra's plugin scan runs modules outside sys.modules
    """One job of a sweep: its number, overrides, run folder and what it will do there."""

    idx: int
    overrides: list[str]
    run_dir: Path
    state: str  # "new", "resumed", "skipped", "refused" (see run_state) or "queued"
    reason: str = ""  # why it is refused
    shared: frozenset[str] = frozenset()  # overrides every job of the sweep has: said once, by every_run

    @property
    def shown(self) -> str:
        """The job's overrides for its lines: those that set it apart from the sweep's other jobs (all of
        them where none does: a sweep of like jobs in folders named by their number)."""
        apart = [o for o in self.overrides if o not in self.shared]
        return " ".join(filter_overrides(apart or self.overrides))


def every_run(jobs: Sequence[Job]) -> str:
    """The overrides that every job has, for a launcher's first line (``; every run: ...``), else ""."""
    shared = filter_overrides([o for o in jobs[0].overrides if o in jobs[0].shared]) if jobs else []
    return f"; every run: {' '.join(shared)}" if shared else ""


def run_state(run_dir: Path, cfg: DictConfig) -> tuple[str, str]:
    """``(state, reason)``: ``skipped`` (a finished run with this config), ``refused`` (a run with another
    config, a damaged file, or a file where the folder should be; the reason says which keys differ or
    which file), ``resumed`` (a checkpoint) or ``new``."""
    blocking = file_in_the_way(run_dir)
    if blocking is not None:
        return "refused", f"cannot make the run folder {run_dir}: {blocking} is a file: move it away"
    try:
        runs.check_config(run_dir, cfg)
        finished = runs.finished_result(run_dir) is not None
    except runs.RunFolderError as exc:  # another config, or a damaged file in the folder
        return "refused", str(exc)
    if finished:
        restore_metrics(run_dir)  # where it was moved away, as status.py advises for a damaged one
        return "skipped", ""
    return ("resumed" if (run_dir / runs.CHECKPOINT).exists() else "new"), ""


def refuse_busy(jobs: Sequence[Job]) -> list[Job]:
    """``jobs``, those to start whose folder a process trains in refused (an earlier sweep's job that
    trains on after its launcher was killed, say): started, they would only be refused by the lock.
    For the local launcher; a SLURM sweep waits for its earlier jobs instead."""
    return [
        job._replace(state="refused", reason=busy)
        if job.state in ("new", "resumed") and (busy := runs.in_use(job.run_dir)) is not None
        else job
        for job in jobs
    ]


def plan_jobs(
    config: DictConfig, hydra_context: HydraContext, job_overrides: Sequence[Sequence[str]], initial_idx: int
) -> list[Job]:
    """Each job's run folder (``hydra.sweep.dir``/``hydra.sweep.subdir``) and state, and the overrides
    every job of the sweep has (:attr:`Job.shared`)."""
    jobs: list[Job] = []
    batched = config.hydra.sweeper.get("max_batch_size")  # job_overrides: one batch, not the sweep
    shared = frozenset() if batched else shared_by_all(job_overrides)
    for idx, overrides in enumerate(job_overrides, start=initial_idx):
        sweep = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with hydra_config_of(sweep, idx):  # its number, as Hydra's launchers set it: the subdir may read it
            run_dir = Path(str(sweep.hydra.sweep.dir)) / str(sweep.hydra.sweep.subdir)
            task = OmegaConf.masked_copy(sweep, [key for key in sweep if key != "hydra"])
            jobs.append(Job(idx, list(overrides), run_dir, *run_state(run_dir, task), shared=shared))
    return jobs  # no two share a folder where Hydra names them (preflight.check_sweep_jobs)


def start_process(job: Job, script: str, env: dict[str, str], own_session: bool = False) -> subprocess.Popen:
    """Start training ``job`` in a process of its own, ``python <script> <its overrides>
    hydra.run.dir=<its run folder>``, its number given as ``hydra.job.num`` and ``hydra.job.id`` (as
    :func:`plan_jobs` and Hydra's basic launcher set them; ``seed=${hydra:job.num}`` reads it), with
    ``env`` added to the environment and its console output appended to ``console.log`` in the run
    folder; ``own_session``: out of the terminal's reach, for a caller that passes signals on itself.
    The job stops (checkpointed) if this process dies (:func:`~sdexp.signals.stop_with_the_launcher`)."""
    log.info("#%d start (%s): %s", job.idx, ", ".join(f"{k}={v}" for k, v in env.items()), job.shown)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, script, *job.overrides, f"hydra.run.dir={quote_override(str(job.run_dir))}",
               f"hydra.job.num={job.idx}", f"hydra.job.id={job.idx}"]  # fmt: skip
    with open(job.run_dir / runs.CONSOLE_LOG, "a", encoding="utf-8") as console:
        return subprocess.Popen(
            command, env={**os.environ, **env, LAUNCHER_PID: str(os.getpid())}, stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )  # fmt: skip


def process_outcome(job: Job, code: int) -> JobReturn:
    """The outcome of a job's process that ended with status ``code``."""
    if code == 0:
        log.info("#%d done: %s", job.idx, job.shown)
        return job_return(job)
    try:  # Popen's code is minus the signal that ended the process
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    except ValueError:
        how = f"killed by signal {-code}"
    # none where it was killed: the log's error line is an older run's
    said = run_folders.error_aside(job.run_dir / runs.CONSOLE_LOG, among=1) if code > 0 else ""
    log.error("#%d failed (%s): %s", job.idx, how, job.shown)
    return job_return(job, f"{how}{said}; see {job.run_dir / runs.CONSOLE_LOG}")


def finished(job: Job) -> bool:
    """Whether the run's folder holds a finished run (not to be started again, or stopped too late to
    be interrupted)."""
    try:
        return runs.finished_result(job.run_dir) is not None
    except runs.RunFolderError:  # damaged: the run's own process says so
        return False


def settled(job: Job) -> JobReturn | None:
    """The outcome of a job that is not to be launched (skipped or refused), else None."""
    if job.state == "skipped":
        log.info("#%d skipped (finished before): %s", job.idx, job.shown)
        return job_return(job)
    if job.state == "refused":
        log.error("#%d refused: %s", job.idx, job.reason)
        return job_return(job, job.reason)
    return None


def job_return(job: Job, error: str | None = None) -> JobReturn:
    """A job's outcome for Hydra: completed, or failed with ``error`` (raised when Hydra reads it)."""
    result = JobReturn(overrides=job.overrides, working_dir=str(job.run_dir), task_name=str(job.idx))
    if error is None:
        result.status, result.return_value = JobStatus.COMPLETED, None
    else:
        result.status, result._return_value = JobStatus.FAILED, RuntimeError(error)
    return result


def end_sweep(launcher: str, jobs: Sequence[Job], results: Sequence[JobReturn]) -> Sequence[JobReturn]:
    """Log one line counting the runs by state and failure, then one line per failed run; return
    ``results``, or raise :class:`~sdexp.errors.SweepFailed` if any job failed.

    ``queued`` and ``refused`` jobs are counted only where there are any.
    """
    states = [job.state for job in jobs]
    new, resumed, skipped = (states.count(state) for state in ("new", "resumed", "skipped"))
    counts = f"{new} new, {resumed} resumed, {skipped} skipped (finished before)"
    for state, meaning in (
        ("queued", "in SLURM from an earlier launch"),
        ("refused", "another config, a damaged file or a live process in the folder, or a file in its place"),
    ):
        if state in states:
            counts += f", {states.count(state)} {state} ({meaning})"
    failed = [(job, r) for job, r in zip(jobs, results, strict=True) if r.status == JobStatus.FAILED]
    log.log(
        logging.ERROR if failed else logging.INFO,
        "%s: %s: %s; %d failed%s",
        launcher, count(len(jobs), "run"), counts, len(failed),
        "".join(f"\n  failed: #{job.idx} {job.shown}: {r._return_value}" for job, r in failed),
    )  # fmt: skip
    if failed:
        refused = "refused" in states  # their folder needs a fix first, which their line above names
        raise SweepFailed(
            f"{len(failed)} of {count(len(jobs), 'run')} failed (listed above); run the same command "
            "again to retry them"
            + (", once the refused runs' folders are fixed as their lines say" if refused else "")
            + ": finished runs are skipped"
        )
    return results
