"""Checks Hydra runs before it creates or writes any folder (``hydra.callbacks`` in conf/config.yaml).

A bad value or an unwritable output folder then ends the command with one line and exit status 2,
before anything is created; values swept with ``-m`` are checked again by each job in run.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sdexp.config import ConfigError, validate


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _check(config: DictConfig, folder_key: str) -> None:
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    try:
        validate(task)
    except ConfigError as exc:
        _fail(str(exc))
    folder = Path(OmegaConf.select(config, folder_key))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        _fail(f"cannot write the output folder {folder} ({exc.strerror}): set {folder_key}=...")


class Preflight(Callback):
    """Validate the config and check the run (or sweep) folder is writable."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.sweep.dir")
