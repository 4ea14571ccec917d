"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM job array, made fit for long sweeps.

Differences from ``submitit_slurm``, whose settings and job code it keeps:

- runs already finished (same config) are not submitted again, so rerunning a sweep costs no queue time;
- a run whose job from an earlier launch is still pending or running (the launch was interrupted, e.g.
  by Ctrl-C, while its jobs went on) is not submitted a second time: the sweep waits for that job, and
  submits the run again if that job ends before the run has finished (``scancel``);
- a run whose folder holds another config is not submitted: it would fail at once;
- the sweep waits for every job: a failed or cancelled job (``scancel``) does not end it early, and the
  others keep being watched to their end; each job's end is logged as it comes;
- it ends with the summary of the local launcher: how many jobs were new, resumed, skipped and failed,
  and for each failed one its SLURM state and log file.

A job that hits its time limit or is preempted gets SIGUSR2 ``signal_delay_s`` before; sdexp writes a
mid-epoch checkpoint and submitit requeues the job (at most ``max_num_timeout`` times), which resumes.

``runs_per_task=k`` packs k runs into each array task (:mod:`.packed`): k processes on the task's GPU.
A run's ``slurm_job.json`` then names its task and the runs it shares the task with.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from hydra_plugins.sdexp_launcher.jobs import (
    Job,
    check_count,
    end_sweep,
    every_run,
    finished,
    job_return,
    plan_jobs,
    settled,
)
from hydra_plugins.sdexp_launcher.packed import PackedTask
from hydra_plugins.sdexp_launcher.slurm_config import SlurmConf
from sdexp import run_folders, runs
from sdexp.errors import SdexpError, Terminated, first_line
from sdexp.signals import reported_if_default
from sdexp.wording import count

if TYPE_CHECKING:
    import submitit

log = logging.getLogger(__name__)


# Settings with a lower bound (the preset's schema fixes their types; null leaves some to SLURM, e.g.
# mem_gb where mem_per_gpu is set; mem_gb=0 is all of a node's memory): sbatch would refuse the array.
AT_LEAST = {"runs_per_task": 1, "cpus_per_task": 1, "gpus_per_node": 0, "mem_gb": 0, "timeout_min": 1,
            "array_parallelism": 1, "max_num_timeout": 0, "signal_delay_s": 0}  # fmt: skip
# SLURM states of a job that SLURM ended, not its run: a rerun resumes such a run where it stopped.
ENDED_BY_SLURM = ("CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")
REFUSED = "Batch job submission failed"  # sbatch's line for the controller's refusal
POLL_S = 5  # between looks at the jobs' states (submitit asks sacct less often, more so for long jobs)
RESULT_GRACE_S = 15  # submitit's own wait for the result file of a job that ended
# A run trains in one process: a second task or node would run the same run again, refused by its lock.
ONE_PROCESS = ("nodes", "tasks_per_node", "ntasks_per_node")
PACK_RUNS = "several runs share a task with hydra.launcher.runs_per_task"
# sbatch options that the launcher sets itself, and what it needs them for.
OWN_OPTIONS = {
    "array": "one array task per run or pack of runs; hydra.launcher.array_parallelism caps how many run",
    "output": "the job's logs, which the summary names",
    "error": "the job's logs, which the summary names",
    "open-mode": "a requeued job's logs appended to its first ones",
    "signal": "SIGUSR2 before the time limit, to checkpoint: set hydra.launcher.signal_delay_s",
    "nodes": PACK_RUNS,
    "ntasks": PACK_RUNS,
    "ntasks-per-node": PACK_RUNS,
}


def check_settings(params: dict[str, Any]) -> None:
    """Refuse a key that neither the preset nor submitit's SLURM executor knows (added with
    ``+hydra.launcher.<key>=``), a setting below its bound (:data:`AT_LEAST`), more than one process per
    run (:data:`ONE_PROCESS`), an sbatch option the launcher sets itself (:data:`OWN_OPTIONS`), and a
    machine without ``sbatch``: before Hydra writes anything into the sweep folder, where submitit
    would fail later."""
    from submitit.slurm.slurm import SlurmExecutor  # late, as in _executor

    known = set(OmegaConf.structured(SlurmConf).keys()) | SlurmExecutor._valid_parameters()
    if unknown := sorted(set(params) - known):
        raise SdexpError(
            f"hydra.launcher.{unknown[0]} is not a config key: conf/hydra/launcher/slurm.yaml lists the "
            "preset's; other sbatch options go in hydra.launcher.additional_parameters"
        )
    for key, least in AT_LEAST.items():
        if params.get(key) is not None:  # None: left to SLURM
            check_count(key, params[key], least)
    for key in ONE_PROCESS:
        if params.get(key) is not None and (type(params[key]) is not int or params[key] != 1):
            raise SdexpError(f"hydra.launcher.{key}={params[key]} is not allowed: 1 (a run trains in one "
                             f"process; {PACK_RUNS})")  # fmt: skip
    for key in params.get("additional_parameters") or {}:
        why = OWN_OPTIONS.get(str(key).replace("_", "-"))  # submitit writes either as --key-name
        if why is not None:
            raise SdexpError(
                f"hydra.launcher.additional_parameters.{key}: the launcher sets sbatch's "
                f"--{str(key).replace('_', '-')} itself ({why}): leave it out"
            )
    if shutil.which("sbatch") is None:
        raise SdexpError(
            "hydra/launcher=slurm submits with SLURM's sbatch, which is not on PATH here: start the sweep "
            "on the cluster (a login node), or use hydra/launcher=local"
        )


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def __init__(self, runs_per_task: int = 1, **params: Any) -> None:
        check_settings({**params, "runs_per_task": runs_per_task})
        super().__init__(**params)
        self.runs_per_task = runs_per_task

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        jobs = plan_jobs(self.config, self.hydra_context, job_overrides, initial_job_idx)
        handles = _still_in_slurm(jobs)
        jobs = [job._replace(state="queued") if job.idx in handles else job for job in jobs]
        todo = [job for job in jobs if job.state in ("new", "resumed")]
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(
            "slurm launcher: %s, %d to submit (%d per array task), sweep folder %s%s",
            count(len(jobs), "run"), len(todo), self.runs_per_task, self.config.hydra.sweep.dir,
            every_run(jobs),
        )  # fmt: skip
        results = {job.idx: outcome for job in jobs if (outcome := settled(job)) is not None}
        for job in jobs:
            if job.state == "queued":
                log.info(
                    "#%d SLURM job %s, submitted by an earlier launch, has not ended: waiting for it, not "
                    "submitting again: %s", job.idx, handles[job.idx].job_id, job.shown,
                )  # fmt: skip
        earlier = set(handles)
        if todo:
            handles.update(self._submit(todo))
        try:
            with reported_if_default(signal.SIGTERM, signal.SIGHUP):
                if handles:
                    _warn_without_accounting(next(iter(handles.values())).job_id)
                    log.info(
                        "waiting for %s in SLURM (Ctrl-C stops the wait, not the jobs)",
                        count(len(handles), "run"),
                    )
                outcomes, again = self._wait([job for job in jobs if job.idx in handles], handles, earlier)
        except (KeyboardInterrupt, Terminated) as stopped:
            stopped.add_note(
                "the submitted jobs go on in SLURM: run the same command again to wait for them (it submits "
                "none of them twice), or scancel them"
            )
            raise
        results.update(outcomes)
        jobs = [again.get(job.idx, job) for job in jobs]  # counted as they were submitted again
        return end_sweep("slurm launcher", jobs, [results[job.idx] for job in jobs])

    def _wait(
        self, jobs: Sequence[Job], handles: dict[int, submitit.Job], earlier: set[int]
    ) -> tuple[dict[int, JobReturn], dict[int, Job]]:
        """Each run's outcome, by run number, logged as its SLURM job ends (requeues included), in the
        order they end: a failure in the first minute is not kept back behind a long run. A job that ended
        without a result file gets :data:`RESULT_GRACE_S` for it to appear (a slow shared file system),
        all such jobs at once. A job of an ``earlier`` launch that SLURM ended (:data:`ENDED_BY_SLURM`,
        e.g. cancelled as this launch began) before its run finished is submitted again, once, as a rerun
        of the command would: those runs are returned too, as submitted."""
        handles, earlier = dict(handles), set(earlier)
        pending = {job.idx: job for job in jobs}
        ended: dict[int, float] = {}  # when a job was first seen ended without a result file
        outcomes: dict[int, JobReturn] = {}
        again: dict[int, Job] = {}
        while pending:
            redo = []
            for idx, job in list(pending.items()):
                handle, state = handles[idx], None
                if not handle.done():
                    continue
                if not handle.paths.result_pickle.exists():
                    seen = ended.setdefault(idx, time.monotonic())
                    if time.monotonic() - seen < RESULT_GRACE_S:
                        continue
                    state = _state(handle)
                    if idx in earlier and state.startswith(ENDED_BY_SLURM) and not finished(job):
                        log.info(
                            "#%d SLURM job %s of an earlier launch ended %s before its run finished: "
                            "submitting it again", idx, handle.job_id, state,
                        )  # fmt: skip
                        redo.append(_to_submit(job))
                        earlier.discard(idx)
                        del ended[idx]
                        continue
                outcomes[idx] = _outcome(job, handle, state)
                del pending[idx]
            if redo:
                try:
                    handles.update(self._submit(redo))
                    again.update((job.idx, job) for job in redo)
                except SdexpError as exc:  # the other jobs go on: wait for them all the same
                    log.error("#%s not submitted again: %s", ", #".join(str(job.idx) for job in redo), exc)
                    for job in redo:
                        outcomes[job.idx] = job_return(job, f"not submitted again: {exc}")
                        del pending[job.idx]
            if pending:
                time.sleep(POLL_S)
        return outcomes, again

    def _submit(self, todo: Sequence[Job]) -> dict[int, submitit.Job]:
        """Submit ``todo`` as one job array, ``runs_per_task`` runs per task; handles by run number."""
        from submitit.core.utils import FailedJobError  # late, as in _executor

        executor = self._executor()
        try:
            return self._submit_array(executor, todo)
        except FailedJobError as exc:  # a refusal, or a timeout after which the array may exist
            said = first_line(str(exc))
            if REFUSED in str(exc):  # the controller's answer: nothing was submitted
                raise SdexpError(f"sbatch refused the array ({said}): nothing was submitted") from None
            raise SdexpError(f"sbatch failed ({said}): see squeue before running the sweep again") from None

    def _submit_array(self, executor: submitit.AutoExecutor, todo: Sequence[Job]) -> dict[int, submitit.Job]:
        """:meth:`_submit`'s work, and each run's ``slurm_job.json``."""
        if self.runs_per_task == 1:  # each task trains its run in its own process, as submitit_slurm does
            tasks = [[job] for job in todo]
            arguments = [
                (job.overrides, "hydra.sweep.dir", job.idx, f"job_id_for_{job.idx}", Singleton.get_state())
                for job in todo
            ]
            submitted = executor.map_array(self, *zip(*arguments, strict=True))
        else:
            k = self.runs_per_task
            tasks = [list(todo[i : i + k]) for i in range(0, len(todo), k)]
            sent = [
                [job._replace(shared=frozenset()) for job in task] for task in tasks
            ]  # the task's log alone
            submitted = executor.map_array(PackedTask(os.path.abspath(sys.argv[0])), sent)
        handles = {}
        for task, handle in zip(tasks, submitted, strict=True):
            for job in task:
                names = [other.run_dir.name for other in task] if len(task) > 1 else None
                runs.write_slurm_job(job.run_dir, handle.job_id, str(executor.folder), names)
                log.info("#%d SLURM job %s (%s): %s", job.idx, handle.job_id, job.state, job.shown)
                handles[job.idx] = handle
        return handles

    def _executor(self) -> submitit.AutoExecutor:
        """submitit's SLURM executor with this preset's settings (as hydra-submitit-launcher maps them)."""
        import submitit  # imported late, as hydra-submitit-launcher does: plugin discovery stays fast

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in queue_keys else f"slurm_{k}": v for k, v in params.items()})
        return executor


def _active_slurm_jobs() -> set[str]:
    """Ids (``<array id>_<task>`` for array tasks) of this user's jobs that SLURM has not ended."""
    command = ["squeue", "--noheader", "--array", "--user", getpass.getuser(), "--format=%i"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SdexpError(
            f"{' '.join(command)} failed ({done.stderr.strip()}): cannot tell which runs still have a "
            "job in SLURM, so nothing was submitted; try again"
        )
    return set(done.stdout.split())


def _warn_without_accounting(job_id: str) -> None:
    """Warn once, before the wait, where sacct cannot tell a job's state: submitit follows jobs with it,
    and without it a job that ends with no result (cancelled, out of time, killed) is waited on forever."""
    command = ["sacct", "--noheader", "--allocations", f"--jobs={job_id}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=15)
        lines = done.stderr.strip().splitlines()
        why = None if done.returncode == 0 else lines[0] if lines else f"exit status {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as error:
        why = str(error)
    if why is not None:
        log.warning(
            "%s failed (%s): without SLURM accounting a job that ends without a result (scancel, time "
            "limit, node failure) is not noticed, and the sweep would wait for it until Ctrl-C",
            " ".join(command), why,
        )  # fmt: skip


def _still_in_slurm(jobs: Sequence[Job]) -> dict[int, submitit.Job]:
    """Handles, by job number, on the jobs that earlier launches submitted for runs of ``jobs`` still to
    launch and that SLURM has not ended. squeue is asked only where a run folder records a job."""
    from submitit.slurm.slurm import SlurmJob

    recorded = {
        job.idx: record
        for job in jobs
        if job.state in ("new", "resumed") and (record := runs.read_slurm_job(job.run_dir)) is not None
    }
    active = _active_slurm_jobs() if recorded else set()
    return {
        idx: SlurmJob(folder=record["submitit_folder"], job_id=record["slurm_job_id"])
        for idx, record in recorded.items()
        if record["slurm_job_id"] in active
    }


def _to_submit(job: Job) -> Job:
    """A run whose earlier job ended, as it is to be submitted now: resumed from its checkpoint, or new."""
    return job._replace(state="resumed" if (job.run_dir / runs.CHECKPOINT).exists() else "new")


def _state(handle: submitit.Job) -> str:
    return handle.get_info().get("State", handle.state)  # fresh from sacct, not the cached state


def _outcome(job: Job, handle: submitit.Job, state: str | None = None) -> JobReturn:
    """The run's outcome once SLURM is done with its job (its SLURM ``state``, if already read). A run
    whose job ended without a result (failed, cancelled, out of time) but whose folder says it finished
    is completed: another run of its task may have failed it."""
    result = None
    if handle.paths.result_pickle.exists():  # else submitit's results() would wait for it
        with contextlib.suppress(Exception):  # the job's own error, which its log holds
            result = handle.results()[0]
    if result is None:  # the job ended without a result (failed, cancelled, timed out)
        state = state or _state(handle)
        if finished(job):
            log.info("#%d completed (its SLURM job then ended %s): %s", job.idx, state, job.shown)
            return job_return(job)
        log.error("#%d failed: SLURM state %s", job.idx, state)
        said = run_folders.error_aside(handle.paths.stderr)
        return job_return(job, f"SLURM job {handle.job_id} ended {state}{said}; see {handle.paths.stderr}")
    if not isinstance(result, JobReturn):  # a packed task's outcomes: the one of this run
        [result] = [r for r in result if Path(r.working_dir).resolve() == job.run_dir.resolve()]
    log.info("#%d %s: %s", job.idx, result.status.name.lower(), job.shown)
    return result
