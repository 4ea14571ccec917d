"""``hydra/launcher=local``: a sweep's jobs as separate processes from a queue, k jobs per GPU.

Each job is ``python run.py <its overrides> hydra.run.dir=<sweep dir>/<subdir>``, started when a slot
frees: ``runs_per_gpu`` slots per GPU (the job sees only that GPU through ``CUDA_VISIBLE_DEVICES``;
with k > 1 under an MPS daemon of the sweep's own where there is one, :mod:`.mps`) or, without GPUs,
``cpu_workers`` slots that divide the cores (``OMP_NUM_THREADS``). A job's console output goes to
``console.log`` in its run folder. A failing job does not stop the others; the sweep then ends with an
error naming the failed jobs. Runs already finished are not started again, nor runs whose folder holds
another config (they count as failed); the summary counts both. Ctrl-C, SIGTERM or SIGHUP stops the
sweep: the running jobs checkpoint, and the same command resumes it.
"""

from __future__ import annotations

import inspect
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from hydra.core.utils import JobReturn, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.sdexp_launcher import mps as mps_daemon
from hydra_plugins.sdexp_launcher.jobs import (
    STOPPED_BY,
    Job,
    check_count,
    end_sweep,
    every_run,
    finished,
    job_return,
    plan_jobs,
    process_outcome,
    refuse_busy,
    settled,
    start_process,
)
from sdexp.errors import SdexpError, Terminated
from sdexp.files import describe
from sdexp.wording import count

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set (with a warning where torch sees
    fewer GPUs: its jobs would then train on the CPU, each with every core), else every device torch
    sees."""
    import torch

    there = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(there)]
    gpus = [g.strip() for g in listed.split(",") if g.strip()]
    if all(g.isdigit() for g in gpus) and len(gpus) > there:  # MIG or GPU UUIDs: CUDA counts otherwise
        log.warning(
            "CUDA_VISIBLE_DEVICES=%s names %s, but torch sees %s: unset it (or set it to '') to run CPU "
            "workers", listed, count(len(gpus), "GPU"), count(there, "GPU"),
        )  # fmt: skip
    return gpus


def slot_environments(
    gpus: Sequence[str], cpu_workers: int, cores: int, runs_per_gpu: int = 1, jobs: int | None = None
) -> list[dict[str, str]]:
    """The environment of each parallel slot: ``runs_per_gpu`` per GPU (GPU by GPU in turn, so that
    the first jobs spread over the GPUs), else ``cpu_workers`` sharing the cores, or one per job where
    a sweep has fewer ``jobs`` (no core left idle for a worker that would get no job)."""
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(g)} for _ in range(runs_per_gpu) for g in gpus]
    workers = max(1, min(cpu_workers, jobs or cpu_workers))
    threads = str(max(1, cores // workers))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads} for _ in range(workers)]


class LocalLauncher(Launcher):
    def __init__(
        self,
        gpus: Sequence[int | str] | None = None,  # in conf/hydra/launcher/local.yaml's order
        runs_per_gpu: int = 1,
        mps: str | bool = "auto",
        cpu_workers: int = 2,
        **unknown: object,  # added with +hydra.launcher.<key>=...
    ) -> None:
        # Checked here, before Hydra writes anything into the sweep folder (multirun.yaml).
        if unknown:
            settings = [name for name in inspect.signature(LocalLauncher).parameters if name != "unknown"]
            raise SdexpError(
                f"hydra.launcher.{next(iter(unknown))} is not a config key; hydra.launcher has "
                f"{', '.join(settings)}"
            )
        check_count("cpu_workers", cpu_workers, 1)
        check_count("runs_per_gpu", runs_per_gpu, 1)
        if mps not in mps_daemon.CHOICES:
            raise SdexpError(f"hydra.launcher.mps={mps} is not allowed: auto, true or false")
        if gpus is not None:
            if (
                not isinstance(gpus, Sequence)
                or isinstance(gpus, str)
                or not all(str(g).isdigit() for g in gpus)
            ):
                raise SdexpError(f"hydra.launcher.gpus={gpus} is not allowed: a list of GPU ids, e.g. [0,2]")
            if len(set(map(str, gpus))) < len(gpus):
                raise SdexpError(
                    f"hydra.launcher.gpus={gpus} lists a GPU twice: list each once, and set "
                    "hydra.launcher.runs_per_gpu for several jobs on one GPU"
                )
            unknown = [str(g) for g in gpus if str(g) not in visible_gpus()]
            if unknown:
                raise SdexpError(
                    f"hydra.launcher.gpus: GPU {', '.join(unknown)} is not visible here "
                    f"(visible: {', '.join(visible_gpus()) or 'none'})"
                )
        self.gpus = None if gpus is None else [str(g) for g in gpus]
        self.cpu_workers, self.runs_per_gpu = cpu_workers, runs_per_gpu
        self.mps = mps if mps == "auto" else bool(mps)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        gpus = visible_gpus() if self.gpus is None else self.gpus
        jobs = refuse_busy(plan_jobs(self.config, self.hydra_context, job_overrides, initial_job_idx))
        to_start = sum(job.state in ("new", "resumed") for job in jobs)  # not those finished or refused
        envs = slot_environments(gpus, self.cpu_workers, os.cpu_count() or 1, self.runs_per_gpu, to_start)
        kind = (
            f"{len(gpus)} GPU(s), {self.runs_per_gpu} per GPU"
            if gpus
            else f"{count(len(envs), 'CPU worker')}, {count(int(envs[0]['OMP_NUM_THREADS']), 'thread')} each"
        )
        sweep_dir, how_many = self.config.hydra.sweep.dir, count(len(jobs), "run")
        log.info("local launcher: %s on %s, sweep folder %s%s", how_many, kind, sweep_dir, every_run(jobs))
        start_mps = mps_daemon.wanted(self.mps, self.runs_per_gpu, gpus)
        with mps_daemon.daemon(sweep_dir, start_mps) as mps_env:
            slots: queue.Queue[dict[str, str]] = queue.Queue()
            for env in envs:
                slots.put({**env, **mps_env})
            return self._run_all(jobs, slots)

    def _run_all(self, jobs: Sequence[Job], slots: queue.Queue[dict[str, str]]) -> Sequence[JobReturn]:
        """Run ``jobs``, each in a free slot's environment, as many at once as there are slots.

        The jobs run in sessions of their own, so Ctrl-C, SIGTERM and SIGHUP (a closed terminal) reach
        this process alone, whoever sends them, and it passes each on (SIGHUP as SIGTERM): at the first,
        no more jobs start and the running ones checkpoint and stop; after a Ctrl-C, a second one stops
        them at once. A signal ignored when the sweep started (``nohup``, ``cmd &``) stays ignored. Any
        other failure here also starts no more jobs, and waits for the running ones.
        """
        stopping = threading.Event()
        running: set[subprocess.Popen] = set()
        lock = threading.Lock()  # the check for stopping and the start go together (never in a handler)

        def run(job: Job) -> JobReturn | None:
            outcome = settled(job)
            if outcome is not None:
                return outcome
            env = slots.get()
            try:
                with lock:
                    if stopping.is_set():
                        return None
                    try:
                        process = start_process(job, sys.argv[0], env, own_session=True)
                    except OSError as exc:  # e.g. its console.log cannot be written
                        log.error("#%d cannot start: %s", job.idx, describe(exc))
                        return job_return(job, f"cannot start ({describe(exc)})")
                    running.add(process)
                code = process.wait()
                running.discard(process)
                if stopping.is_set() and code in STOPPED_BY:
                    if not finished(job):  # a rerun resumes it
                        log.info("#%d stopped: %s", job.idx, job.shown)
                        return None
                    code = 0  # the signal came as the run ended: it completed
                return process_outcome(job, code)
            finally:
                slots.put(env)

        def pass_on(signum: int, _frame: FrameType | None = None) -> None:
            for process in tuple(running):
                process.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

        def stop(signum: int, _frame: FrameType | None) -> None:
            for sig in previous:
                signal.signal(sig, pass_on)  # from now on every signal goes to the jobs
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

        pool = ThreadPoolExecutor(max_workers=slots.qsize())
        previous = {
            sig: signal.getsignal(sig)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            if signal.getsignal(sig) != signal.SIG_IGN
        }
        try:
            for sig in previous:
                signal.signal(sig, stop)
            futures = [pool.submit(run, job) for job in jobs]
            results = [future.result() for future in futures]
        except BaseException as exc:
            for sig in previous:
                signal.signal(sig, pass_on)
            with lock:
                stopping.set()
            if isinstance(exc, KeyboardInterrupt | Terminated):
                pass_on(signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
                why = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
                log.warning("%s: starting no more jobs; the running ones checkpoint and stop", why)
                exc.add_note("run the same command again to resume the sweep")
            else:
                log.error("the sweep failed (%s): starting no more jobs; waiting for the running ones", exc)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        pool.shutdown()
        return end_sweep("local launcher", jobs, results)
