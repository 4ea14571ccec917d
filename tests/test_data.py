"""The synthetic data set, batched augmentation and the device-resident loader."""

from __future__ import annotations

import torch
from scipy.stats import binomtest, chisquare

from sdexp.config import compose_config
from sdexp.data import Split, build_loaders
from sdexp.data.loader import PAD, DeviceLoader, translate_and_flip
from sdexp.data.synthetic import CLASSES, make_synthetic


def test_synthetic_is_deterministic_balanced_and_seeded() -> None:
    x, y = make_synthetic(200, seed=1)
    x2, y2 = make_synthetic(200, seed=1)
    x3, _ = make_synthetic(200, seed=2)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, x3)
    assert torch.bincount(y, minlength=len(CLASSES)).tolist() == [20] * len(CLASSES)


def _position_images(n: int) -> torch.Tensor:
    """Channel 0 holds row+1, channel 1 column+1, so each output pixel tells where it came from."""
    rows = torch.arange(1, 33).view(32, 1).expand(32, 32)
    cols = torch.arange(1, 33).view(1, 32).expand(32, 32)
    image = torch.stack([rows, cols, torch.ones(32, 32, dtype=torch.long)]).to(torch.uint8)
    return image.expand(n, 3, 32, 32).clone()


def test_translation_and_flip_statistics() -> None:
    n = 20000
    out = translate_and_flip(_position_images(n), torch.Generator().manual_seed(0))
    centre_row = out[:, 0, 16, 16].long() - 1
    centre_col = out[:, 1, 16, 16].long() - 1
    flipped = out[:, 1, 16, 17].long() < out[:, 1, 16, 16].long()
    dy = centre_row - 16
    dx = torch.where(flipped, centre_col - 15, centre_col - 16)
    assert dy.abs().max() <= PAD and dx.abs().max() <= PAD
    for shift in (dy, dx):
        counts = torch.bincount(shift + PAD, minlength=2 * PAD + 1)
        assert chisquare(counts.numpy()).pvalue > 1e-3  # uniform over -4…4
    assert binomtest(int(flipped.sum()), n, 0.5).pvalue > 1e-3
    # Pixels shifted in from outside the image are zero; everything else comes from inside it.
    src_rows = centre_row.view(n, 1) + torch.arange(32).view(1, 32) - 16
    outside = (src_rows < 0) | (src_rows > 31)
    assert torch.equal(out[:, 0, :, 16] == 0, outside)


def test_loader_batches_cover_the_split() -> None:
    x, y = make_synthetic(100, seed=0)
    kwargs = {"mean": [0.5] * 3, "std": [0.25] * 3, "device": torch.device("cpu")}
    train = DeviceLoader(x, y, 32, train=True, augment=True, seed=0, **kwargs)
    ordered = DeviceLoader(x, y, 32, **kwargs)
    assert len(train) == 3 and len(ordered) == 4
    assert sum(len(b[1]) for b in train) == 96
    batches = list(ordered)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    first = batches[0][0]
    torch.testing.assert_close(first, (x[:32].float() / 255 - 0.5) / 0.25)
    epoch1 = torch.cat([b[1] for b in train])
    epoch2 = torch.cat([b[1] for b in train])
    assert not torch.equal(epoch1, epoch2)  # reshuffled every epoch


def test_normalisation_uses_training_statistics() -> None:
    cfg = compose_config(["dataset.augment=false"])
    x, y = make_synthetic(500, seed=0)
    split = Split(x, y)
    from sdexp.data import ImageSplits

    data = ImageSplits(split, split, split, CLASSES)
    loaders = build_loaders(data, cfg.dataset, 500, 500, torch.device("cpu"), seed=0)
    ((batch, _),) = list(loaders["val"])
    per_channel = batch.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(3), atol=1e-3, rtol=0)
