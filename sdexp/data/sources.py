"""Readers of the standard on-disk formats, each giving decoded uint8 tensors (N×3×H×W) and labels.

- CIFAR-10/100: torchvision's folders ``cifar-10-batches-py`` / ``cifar-100-python`` (pickled batches).
- SVHN: ``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat`` (label 10 means digit 0).
- ImageFolder trees ``<split>/<class>/<image>`` (CINIC-10: ``train/ valid/ test/`` of PNGs).

Downloads go through torchvision (``download=True``), which checks the archives' checksums; reading is
done here so that any copy in the standard layout works. Problems raise :class:`DatasetError` naming
the path and what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from sdexp.errors import SdexpError
from sdexp.models import IMAGE_SIZE

log = logging.getLogger(__name__)

Arrays = tuple[torch.Tensor, torch.Tensor]  # images uint8 N×3×H×W, labels int64 N


class DatasetError(SdexpError):
    """A data set that is missing or unreadable; the message names the path and the fix."""


def missing(name: str, looked_at: Path, download_hint: bool) -> DatasetError:
    fix = "set dataset.root=PATH to where it is"
    if download_hint:
        fix += ", or dataset.download=true to fetch it with torchvision"
    return DatasetError(f"dataset {name}: nothing found at {looked_at}; {fix}")


def _read(path: Path, reader: Callable[[Path], object]) -> object:
    try:
        return reader(path)
    except Image.DecompressionBombError as exc:  # PIL's guard against a few bytes that decode to GBs
        raise DatasetError(f"cannot read {path} ({exc}); shrink it (it is resized to 32×32)") from exc
    except Exception as exc:
        raise DatasetError(f"cannot read {path} ({type(exc).__name__}: {exc}); is it corrupt?") from exc


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}  # fmt: skip


def download(name: str, root: Path, extra: bool = False) -> None:
    """Fetch CIFAR-10/100 or SVHN into ``root`` with torchvision (it checks the checksums)."""
    from torchvision import datasets

    made = not root.exists()
    try:
        if name in CIFAR:
            getattr(datasets, name.upper())(root, download=True)
        elif name == "svhn":
            for split in ("train", "test", *(["extra"] if extra else [])):
                datasets.SVHN(root, split=split, download=True)
        else:
            raise DatasetError(f"dataset {name} cannot be downloaded by sdexp; set dataset.download=false")
    except (OSError, RuntimeError) as exc:  # RuntimeError: torchvision's check of what it fetched
        if made:  # not an empty folder that would look like a data set to the next run
            with contextlib.suppress(OSError):
                root.rmdir()
        raise DatasetError(f"dataset {name}: download into {root} failed ({exc})") from exc


def cifar_files(name: str, root: Path) -> list[Path]:
    folder, train_files, test_files, meta_file, *_ = CIFAR[name]
    files = [root / folder / f for f in (*train_files, *test_files, meta_file)]
    lacking = [f.name for f in files if not f.exists()]
    if len(lacking) == len(files):
        raise missing(name, root / folder, download_hint=True)
    if lacking:  # a partial copy: name what is not there
        raise DatasetError(
            f"dataset {name}: {root / folder} lacks {', '.join(lacking)}; copy the whole folder again, or "
            "remove it and set dataset.download=true to fetch it with torchvision"
        )
    return files


def _shape(array: np.ndarray) -> str:
    return "×".join(map(str, array.shape))


def checked(images: np.ndarray, labels: np.ndarray, classes: list[str], named_in: str) -> Arrays:
    """``images`` (N×3×32×32 uint8) and ``labels`` (N, each an index into ``classes``, which
    ``named_in`` names) as tensors, or a ValueError that says what is wrong: a file with fewer labels
    than images would pair every later image with another's label, and a label out of range would fail
    only in the loss."""
    if np.issubdtype(labels.dtype, np.floating) and np.array_equal(labels, np.round(labels)):
        labels = labels.astype(np.int64)  # whole numbers stored as floats (MATLAB's default type)
    if images.dtype != np.uint8 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"its images are {images.dtype} {_shape(images)}, not uint8 N×3×{IMAGE_SIZE}×{IMAGE_SIZE}"
        )
    if len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"it has {len(images)} images and {len(labels)} labels of type {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(
            f"its labels run from {labels.min()} to {labels.max()}, not 0 to {len(classes) - 1} "
            f"({named_in} names {len(classes)} classes)"
        )
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def read_cifar(name: str, root: Path) -> tuple[dict[str, Arrays], list[str]]:
    """Train and test splits of CIFAR-10 or CIFAR-100 and the class names."""
    folder, train_files, test_files, meta_file, label_key, names_key = CIFAR[name]
    base = root / folder

    def names(path: Path) -> list[str]:
        meta = _unpickle(path)
        if not isinstance(meta, dict) or not isinstance(meta.get(names_key), list):
            raise ValueError(f"not the {name} class list: it needs a dict with the list '{names_key}'")
        return [str(n) for n in meta[names_key]]

    classes = _read(base / meta_file, names)

    def batch(path: Path) -> Arrays:
        content = _unpickle(path)
        if not isinstance(content, dict) or not {"data", label_key} <= content.keys():
            raise ValueError(f"not a {name} batch: it needs a dict with 'data' and '{label_key}'")
        data = np.asarray(content["data"])
        if data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE**2:
            raise ValueError(f"its data is {_shape(data)}, not N×{3 * IMAGE_SIZE**2}")
        images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
        return checked(images, np.asarray(content[label_key]), classes, meta_file)

    def load(files: list[str]) -> Arrays:
        images, labels = zip(*(_read(base / f, batch) for f in files), strict=True)
        return torch.cat(images), torch.cat(labels)

    return {"train": load(train_files), "test": load(test_files)}, classes


def svhn_files(root: Path, extra: bool) -> list[Path]:
    files = [root / f"{split}_32x32.mat" for split in ("train", "test", *(["extra"] if extra else []))]
    for f in files:
        if not f.exists():
            raise missing("svhn", f, download_hint=True)
    return files


def read_svhn(root: Path, extra: bool) -> tuple[dict[str, Arrays], list[str]]:
    """SVHN's train (plus extra, if asked) and test splits; classes are the digits 0-9."""
    from scipy.io import loadmat

    names = ["train", "test", *(["extra"] if extra else [])]

    def split(path: Path) -> Arrays:
        mat = loadmat(path)
        if "X" not in mat or "y" not in mat:
            raise ValueError("not an SVHN file: it needs X (32×32×3×N) and y")
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
        if x.ndim != 4 or x.shape[:3] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"its X is {_shape(x)}, not 32×32×3×N")
        if len(y) and np.issubdtype(y.dtype, np.number) and (y.min() < 1 or y.max() > 10):
            raise ValueError(f"its labels run from {y.min()} to {y.max()}, not 1 to 10 (10 for the digit 0)")
        images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # -> N×3×32×32
        return checked(images, y % 10, classes, "SVHN")

    classes = [str(d) for d in range(10)]
    splits = {name: _read(root / f"{name}_32x32.mat", split) for name in names}
    if extra:
        more = splits.pop("extra")
        splits["train"] = tuple(torch.cat(pair) for pair in zip(splits["train"], more, strict=True))
    return splits, classes


def _class_folders(split: Path) -> list[str]:
    """A split folder's class folders, sorted as ImageFolder sorts them; hidden folders
    (``.ipynb_checkpoints``) are not classes."""
    return sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))


def image_folder_files(name: str, root: Path, split_dirs: dict[str, str]) -> list[Path]:
    """Every file of the split folders but those in hidden folders, following links as
    :func:`read_image_folder` does; a link loop, or a FIFO with an image's name, is refused here, before
    decoding would go round or wait for ever."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not (root / split_dirs["train"]).is_dir():
        raise missing(name, root / split_dirs["train"], download_hint=False)
    files = []
    for split in (root / sub for sub in split_dirs.values() if (root / sub).is_dir()):
        files += [split / f for f in os.listdir(split) if (split / f).is_file()]
        for folder in _class_folders(split):
            for top, _, names in os.walk(split / folder, followlinks=True):
                real, above = Path(os.path.realpath(top)), Path(os.path.realpath(Path(top).parent))
                if real == above or real in above.parents:  # os.walk would go round for ever
                    raise DatasetError(f"{top} is a link to {real}, which holds it: remove the link")
                files += [Path(top) / f for f in names]
    for path in files:  # an image's name on a FIFO: reading it would wait for ever
        if path.name.lower().endswith(IMG_EXTENSIONS) and path.exists() and not path.is_file():
            raise DatasetError(f"{path} is not a regular file (a FIFO, socket or device?): remove it")
    return sorted(files)


def read_image_folder(
    name: str, root: Path, split_dirs: dict[str, str]
) -> tuple[dict[str, Arrays], list[str]]:
    """Splits of an ImageFolder tree: ``split_dirs`` maps split -> subfolder; missing ones are skipped,
    but ``train`` must exist. Hidden folders (``.ipynb_checkpoints``) are not classes. Images are
    decoded to RGB and resized to 32×32 (``IMAGE_SIZE``) if needed."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    splits: dict[str, Arrays] = {}
    classes: list[str] | None = None
    for split, sub in split_dirs.items():
        folder = root / sub
        if not folder.is_dir():
            continue
        try:
            found = _class_folders(folder)
            if not found:
                raise _not_a_tree(name, folder, sub, "no class folders")
            samples = make_dataset(str(folder), {c: i for i, c in enumerate(found)}, IMG_EXTENSIONS)
        except OSError as exc:  # a class folder without images, or one that cannot be read
            raise _not_a_tree(name, folder, sub, str(exc)) from None
        if classes is not None and found != classes:
            raise _other_classes(name, folder, found, classes, split_dirs["train"])
        classes = found
        check_classes(name, root, classes)  # before decoding: refused in seconds
        images = torch.empty((len(samples), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
        progress = tqdm(samples, desc=f"decoding {name} {split}", unit="img", disable=None)
        tenth = max(1, len(samples) // 10)
        for i, (path, _) in enumerate(progress):
            images[i] = _read(Path(path), _decode)
            if progress.disable and (i + 1) % tenth == 0:  # no terminal (a SLURM log): a line per tenth
                log.info("data: decoded %d of %d %s images", i + 1, len(samples), split)
        splits[split] = images, torch.tensor([label for _, label in samples], dtype=torch.int64)
    assert classes is not None
    return splits, classes


def _other_classes(name: str, folder: Path, found: list[str], classes: list[str], train: str) -> DatasetError:
    """The error for a split whose class folders are not the training split's: a label is the place of
    its class folder among them, so they must be the same in every split."""
    lacks, more = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
    differ = [f"lacks {', '.join(lacks)}"] if lacks else []
    differ += [f"has {', '.join(more)}, which {train}/ has not"] if more else []
    return DatasetError(
        f"dataset {name}: {folder} {'; '.join(differ)}: every split needs the class folders of {train}/"
    )


def _not_a_tree(name: str, folder: Path, sub: str, problem: str) -> DatasetError:
    return DatasetError(
        f"dataset {name}: {folder} is not an ImageFolder tree ({problem}); it needs "
        f"{sub}/<class>/<image> with at least one image in every class folder"
    )


def check_classes(name: str, root: Path, classes: list[str]) -> None:
    """Refuse a data set of fewer than two classes: its error would be 0 % from the first step."""
    if len(classes) < 2:
        raise DatasetError(
            f"{name} at {root} has {len(classes)} class ({', '.join(classes)}): classifying needs at least "
            "two class folders"
        )


def _decode(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        rgb = img.convert("RGB")
        if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
            rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
