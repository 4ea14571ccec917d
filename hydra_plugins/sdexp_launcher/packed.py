"""Several runs in one SLURM array task (``hydra.launcher.runs_per_task``): what submitit runs there.

Each run is its own ``run.py`` process with its own run folder; they share the task's GPU and divide
its CPUs. A stop signal (SIGUSR2 before the time limit or at preemption, SIGTERM from ``scancel``)
reaches every run, each writes a checkpoint and exits, and only then does the signal go on to
submitit, whose SIGUSR2 handler requeues the task (:meth:`PackedTask.checkpoint`), if some run was
interrupted. The requeued task skips the runs that finished and resumes the others. (A run still
starting up when the signal comes ends without a checkpoint; it resumes from its last one.)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hydra.core.utils import JobReturn

from hydra_plugins.sdexp_launcher.jobs import STOPPED_BY, Job, finished, process_outcome, start_process
from sdexp.signals import StopSignals

if TYPE_CHECKING:
    import submitit

log = logging.getLogger(__name__)
POLL_S = 0.5


def run_environments(count: int, environ: dict[str, str]) -> list[dict[str, str]]:
    """Environment updates for ``count`` runs sharing a task: the task's CPUs divided among them
    (``OMP_NUM_THREADS``; torch would otherwise start a thread per CPU in each run) and, where the task
    holds several GPUs, one each in turn (``CUDA_VISIBLE_DEVICES``)."""
    cpus = environ.get("SLURM_CPUS_PER_TASK", "")
    threads = str(max(1, int(cpus) // count)) if cpus.isdigit() else "1"
    gpus = [g for g in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    gpu = [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if len(gpus) > 1 else {} for i in range(count)]
    return [{"OMP_NUM_THREADS": threads, **gpu[i]} for i in range(count)]


class PackedTask:
    """The callable of one array task: trains ``jobs`` at once, returns one outcome per run."""

    def __init__(self, script: str) -> None:
        self.script = script  # run.py, as an absolute path: the task may start elsewhere

    def __call__(self, jobs: Sequence[Job]) -> list[JobReturn]:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        environments = run_environments(len(jobs), dict(os.environ))
        started: dict[int, subprocess.Popen] = {}
        with StopSignals() as stop:
            try:
                for job, env in zip(jobs, environments, strict=True):
                    if stop.received is not None:
                        break  # the task is ending: start nothing more
                    if finished(job):
                        log.info("#%d finished before: %s", job.idx, job.shown)
                    else:
                        started[job.idx] = start_process(job, self.script, env)
                self._wait(started, stop)
            except BaseException:  # leave no run behind, training without its task
                self._stop(started, signal.SIGTERM)
                raise
        codes = {idx: process.returncode for idx, process in started.items()}
        # Interrupted: stopped by the (passed-on) signal, or never started. Failed runs stay failed.
        interrupted = [
            job
            for job in jobs
            if (codes.get(job.idx, -1) < 0 or codes[job.idx] in STOPPED_BY) and not finished(job)
        ]
        if stop.received is not None and interrupted:
            stop.forward()  # SIGUSR2: submitit requeues the task; SIGTERM: the task ends
        return [process_outcome(job, codes.get(job.idx, 0)) for job in jobs]

    @staticmethod
    def _wait(started: dict[int, subprocess.Popen], stop: StopSignals) -> None:
        """Wait for every run's process; pass a stop signal on to those still running, once."""
        passed_on = False
        while any(process.poll() is None for process in started.values()):
            if stop.received is not None and not passed_on:
                PackedTask._stop(started, stop.received, wait=False)
                passed_on = True
            time.sleep(POLL_S)

    @staticmethod
    def _stop(started: dict[int, subprocess.Popen], signum: int, wait: bool = True) -> None:
        """Send ``signum`` to the runs still running (each checkpoints and exits); wait for them."""
        for process in started.values():
            if process.poll() is None:
                process.send_signal(signum)
        if wait:
            for process in started.values():
                process.wait()

    def checkpoint(self, jobs: Sequence[Job]) -> submitit.helpers.DelayedSubmission:
        """What submitit requeues after a time limit or preemption: this task again, for the same runs
        (each resumes from its checkpoint, or is skipped if it finished)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, jobs)
