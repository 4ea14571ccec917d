"""The local parallel launcher (hydra/launcher=local): a queue of slots, one job per GPU or CPU worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hydra_plugins.sdexp_launcher.local_launcher import CONSOLE_LOG, slot_environments, visible_gpus
from tests.conftest import ROOT, TINY, change_saved_epochs


def sweep(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    launcher = ["hydra/launcher=local", "hydra.launcher.cpu_workers=2", "hydra.sweep.dir=sweep"]
    command = [sys.executable, str(ROOT / "run.py"), "-m", *launcher, *TINY, *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_jobs_run_two_at_a_time_and_a_rerun_skips_them(tmp_path: Path) -> None:
    proc = sweep(tmp_path, "seed=0,1", "stochastic_depth=off,linear")
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr + proc.stdout
    assert log.index("#1 start") < log.index("#0 done")  # the second slot started before the first ended
    assert "4 jobs: 4 new, 0 resumed, 0 skipped (finished before); 0 failed" in log
    results = sorted((tmp_path / "sweep").glob("*/result.json"))
    assert len(results) == 4
    for path in results:
        result = json.loads(path.read_text())
        assert result["status"] == "completed"
        assert result["device_name"].endswith("1 threads)")  # 2 cores shared by 2 workers
        assert (path.parent / CONSOLE_LOG).is_file()
    names = [p.parent.name for p in results]  # named from each job's overrides
    for seed in (0, 1):
        for rule in ("off", "linear"):
            assert sum(f"seed={seed},stochastic_depth={rule}" in n for n in names) == 1
    again = sweep(tmp_path, "seed=0,1", "stochastic_depth=off,linear")
    assert again.returncode == 0, again.stderr
    assert "4 jobs: 0 new, 0 resumed, 4 skipped" in again.stderr + again.stdout


@pytest.mark.slow
def test_a_folder_holding_another_config_is_refused_without_starting_the_job(tmp_path: Path) -> None:
    assert sweep(tmp_path, "seed=0").returncode == 0
    [run_dir] = [p.parent for p in (tmp_path / "sweep").glob("*/result.json")]
    change_saved_epochs(run_dir, 3)  # 3 epochs then, 2 now
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = sweep(tmp_path, "seed=0")
    assert again.returncode != 0
    log = again.stderr + again.stdout
    summary = (
        "1 jobs: 0 new, 0 resumed, 0 skipped (finished before), "
        "1 refused (another config or a damaged file in the folder)"
    )
    assert f"{summary}; 1 failed" in log
    assert "holds a run with another config (trainer.epochs: 3 -> 2)" in log.split("failed: ")[-1]
    assert "#0 start" not in log
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # console.log too


def test_one_slot_per_gpu_or_cpu_worker() -> None:
    assert slot_environments(["0", "3"], cpu_workers=4, cores=16) == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "3"},
    ]
    cpu = slot_environments([], cpu_workers=3, cores=16)
    assert cpu == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "5"}] * 3


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


@pytest.mark.slow
def test_sweeps_named_by_the_time_do_not_share_a_folder(tmp_path: Path) -> None:
    # Both sweeps start in the same year, as two default-named sweeps may start in the same second.
    command = [sys.executable, str(ROOT / "run.py"), "-m", *TINY, "trainer.epochs=1",
               "hydra.sweep.dir=out/${now:%Y}"]  # fmt: skip
    for _ in range(2):
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    year = time.strftime("%Y")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [year, f"{year}-2"]
    for sweep_dir in (tmp_path / "out").iterdir():
        assert len(list(sweep_dir.glob("*/result.json"))) == 1
