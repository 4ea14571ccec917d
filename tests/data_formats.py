"""Writers of tiny data sets in the exact on-disk formats that sdexp reads (test fixtures)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat


def pattern(index: int) -> np.ndarray:
    """A 3×32×32 uint8 image that encodes ``index`` (red) and has a marked corner (green at 0, 5)."""
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    image[0] = index % 256
    image[1, 0, 5] = 255
    return image


def write_cifar(root: Path, name: str, per_batch: int, n_test: int) -> None:
    """torchvision's CIFAR layout; image i has label i % classes and encodes i in its pixels."""
    classes = 10 if name == "cifar10" else 100
    if name == "cifar10":
        folder, train, test, meta = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            "batches.meta",
        )
        label_key, meta_content = "labels", {"label_names": [f"class{i}" for i in range(classes)]}
    else:
        folder, train, test, meta = "cifar-100-python", ["train"], "test", "meta"
        label_key, meta_content = "fine_labels", {"fine_label_names": [f"fine{i}" for i in range(classes)]}
    base = root / folder
    base.mkdir(parents=True)
    start = 0
    for file, n in [*((f, per_batch) for f in train), (test, n_test)]:
        index = range(start, start + n)
        batch = {
            "data": np.stack([pattern(i).reshape(-1) for i in index]),
            label_key: [i % classes for i in index],
        }
        (base / file).write_bytes(pickle.dumps(batch, protocol=2))
        start += n
    (base / meta).write_bytes(pickle.dumps(meta_content, protocol=2))


def write_svhn(root: Path, sizes: dict[str, int]) -> None:
    """SVHN's .mat files: X is 32×32×3×N, y is N×1 with 10 for the digit 0."""
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in sizes.items():
        x = np.stack([pattern(i).transpose(1, 2, 0) for i in range(start, start + n)], axis=3)
        y = np.array([[i % 10 or 10] for i in range(start, start + n)], dtype=np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        start += n


def write_image_folder(
    root: Path, counts: dict[str, int], classes: tuple[str, ...], suffix: str = "png"
) -> None:
    """``<root>/<split>/<class>/<n>.<suffix>`` with ``counts[split]`` images per class."""
    index = 0
    for split, n in counts.items():
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k in range(n):
                Image.fromarray(pattern(index).transpose(1, 2, 0)).save(folder / f"{k:04d}.{suffix}")
                index += 1
