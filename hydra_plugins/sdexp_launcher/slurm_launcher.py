"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM job array, made fit for long sweeps.

Differences from ``submitit_slurm``, whose settings and job code it keeps:

- runs already finished (same config) are not submitted again, so rerunning a sweep costs no queue time;
- the sweep waits for every job: a failed or cancelled job (``scancel``) does not end it early, and the
  others keep being watched to their end;
- it ends with the summary of the local launcher: how many jobs were new, resumed, skipped and failed,
  and for each failed one its SLURM state and log file.

A job that hits its time limit or is preempted gets SIGUSR2 ``signal_delay_s`` before; sdexp writes a
mid-epoch checkpoint and submitit requeues the job (at most ``max_num_timeout`` times), which resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from hydra_plugins.sdexp_launcher.jobs import Job, job_return, log_summary, plan_jobs

if TYPE_CHECKING:
    import submitit

log = logging.getLogger(__name__)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        jobs = plan_jobs(self.config, self.hydra_context, job_overrides, initial_job_idx)
        results = {job.idx: job_return(job) for job in jobs if job.state == "skipped"}
        todo = [job for job in jobs if job.state != "skipped"]
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(
            "slurm launcher: %d jobs, %d to submit, sweep folder %s",
            len(jobs), len(todo), self.config.hydra.sweep.dir,
        )  # fmt: skip
        if todo:
            arguments = [
                (job.overrides, "hydra.sweep.dir", job.idx, f"job_id_for_{job.idx}", Singleton.get_state())
                for job in todo
            ]
            submitted = self._executor().map_array(self, *zip(*arguments, strict=True))
            for job, handle in zip(todo, submitted, strict=True):
                log.info("#%d SLURM job %s (%s): %s", job.idx, handle.job_id, job.state, job.shown)
            for job, handle in zip(todo, submitted, strict=True):
                results[job.idx] = _wait(job, handle)
        ordered = [results[job.idx] for job in jobs]
        log_summary("slurm launcher", jobs, ordered)
        return ordered

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


def _wait(job: Job, handle: submitit.Job) -> JobReturn:
    """The job's outcome once SLURM is done with it (requeues included)."""
    try:
        result = handle.results()[0]
    except Exception:  # submitit: the job ended without a result (failed, cancelled, timed out)
        state = handle.get_info().get("State", handle.state)  # fresh from sacct, not the cached state
        log.error("#%d failed: SLURM state %s", job.idx, state)
        return job_return(job, f"SLURM job {handle.job_id} ended {state}; see {handle.paths.stderr}")
    log.info("#%d %s: %s", job.idx, result.status.name.lower(), job.shown)
    return result
