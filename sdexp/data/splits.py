"""The ``dataset`` config group: a data set's train/val/test splits as uint8 tensors, and their loaders.

:func:`build_data` reads a data set (through the cache of decoded tensors), holds out the validation
split and returns the three splits; :func:`build_loaders` wraps them in the fast device-resident loader
or the reference DataLoader path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig

from sdexp.data import sources
from sdexp.data.cache import Decoded, cached
from sdexp.data.loader import DeviceLoader, SplitLoader
from sdexp.data.sources import DatasetError
from sdexp.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from sdexp.data.synthetic import make_synthetic
from sdexp.data.torch_loader import TorchLoader

log = logging.getLogger(__name__)
Loader = SplitLoader  # DeviceLoader (fast) or TorchLoader (reference)


class DatasetName(StrEnum):
    """``dataset.name``: the formats :func:`build_data` reads (see :mod:`sdexp.data.sources`)."""

    synthetic = "synthetic"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    svhn = "svhn"
    cinic10 = "cinic10"
    imagefolder = "imagefolder"


class LoaderKind(StrEnum):
    """``dataset.loader``: ``fast`` (device-resident tensors) or ``torch`` (DataLoader, the reference)."""

    fast = "fast"
    torch = "torch"


@dataclass
class Split:
    """Images (uint8, N×3×H×W) with their labels (int64, N)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass
class ImageSplits:
    train: Split
    val: Split
    test: Split  # may be empty (an ImageFolder tree without test/)
    classes: tuple[str, ...]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units; the std is at least one
        grey level (1/255), so a constant channel does not divide by zero."""
        x = self.train.images.float().div_(255).transpose(0, 1).reshape(3, -1)
        return x.mean(1).tolist(), x.std(1).clamp(min=1 / 255).tolist()


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))


def _decode(cfg: DictConfig) -> Decoded:
    """Decoded splits of a data set on disk, through the cache."""
    root = _expand(cfg.root)
    if cfg.download:
        sources.download(cfg.name, root, cfg.extra)
    if cfg.name in sources.CIFAR:
        files = sources.cifar_files(cfg.name, root)
        read = partial(sources.read_cifar, cfg.name, root)
    elif cfg.name == "svhn":
        files = sources.svhn_files(root, cfg.extra)
        read = partial(sources.read_svhn, root, cfg.extra)
    else:  # cinic10, imagefolder
        val_dir = next((d for d in ("valid", "val") if (root / d).is_dir()), "val")
        dirs = {"train": "train", "val": val_dir, "test": "test"}
        files = sources.image_folder_files(cfg.name, root, dirs)
        read = partial(sources.read_image_folder, cfg.name, root, dirs)
    return cached(_expand(cfg.cache_dir), cfg.name, files, f"extra={cfg.extra}", read)


def _subsample(split: Split, size: int | None, generator: torch.Generator, key: str) -> Split:
    if size is not None and size > len(split) > 0:  # an empty split has its own warning
        log.warning("data: %s=%d but the split has %d images: using all of them", key, size, len(split))
    if size is None or size >= len(split):
        return split
    return split.subset(torch.randperm(len(split), generator=generator)[:size].sort().values)


def build_data(cfg: DictConfig) -> ImageSplits:
    """The train/val/test splits named by the ``dataset`` config.

    Without a validation split of its own, ``val_size`` images of the training set are held out,
    chosen by ``split_seed`` alone (so runs with different training seeds share one split).
    ``train_size``/``test_size`` (null: all) take a seeded random subset.
    """
    name = DatasetName(cfg.name)
    if cfg.extra and name != DatasetName.svhn:  # a warning: runs made so resume
        log.warning("data: dataset.extra=true is not used: it adds SVHN's extra split, and %s has none", name)
    if name == DatasetName.synthetic:
        sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
        splits = {
            split: Split(*make_synthetic(n, seed=cfg.split_seed * 3 + i))
            for i, (split, n) in enumerate(sizes.items())
        }
        return ImageSplits(**splits, classes=SYNTHETIC_CLASSES)
    decoded, classes = _decode(cfg)
    sources.check_classes(cfg.name, cfg.root, classes)  # also for a cache made before the check was
    pool = Split(*decoded["train"])
    generator = torch.Generator().manual_seed(cfg.split_seed)
    if "val" in decoded:
        train, val = pool, Split(*decoded["val"])
    else:
        if cfg.val_size >= len(pool):
            raise DatasetError(
                f"dataset.val_size={cfg.val_size} leaves no training images: {cfg.name} has {len(pool)}"
            )
        order = torch.randperm(len(pool), generator=generator)
        val = pool.subset(order[: cfg.val_size].sort().values)
        train = pool.subset(order[cfg.val_size :].sort().values)
    if "test" in decoded:
        test = Split(*decoded["test"])
    else:
        log.warning("data: %s has no test split; test_error will be empty (NaN)", cfg.name)
        test = Split(pool.images[:0], pool.labels[:0])
    train = _subsample(train, cfg.train_size, generator, "dataset.train_size")
    test = _subsample(test, cfg.test_size, generator, "dataset.test_size")
    return ImageSplits(train, val, test, tuple(classes))


def build_loaders(
    data: ImageSplits,
    cfg: DictConfig,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device,
    seed: int,
    channels_last: bool = False,
) -> dict[str, Loader]:
    """Loaders for the three splits (``dataset.loader``: ``fast`` or ``torch``); only the training
    split is shuffled and augmented. Normalisation uses ``dataset.mean``/``std``, or the training
    split's channel statistics when they are null."""
    mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else data.channel_stats()
    fast = LoaderKind(cfg.loader) == LoaderKind.fast
    kind, extra = (DeviceLoader, {}) if fast else (TorchLoader, {"num_workers": cfg.num_workers})
    common = {"mean": list(mean), "std": list(std), "device": device, "channels_last": channels_last, **extra}
    return {
        "train": kind(
            data.train.images,
            data.train.labels,
            batch_size,
            train=True,
            augment=cfg.augment,
            seed=seed,
            **common,
        ),
        "val": kind(data.val.images, data.val.labels, eval_batch_size, **common),
        "test": kind(data.test.images, data.test.labels, eval_batch_size, **common),
    }
