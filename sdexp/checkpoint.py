"""Checkpoints: the whole training state, RNG streams included, written atomically and read safely."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdexp import runs
from sdexp.errors import SdexpError
from sdexp.files import atomic_write

log = logging.getLogger(__name__)


class CheckpointError(runs.RunFolderError):
    """A checkpoint that cannot be read; the message names the file."""


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The state of every random stream training draws from: Python, NumPy, torch (CPU and CUDA), and
    the named generators (gates, data order and augmentation)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **{key: g.get_state() for key, g in generators.items()},
    }


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back the random streams saved by :func:`capture_rng`."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, g in generators.items():
        g.set_state(state[key])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` atomically: a crash mid-write leaves the previous checkpoint intact."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with ``weights_only=True``; a truncated or corrupt file raises :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's texts advise on unpickling and filing issues: not said here
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is damaged or not an sdexp checkpoint (torch.load raised "
            f"{type(exc).__name__}); nothing was changed: move it away to restart this run from scratch"
        ) from exc


@dataclass
class TrainState:
    """Everything a run needs to continue exactly: the model, the optimizer and its schedule, and the
    random streams (``generators`` by name, besides the global ones)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generators: dict[str, torch.Generator]

    def save(
        self, path: Path, record: runs.RunRecord, epoch_in_progress: dict[str, Any] | None = None
    ) -> None:
        """Write the checkpoint: this state, the run's record, and the state of an epoch stopped
        part-way (None after a finished epoch)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng(self.generators),
            "rows": record.rows,
            "result": record.result,
            "epoch_in_progress": epoch_in_progress,
        }
        save_checkpoint(path, state)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Put back what :meth:`save` wrote (the record and the epoch in progress are the caller's)."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        restore_rng(checkpoint["rng"], self.generators)


def restore_metrics(run_dir: Path) -> None:
    """Write a finished run's ``metrics.csv`` again from its checkpoint if it is missing (moved away
    when damaged, as status.py advises), whether the run's own command or a launcher finds it so. Only
    a warning where it cannot: the run stays finished, and its result stands."""
    checkpoint = run_dir / runs.CHECKPOINT
    if (run_dir / runs.METRICS).exists() or not checkpoint.exists():
        return
    try:
        rows = load_checkpoint(checkpoint).get("rows")
        if not isinstance(rows, list):
            raise CheckpointError(f"{checkpoint} holds no metrics rows: it is not an sdexp checkpoint")
        runs.write_metrics(run_dir, rows)
    except SdexpError as exc:  # a damaged checkpoint, or no room to write
        log.warning("%s cannot be written again: %s", run_dir / runs.METRICS, exc)
        return
    log.info("%s: %s written again from %s", run_dir, runs.METRICS, runs.CHECKPOINT)
