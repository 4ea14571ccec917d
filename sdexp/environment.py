"""Where and how a run computes: device, precision and memory format, seeding, and provenance."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, use only deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def speed_settings(tcfg: DictConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (None: fp32) and whether to use channels-last memory: ``precision=auto``
    means bf16 on CUDA, fp32 elsewhere; ``channels_last=null`` means channels-last on CUDA and on the
    CPU (about 20 % faster there for ResNet-110; docs/performance.md), not on other devices."""
    on_cuda = device.type == "cuda"
    bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto" and on_cuda)
    channels_last = device.type in ("cuda", "cpu") if tcfg.channels_last is None else tcfg.channels_last
    return (torch.bfloat16 if bf16 else None), channels_last


def git_revision() -> str | None:
    """The project's git commit (with ``-dirty`` if it has local changes), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def slurm_job_id() -> str | None:
    """The SLURM job running this process as squeue and scancel name it: ``<array>_<task>`` for a job
    array's task, else the job id; None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
