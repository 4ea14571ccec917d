"""The benchmark scripts run (quick mode) and print their tables; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_train_speed_quick(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "train_speed.py"),
            "--quick",
            "--device=cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| rule | precision |" in proc.stdout
    rows = json.loads(out.read_text())
    assert [r["rule"] for r in rows] == ["off", "linear"]
    assert rows[0]["executed_block_fraction"] == 1.0
    assert 0.5 < rows[1]["executed_block_fraction"] < 1.0
    assert all(r["images_per_s"] > 0 for r in rows)


def test_input_pipeline_quick() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "input_pipeline.py"), "--quick", "--device=cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| device-resident (fast) |" in proc.stdout and "| DataLoader + torchvision |" in proc.stdout


def test_aggregate_quick() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "aggregate.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "20 runs × 10 epochs (200 metric rows) -> 10 groups" in proc.stdout and "| total |" in proc.stdout


def test_sweep_quick() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| local (2 workers) |" in proc.stdout
