"""Where a run's per-epoch metrics go besides ``metrics.csv`` (``logger`` config group).

- ``csv``: ``metrics.csv`` and ``result.json`` only; they are written whatever the logger.
- ``tensorboard``: event files in ``<run>/tensorboard/``: every metrics.csv column per epoch, and at
  the end the config as hyperparameters with the final errors, so that ``tensorboard --logdir
  <sweep>`` compares a sweep's runs.
- ``wandb``: a Weights & Biases run (offline unless ``logger.mode`` says otherwise), named after the
  run folder, grouped by its sweep folder, with the config; its id comes from the folder, so a
  resumed run continues the same W&B run.

A resumed run continues its curves: the logger writes each epoch after its checkpoint, and on a
resume TensorBoard writes every checkpointed epoch again, replacing what is there (``purge_step``: what
a crash left, or a gap while the run logged elsewhere), and W&B the last one (it ignores a step it
already has).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from sdexp.runs import FINAL_ERRORS, METRIC_COLUMNS, flatten

TENSORBOARD_DIR = "tensorboard"


class LoggerName(StrEnum):
    """``logger.name``."""

    csv = "csv"
    tensorboard = "tensorboard"
    wandb = "wandb"


class WandbMode(StrEnum):
    """``logger.mode``: where a W&B run goes (``wandb.init``'s mode; offline: ``wandb sync`` later)."""

    offline = "offline"
    online = "online"
    disabled = "disabled"


def missing_package(name: str) -> str | None:
    """The package ``logger=name`` needs and this Python lacks (also its pip extra), else None."""
    needed = {LoggerName.tensorboard: "tensorboard", LoggerName.wandb: "wandb"}.get(LoggerName(name))
    return needed if needed and importlib.util.find_spec(needed) is None else None


class Logger(Protocol):
    def log_epoch(self, row: dict[str, Any]) -> None: ...
    def log_result(self, result: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class CsvLogger:
    """Nothing beyond metrics.csv and result.json, which the run record writes."""

    def log_epoch(self, row: dict[str, Any]) -> None:
        pass

    def log_result(self, result: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """A metrics row's values to plot: every column but the epoch, without the NaNs of skipped evaluations."""
    return {k: row[k] for k in METRIC_COLUMNS if k != "epoch" and not math.isnan(row[k])}


def _hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config as flat ``key: value`` pairs of the types hyperparameter tables take."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()}


class TensorBoardLogger:
    def __init__(self, cfg: DictConfig, run_dir: Path, rows: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # every epoch so far written again, replacing what is there: also those of a resume from a run
        # that logged elsewhere (the logger may change when a run resumes)
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=1)
        self.hparams = _hparams(cfg)
        for row in rows:
            self.log_epoch(row)

    def log_epoch(self, row: dict[str, Any]) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, global_step=row["epoch"])
        self.writer.flush()

    def log_result(self, result: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"final/{k}": result[k] for k in FINAL_ERRORS if isinstance(result.get(k), int | float)}
        # in this run's own folder (add_hparams would make a new one), so the HParams tab lists the run
        for summary in hparams(self.hparams, metrics):
            self.writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=result["epochs_completed"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, cfg: DictConfig, run_dir: Path, rows: list[dict[str, Any]]) -> None:
        import wandb

        run_dir = run_dir.absolute()
        self.run = wandb.init(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            mode=cfg.logger.mode,
            dir=str(run_dir),
            id=hashlib.sha1(str(run_dir).encode()).hexdigest()[:16],  # the same folder, the same W&B run
            name=run_dir.name,
            group=run_dir.parent.name,
            config=_hparams(cfg),
            resume="allow",
        )
        if rows:
            self.log_epoch(rows[-1])

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.run.log(_scalars(row), step=row["epoch"])

    def log_result(self, result: dict[str, Any]) -> None:
        self.run.summary.update({k: result[k] for k in FINAL_ERRORS if k in result})

    def close(self) -> None:
        self.run.finish()


def build_logger(cfg: DictConfig, run_dir: Path, rows: list[dict[str, Any]]) -> Logger:
    """The configured logger for the run in ``run_dir`` whose epochs so far are ``rows``."""
    match LoggerName(cfg.logger.name):
        case LoggerName.tensorboard:
            return TensorBoardLogger(cfg, run_dir, rows)
        case LoggerName.wandb:
            return WandbLogger(cfg, run_dir, rows)
    return CsvLogger()
