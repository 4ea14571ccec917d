"""The reference input path (``dataset.loader=torch``): ``torch.utils.data.DataLoader`` with
torchvision transforms applied to one image at a time in worker processes.

It reads the same decoded tensors as :class:`~sdexp.data.loader.DeviceLoader` and has its interface,
so the two can be compared (``benchmarks/input_pipeline.py``); the device loader is the fast path.
Resuming in the middle of an epoch is exact only with the device loader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from sdexp.data.loader import PAD, Batch, SplitLoader


class _Images(Dataset):
    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


class TorchLoader(SplitLoader):
    """Batches of (normalised images, labels) on ``device`` from a DataLoader with ``num_workers``."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        train: bool = False,
        augment: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        num_workers: int = 2,
    ) -> None:
        super().__init__(labels, batch_size, device, train, seed, channels_last, torch.device("cpu"))
        self.num_workers = num_workers
        # imported here, not at the top: importing torchvision loads torch._dynamo, about 3 s that every
        # start of run.py would pay, for a loader few runs use
        from torchvision.transforms import v2

        steps = [v2.RandomCrop(images.shape[-1], padding=PAD), v2.RandomHorizontalFlip()] if augment else []
        transform = v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
        self.dataset = _Images(images, labels, transform)

    def batches(self, order: torch.Tensor, start: int = 0) -> Iterator[Batch]:
        indices = order[start * self.batch_size : len(self) * self.batch_size].tolist()
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=indices,
            num_workers=self.num_workers,
            generator=self.generator,
            pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield x, y.to(self.device, non_blocking=True)
