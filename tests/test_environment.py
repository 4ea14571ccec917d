"""Process settings for speed: glibc keeps freed memory, so repeated activations fault in no pages;
a SLURM job uses as many CPU threads as it has cores."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from sdexp.environment import slurm_cpu_threads

# 40 activations of 8 MiB (stage 1 of ResNet-110 at batch 128) made, written and freed, 5 times over
FAULTS_PER_CYCLE = """
import resource, sys, torch
from sdexp.environment import keep_freed_host_memory
if sys.argv[1] == "keep":
    assert keep_freed_host_memory()
def cycle():
    live = [torch.empty(2 << 20).fill_(1.0) for _ in range(40)]
    del live
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_cycle(mode: str) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_CYCLE, mode], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout)


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_kept_memory_is_reused_without_page_faults() -> None:
    pages = 40 * (8 << 20) // 4096
    default, kept = faults_per_cycle("default"), faults_per_cycle("keep")
    # measured over 20 processes each (the heap's layout varies with address-space randomisation):
    # default 20-100 % of the pages every cycle, kept 0.5-2.5 %
    assert default > pages / 10  # glibc hands much of it back and faults it in again
    assert kept < pages / 20  # the memory is reused: at most a few activations are faulted in again


def test_a_slurm_job_uses_its_cpus_per_task_unless_omp_num_threads_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert slurm_cpu_threads() is None  # not in SLURM: torch's default
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert slurm_cpu_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert slurm_cpu_threads() is None
