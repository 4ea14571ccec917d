"""Shared test settings: a tiny configuration that trains in seconds."""

from __future__ import annotations

from pathlib import Path

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
