"""Shared test settings: a tiny configuration that trains in seconds, run.py as a command, and a run
folder's config edited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from sdexp import runs

ROOT = Path(__file__).resolve().parents[1]

# A ResNet-20 with narrow widths on a few hundred synthetic images: two epochs take seconds.
TINY = [
    "model=resnet20",
    "dataset=synthetic",
    "model.widths=[4,8,16]",
    "model.stem_width=4",
    "dataset.train_size=256",
    "dataset.val_size=64",
    "dataset.test_size=64",
    "trainer.epochs=2",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "trainer.device=cpu",
    "trainer.progress=false",
]


def ctrl_c_default() -> None:
    """``preexec_fn`` of a command a test sends SIGINT to: Python turns SIGINT into KeyboardInterrupt
    only where it was not ignored, and a test run started in the background (``cmd &``) ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def change_saved_epochs(run_dir: Path, epochs: int) -> None:
    """Rewrite ``trainer.epochs`` in the run's saved config, as if conf/ had changed since the run."""
    saved = runs.read_config(run_dir)
    saved["trainer"]["epochs"] = epochs
    (run_dir / runs.CONFIG).write_text(yaml.safe_dump(saved))


def run_command(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``command`` in ``cwd`` as a user types it: without the variables that ask for tracebacks."""
    env = {k: v for k, v in os.environ.items() if k not in ("SDEXP_TRACEBACK", "HYDRA_FULL_ERROR")}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def run_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in ``cwd`` (see :func:`run_command`)."""
    return run_command([sys.executable, str(ROOT / "run.py"), *args], cwd)
