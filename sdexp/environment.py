"""Where and how a run computes: device, precision and memory format, seeding, and provenance."""

from __future__ import annotations

import ctypes
import os
import platform
import random
import subprocess
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from sdexp.wording import count


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


class Precision(StrEnum):
    """``trainer.precision``: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


def speed_settings(tcfg: DictConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (None: fp32) and whether to use channels-last memory: ``precision=auto``
    means bf16 on CUDA, fp32 elsewhere; ``channels_last=null`` means channels-last on CUDA and on the
    CPU (about 20 % faster there for ResNet-110; docs/performance.md), not on other devices."""
    on_cuda = device.type == "cuda"
    precision = Precision(tcfg.precision)
    bf16 = precision == Precision.bf16 or (precision == Precision.auto and on_cuda)
    channels_last = device.type in ("cuda", "cpu") if tcfg.channels_last is None else tcfg.channels_last
    return (torch.bfloat16 if bf16 else None), channels_last


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MAX_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling on 64-bit systems


def keep_freed_host_memory() -> bool:
    """Make glibc keep freed memory in the process for reuse instead of handing it back to the kernel.

    By default glibc unmaps or trims large freed blocks, and the next training step's activations of
    the same size fault in fresh pages: ResNet-110 on the CPU took up to 90,000 page faults and 0.15 s
    of kernel time per step, varying from run to run. With the mmap threshold at glibc's ceiling and
    trimming off, a step takes none. Returns False (and changes nothing) where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


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
    return f"cpu ({platform.machine()}, {count(torch.get_num_threads(), 'thread')})"


def peak_gpu_memory_gib(device: torch.device) -> float | None:
    """The most GPU memory PyTorch's allocator has held in this process (None off CUDA). What other
    processes on the GPU could not use, less the CUDA context (about 0.5 GiB per process)."""
    return torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None


def slurm_cpu_threads() -> int | None:
    """Torch CPU threads for a SLURM job whose config leaves them open: its ``SLURM_CPUS_PER_TASK``.

    SLURM does not pin every job to its cores, and torch would then start a thread per core of the
    node: jobs sharing a node slow each other down many times over. None outside SLURM, or where
    ``OMP_NUM_THREADS`` is set (torch follows it).
    """
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(cpus) if cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ else None


def slurm_job_id() -> str | None:
    """The SLURM job running this process as squeue and scancel name it: ``<array>_<task>`` for a job
    array's task, else the job id; None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
