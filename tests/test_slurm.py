"""Sweeps through the ``slurm`` launcher preset against a real SLURM cluster (tests/slurm/start.sh).

Skipped where no cluster answers (a laptop); CI starts one and sets SDEXP_REQUIRE_SLURM=1, which turns
the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


if not _cluster_up():
    if os.environ.get("SDEXP_REQUIRE_SLURM") == "1":
        raise RuntimeError("SDEXP_REQUIRE_SLURM=1 but no SLURM cluster answers (tests/slurm/start.sh)")
    pytest.skip(
        "no SLURM cluster answers here; tests/slurm/start.sh starts one (as root)", allow_module_level=True
    )

# The test cluster has no GPUs (a gpus_per_node=1 request would be refused) and a few cores.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5"]  # fmt: skip


def test_two_by_two_sweep_completes_and_records_job_ids(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "run.py"), "-m", *SLURM, *TINY, "seed=0,1",
               "stochastic_depth=off,linear", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/result.json")]
    assert len(results) == 4
    assert all(r["status"] == "completed" for r in results)
    job_ids = {r["slurm_job_id"] for r in results}
    assert len(job_ids) == 4 and None not in job_ids
    assert sorted((r["seed"], r["stochastic_depth"]) for r in results) == [
        (0, "linear"), (0, "off"), (1, "linear"), (1, "off")
    ]  # fmt: skip
