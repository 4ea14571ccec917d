"""Train one stochastic-depth ResNet per Hydra job: ``python run.py [-m] [group=option] [key=value]``.

Rerunning a command resumes its run from the run folder's checkpoint, or skips it if it has finished.
"""

from __future__ import annotations

import os
import signal
import sys


def _stopped_while_starting(_signum: int, _frame: object) -> None:
    print("stopped (Ctrl-C)", file=sys.stderr, flush=True)  # as errors.reported says it, not loaded yet
    os._exit(128 + signal.SIGINT)  # not SystemExit, which an import may catch; nothing is written yet


# Ctrl-C while starting (the imports, the config store): one line, no traceback, until errors.reported
_sigint = signal.signal(signal.SIGINT, _stopped_while_starting)

import contextlib
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sdexp import errors
from sdexp.config import register_configs, validate
from sdexp.signals import stop_with_the_launcher
from sdexp.train import run

register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    with errors.reported(), _stops_the_sweep(hydra_cfg):  # a job's failure: one line and its exit status
        stop_with_the_launcher()
        validate(cfg)
        run(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg)


@contextlib.contextmanager
def _stops_the_sweep(hydra_cfg: DictConfig) -> Iterator[None]:
    """Under Hydra's basic launcher (jobs one after another in this process) a failing job ends the
    sweep: its error says which job it was and that the rest did not start."""
    try:
        yield
    except Exception as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher._target_.endswith(".BasicLauncher"):
            which = f" ({hydra_cfg.job.override_dirname})" if hydra_cfg.job.override_dirname else ""
            exc.add_note(
                f"in job #{hydra_cfg.job.num}{which}; under Hydra's basic "
                "launcher a failing job ends the sweep (hydra/launcher=local runs every job whatever "
                "the others do)"
            )
        raise


if __name__ == "__main__":
    errors.let_hydra_raise()
    with errors.reported():  # composition and launcher errors: one line, exit status 2
        signal.signal(signal.SIGINT, _sigint)  # from here on: Python's KeyboardInterrupt, reported
        main()
