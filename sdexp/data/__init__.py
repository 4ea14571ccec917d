"""Data sets as uint8 tensors (``dataset`` config group) and the loaders that feed them to training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from sdexp.data.loader import DeviceLoader
from sdexp.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from sdexp.data.synthetic import make_synthetic


@dataclass
class Split:
    """Images (uint8, N×3×H×W) with their labels (int64, N)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageSplits:
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units."""
        x = self.train.images.float().div_(255).transpose(0, 1).reshape(3, -1)
        return x.mean(1).tolist(), x.std(1).tolist()


def build_data(cfg: DictConfig) -> ImageSplits:
    """Read (or make) the train/val/test splits named by the ``dataset`` config."""
    if cfg.name == "synthetic":
        sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
        splits = {
            name: Split(*make_synthetic(n, seed=cfg.split_seed * 3 + i))
            for i, (name, n) in enumerate(sizes.items())
        }
        return ImageSplits(**splits, classes=SYNTHETIC_CLASSES)
    raise ValueError(f"dataset.name={cfg.name!r} is not known; allowed: synthetic")


def build_loaders(
    data: ImageSplits,
    cfg: DictConfig,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device,
    seed: int,
    channels_last: bool = False,
) -> dict[str, DeviceLoader]:
    """Device-resident loaders for the three splits; only the training split is augmented."""
    mean, std = data.channel_stats()
    common = {"mean": mean, "std": std, "device": device, "channels_last": channels_last}
    return {
        "train": DeviceLoader(
            data.train.images,
            data.train.labels,
            batch_size,
            train=True,
            augment=cfg.augment,
            seed=seed,
            **common,
        ),
        "val": DeviceLoader(data.val.images, data.val.labels, eval_batch_size, **common),
        "test": DeviceLoader(data.test.images, data.test.labels, eval_batch_size, **common),
    }
