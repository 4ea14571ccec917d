"""The run folder: the one place that knows its file names and formats.

A run folder holds Hydra's ``.hydra/`` (config.yaml, overrides.yaml, hydra.yaml), ``metrics.csv`` (one
row per epoch), ``result.json`` (status and summary) and ``train.log``. Every file is written
atomically (temp file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

METRICS = "metrics.csv"
RESULT = "result.json"
LOG = "train.log"
CONFIG = Path(".hydra") / "config.yaml"

METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_error",
    "val_error",
    "test_error",
    "epoch_time_s",
    "images_per_s",
    "executed_block_fraction",
)
STATUSES = ("running", "completed", "failed")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write all epoch rows so far to ``metrics.csv`` (columns: :data:`METRIC_COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / METRICS, buf.getvalue())


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    """Write ``result.json``; its ``status`` must be one of :data:`STATUSES`."""
    if result.get("status") not in STATUSES:
        raise ValueError(f"result status {result.get('status')!r} not in {STATUSES}")
    atomic_write_text(run_dir / RESULT, json.dumps(result, indent=2, sort_keys=True) + "\n")


def read_result(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RESULT).read_text(encoding="utf-8"))


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` as floats (``epoch`` as int)."""
    with open(Path(run_dir) / METRICS, newline="", encoding="utf-8") as f:
        return [
            {k: int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in csv.DictReader(f)
        ]


def read_config(run_dir: Path) -> DictConfig:
    """The composed config Hydra saved for the run."""
    return OmegaConf.load(Path(run_dir) / CONFIG)
