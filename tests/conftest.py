"""Shared helpers: compose configs the way run.py does, and a tiny setting that trains in seconds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from sdexp.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# A ResNet-20 with narrow widths on a few hundred synthetic images: two epochs take seconds.
TINY = [
    "model=resnet20",
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


@pytest.fixture(scope="session", autouse=True)
def _schema() -> None:
    register_configs()


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config run.py would get for these command-line overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
