"""A loader that keeps a whole split on the training device and makes each batch with tensor ops.

No worker processes and no per-sample Python: a batch is an index into device memory, augmented
(random translation with zero padding, horizontal flip) and normalised in a few batched kernels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.nn import functional as F

PAD = 4  # maximum translation in pixels (the paper's CIFAR augmentation)


def translate_and_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ±PAD pixels (zero fill) and flip it horizontally with p = 0.5.

    Same as zero-padding by PAD, taking a random crop of the original size and a random flip; done for
    the whole batch as one gather.
    """
    n, c, h, w = images.shape
    dev = images.device
    shifts = torch.randint(0, 2 * PAD + 1, (2, n, 1), device=dev, generator=generator)
    flips = torch.rand(n, 1, device=dev, generator=generator) < 0.5
    rows = shifts[0] + torch.arange(h, device=dev)
    cols = shifts[1] + torch.arange(w, device=dev)
    cols = torch.where(flips, cols.flip(1), cols)
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    channel = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


Batch = tuple[torch.Tensor, torch.Tensor]  # normalised float images, labels


class SplitLoader:
    """What the trainer needs of a loader over one split: ``len`` (batches per epoch),
    :meth:`epoch_order`, :meth:`batches` from any step, and the ``generator`` behind its randomness.

    ``train=True`` shuffles every epoch, drops the last incomplete batch and augments if ``augment``;
    otherwise batches come in order, complete and untouched. ``channels_last`` gives the images in
    that memory format.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int,
        channels_last: bool,
        generator_device: torch.device,
    ) -> None:
        self.labels = labels
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator(device=generator_device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.train and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(self.epoch_order())

    def epoch_order(self) -> torch.Tensor:
        """The order of the samples for one epoch: a fresh permutation when training."""
        n, dev = len(self.labels), self.generator.device
        return torch.randperm(n, device=dev, generator=self.generator) if self.train else torch.arange(n)

    def batches(self, order: torch.Tensor, start: int = 0) -> Iterator[Batch]:
        """The batches of an epoch in ``order``, from batch number ``start`` on."""
        raise NotImplementedError


class DeviceLoader(SplitLoader):
    """The fast path: the split lives on ``device``; each batch is an index into it, augmented and
    normalised there with batched tensor ops."""

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
    ) -> None:
        super().__init__(labels.to(device), batch_size, device, train, seed, channels_last, device)
        self.images = images.to(device)
        self.augment = augment
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t

    def batches(self, order: torch.Tensor, start: int = 0) -> Iterator[Batch]:
        order = order.to(self.device)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = translate_and_flip(x, self.generator)
            x = torch.addcmul(self.shift, x.float(), self.scale)
            yield x.contiguous(memory_format=self.memory_format), self.labels[idx]
