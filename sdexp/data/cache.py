"""Decoded splits cached as one file of uint8 tensors, keyed by a fingerprint of the source files.

The fingerprint covers every source file's path, size and modification time, so a changed, added or
removed file gives a new key and the cache is rebuilt; stale cache files of the same source are removed,
and so are temp files that a writer stopped mid-write left (a data set's cache can take gigabytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from sdexp.data.sources import Arrays, DatasetError, checked
from sdexp.errors import SdexpError
from sdexp.files import atomic_write, describe, temp_files

log = logging.getLogger(__name__)

Decoded = tuple[dict[str, Arrays], list[str]]  # splits and class names
FORMAT = 1  # bump when the decoded layout changes
STALE_TEMP_S = 3600  # a cache's temp file untouched this long was left by a writer that was stopped


def fingerprint(files: Sequence[Path], settings: str) -> str:
    h = hashlib.sha256(f"{FORMAT}\0{settings}\n".encode())
    for f in files:
        try:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError as exc:  # e.g. a link to nothing
            link = " (a link to nothing?)" if f.is_symlink() else ""
            raise DatasetError(f"cannot read {f} ({describe(exc)}){link}: remove it or restore it") from None
        except UnicodeEncodeError:  # a name from another encoding (an archive made on Windows)
            raise DatasetError(f"{str(f)!a}: its name is not UTF-8 text; rename it") from None
    return h.hexdigest()[:16]


def _checked(state: object) -> Decoded:
    """The splits and classes of a loaded cache file; ValueError unless it has the layout
    :func:`cached` writes (a file at a cache's name may be damaged or another program's), each split
    checked as a source's arrays are (:func:`~sdexp.data.sources.checked`)."""
    if not isinstance(state, dict) or not isinstance(splits := state.get("splits"), dict):
        raise ValueError("not a decoded data set")
    if "train" not in splits or not isinstance(classes := state.get("classes"), list):
        raise ValueError("no training split or no class names")
    for split, arrays in splits.items():
        images, labels = arrays if isinstance(arrays, tuple | list) and len(arrays) == 2 else (None, None)
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
            raise ValueError(f"split {split!r} is not a pair of images and labels")
        if labels.dtype != torch.int64:  # as written: a cache converts nothing
            raise ValueError(f"split {split!r} has {labels.dtype} labels, not int64")
        checked(images.numpy(), labels.numpy(), classes, "the cache")
    return splits, classes


def cached(
    cache_dir: Path, name: str, files: Sequence[Path], settings: str, build: Callable[[], Decoded]
) -> Decoded:
    """``build()``'s result, read from ``cache_dir`` when the sources are unchanged, else built and saved."""
    key = fingerprint(files, settings)  # first: it names a file it cannot read
    source_key = hashlib.sha256(f"{name}\0{sorted(map(str, files))[:1]}".encode()).hexdigest()[:8]
    path = cache_dir / f"{name}-{source_key}-{key}.pt"
    for leftover in temp_files(cache_dir, f"{name}-{source_key}-*.pt"):  # a writer killed mid-write
        with contextlib.suppress(OSError):  # another run may remove it first
            if time.time() - leftover.stat().st_mtime > STALE_TEMP_S:  # not one being written now
                leftover.unlink()
    if path.exists():
        try:
            decoded = _checked(torch.load(path, weights_only=True))
            log.info("data: %s from cache %s", name, path)
            return decoded
        except Exception as exc:  # an unreadable cache is only a cache: rebuild it
            log.warning("data: ignoring unreadable cache %s (%s); rebuilding", path, exc)
    log.info("data: decoding %s (%d source files) into %s", name, len(files), path)
    splits, classes = build()
    try:
        atomic_write(path, lambda tmp: torch.save({"splits": splits, "classes": classes}, tmp))
    except SdexpError as exc:  # only a cache (even where a file is in its way): train without it
        log.warning("data: %s; going on without a cache (set dataset.cache_dir=PATH to keep one)", exc)
        return splits, classes
    for stale in cache_dir.glob(f"{name}-{source_key}-*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return splits, classes
