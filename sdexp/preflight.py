"""Checks Hydra runs before it creates or writes any folder (``hydra.callbacks`` in conf/config.yaml).

A bad value or an unwritable output folder then ends the command with one line and exit status 2,
before anything is created; values swept with ``-m`` are checked again by each job in run.py.
A sweep folder named by the time (the default, ``multirun/<date>/<time>``) is made new for each
command, so two sweeps started in the same second do not share it.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from sdexp.config import ConfigError, quote_override, validate


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _validate(config: DictConfig) -> None:
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    try:
        validate(task)
    except ConfigError as exc:
        _fail(str(exc))


def _check_writable(config: DictConfig, folder_key: str) -> None:
    folder = Path(OmegaConf.select(config, folder_key))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        _fail(f"cannot write the output folder {folder} ({exc.strerror}): set {folder_key}=...")


def claim_timed_sweep_folder(config: DictConfig) -> None:
    """If ``hydra.sweep.dir`` is named with ``${now:...}``, create it, or ``<name>-2``, ``-3``, ... when
    another sweep already has it, and pass the name on to the jobs as an override.

    Folders named otherwise are the user's: a rerun uses the same folder and resumes the runs there.
    """
    if "${now:" not in str(OmegaConf.to_container(config.hydra.sweep, resolve=False)["dir"]):
        return
    base = folder = Path(str(config.hydra.sweep.dir))
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(2):
            try:
                folder.mkdir()
                break
            except FileExistsError:
                folder = base.with_name(f"{base.name}-{n}")
    except OSError as exc:
        _fail(f"cannot write the output folder {folder} ({exc.strerror}): set hydra.sweep.dir=...")
    with read_write(config.hydra):
        config.hydra.sweep.dir = str(folder)
        config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quote_override(str(folder))}")


class Preflight(Callback):
    """Validate the config and check the run (or sweep) folder is writable."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _validate(config)
        _check_writable(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _validate(config)
        claim_timed_sweep_folder(config)
        _check_writable(config, "hydra.sweep.dir")
