"""``hydra/launcher=local``: a sweep's jobs as separate processes from a queue, one job per GPU.

Each job is ``python run.py <its overrides> hydra.run.dir=<sweep dir>/<subdir>``, started when a slot
frees: one slot per GPU (the job sees only that GPU through ``CUDA_VISIBLE_DEVICES``) or, without GPUs,
``cpu_workers`` slots that divide the cores (``OMP_NUM_THREADS``). A job's console output goes to
``console.log`` in its run folder. A failing job does not stop the others; the sweep then ends with an
error naming the failed jobs. Jobs already finished are skipped by the job itself (sdexp resumes or
skips from the run folder); the summary counts them.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)
CONSOLE_LOG = "console.log"


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def slot_environments(gpus: Sequence[str], cpu_workers: int, cores: int) -> list[dict[str, str]]:
    """The environment of each parallel slot: one per GPU, else ``cpu_workers`` sharing the cores."""
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(g)} for g in gpus]
    threads = str(max(1, cores // cpu_workers))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads} for _ in range(cpu_workers)]


def run_state(run_dir: Path) -> str:
    """``skipped`` (finished), ``resumed`` (has a checkpoint) or ``new``: what the job will do."""
    from sdexp import runs

    previous = runs.previous_result(run_dir)
    if previous is not None and previous.get("status") in runs.FINISHED:
        return "skipped"
    return "resumed" if (run_dir / runs.CHECKPOINT).exists() else "new"


class LocalLauncher(Launcher):
    def __init__(self, gpus: Sequence[int | str] | None = None, cpu_workers: int = 2) -> None:
        self.gpus = None if gpus is None else [str(g) for g in gpus]
        self.cpu_workers = cpu_workers
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if self.cpu_workers < 1:
            raise ValueError(f"hydra.launcher.cpu_workers={self.cpu_workers}: must be >= 1")
        gpus = visible_gpus() if self.gpus is None else self.gpus
        slots: queue.Queue[dict[str, str]] = queue.Queue()
        for env in slot_environments(gpus, self.cpu_workers, os.cpu_count() or 1):
            slots.put(env)
        jobs = []
        for idx, overrides in enumerate(job_overrides):
            sweep = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            run_dir = Path(str(sweep.hydra.sweep.dir)) / str(sweep.hydra.sweep.subdir)
            jobs.append((initial_job_idx + idx, list(overrides), run_dir, run_state(run_dir)))
        kind = f"{len(gpus)} GPU(s)" if gpus else f"{self.cpu_workers} CPU workers"
        log.info(
            "local launcher: %d jobs on %s, sweep folder %s", len(jobs), kind, self.config.hydra.sweep.dir
        )

        def run(job: tuple[int, list[str], Path, str]) -> JobReturn:
            idx, overrides, run_dir, _ = job
            env = slots.get()
            try:
                return self._run_job(idx, overrides, run_dir, env)
            finally:
                slots.put(env)

        with ThreadPoolExecutor(max_workers=slots.qsize()) as pool:
            results = list(pool.map(run, jobs))
        states = [state for *_, state in jobs]
        failed = [r for r in results if r.status == JobStatus.FAILED]
        log.info(
            "local launcher: %d jobs: %d new, %d resumed, %d skipped (finished before); %d failed%s",
            len(jobs), states.count("new"), states.count("resumed"), states.count("skipped"), len(failed),
            "".join(f"\n  failed: {r.working_dir}" for r in failed),
        )  # fmt: skip
        return results

    def _run_job(self, idx: int, overrides: list[str], run_dir: Path, env: dict[str, str]) -> JobReturn:
        shown = " ".join(filter_overrides(overrides))
        log.info("#%d start (%s): %s", idx, ", ".join(f"{k}={v}" for k, v in env.items()), shown)
        run_dir.mkdir(parents=True, exist_ok=True)
        quoted = str(run_dir).replace("\\", "\\\\").replace("'", "\\'")  # Hydra's override grammar
        command = [sys.executable, sys.argv[0], *overrides, f"hydra.run.dir='{quoted}'"]
        with open(run_dir / CONSOLE_LOG, "a", encoding="utf-8") as console:
            code = subprocess.run(
                command, env={**os.environ, **env}, stdout=console, stderr=subprocess.STDOUT
            ).returncode
        result = JobReturn(overrides=overrides, working_dir=str(run_dir), task_name=str(idx))
        if code == 0:
            result.status, result.return_value = JobStatus.COMPLETED, code
            log.info("#%d done: %s", idx, shown)
        else:
            result.status = JobStatus.FAILED
            result._return_value = RuntimeError(
                f"job #{idx} ({shown}) exited with status {code}; see {run_dir / CONSOLE_LOG}"
            )
            log.error("#%d failed with status %d: %s (see %s)", idx, code, shown, run_dir / CONSOLE_LOG)
        return result
