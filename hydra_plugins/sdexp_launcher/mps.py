"""NVIDIA MPS for a sweep that runs several jobs on each GPU (``hydra.launcher.mps``).

Without MPS, processes on one GPU take turns in time slices; under the MPS daemon their kernels run
side by side. The daemon is the sweep's own: its pipe and log folders lie under the sweep folder
(``.mps/``), its jobs reach it through the same two environment variables, and it is stopped when the
sweep ends, also on Ctrl-C or an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
CONTROL = "nvidia-cuda-mps-control"
CHOICES = ("auto", True, False)


def wanted(mps: str | bool, runs_per_gpu: int, gpus: list[str]) -> bool:
    """Whether to start MPS: ``auto`` where GPUs are shared (k > 1) and the control program exists;
    ``true`` wherever there are GPUs; ``false`` never."""
    if not gpus and mps is True:
        log.info("hydra.launcher.mps=true: no GPU here, so no MPS (the jobs run on CPU workers)")
    if not gpus or mps is False:
        return False
    return mps is True or (runs_per_gpu > 1 and shutil.which(CONTROL) is not None)


@contextlib.contextmanager
def daemon(sweep_dir: Path, start: bool) -> Iterator[dict[str, str]]:
    """Run an MPS control daemon for the sweep in ``sweep_dir`` if ``start``; yield the environment
    its jobs need (empty without MPS, also when the daemon cannot start: the jobs then share the GPUs
    in time slices, and one log line says so)."""
    if not start:
        yield {}
        return
    env = {
        "CUDA_MPS_PIPE_DIRECTORY": str(Path(sweep_dir, ".mps", "pipe").absolute()),
        "CUDA_MPS_LOG_DIRECTORY": str(Path(sweep_dir, ".mps", "log").absolute()),
    }
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    problem = _control(["-d"], env)
    if problem:
        log.warning("MPS could not start (%s): the jobs share each GPU without it", problem)
        yield {}
        return
    log.info("MPS daemon started for this sweep (pipe %s)", env["CUDA_MPS_PIPE_DIRECTORY"])
    try:
        yield env
    finally:
        problem = _control([], env, stdin="quit\n")
        if problem:
            log.warning("MPS daemon did not stop (%s): stop it with echo quit | %s", problem, CONTROL)
        else:
            log.info("MPS daemon stopped")


def _control(args: list[str], env: dict[str, str], stdin: str | None = None) -> str | None:
    """Run the control program; None if it succeeded, else what went wrong."""
    try:
        proc = subprocess.run(
            [CONTROL, *args],
            input=stdin,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{CONTROL}: {exc}"
    if proc.returncode != 0:
        return f"{CONTROL} {' '.join(args)} exited with status {proc.returncode}: {proc.stderr.strip()}"
    return None
