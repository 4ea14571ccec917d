"""Files written atomically and read with errors that name them.

Every file sdexp writes goes through :func:`atomic_write` (a temp file beside it, then a rename), so a
crash, a full disk or a reader at the wrong moment sees the old file or the new one, never half of one.
Every file a user or a crash can damage is read through :func:`read_file`, so a damaged one is named
with what to do instead of a parser's traceback.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sdexp.errors import SdexpError, WriteError

T = TypeVar("T")

_UMASK = os.umask(0)
os.umask(_UMASK)


def describe(exc: BaseException) -> str:
    """``No space left on device`` for an OSError, else ``Type: first line of the message``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def file_in_the_way(folder: Path) -> Path | None:
    """The file at ``folder`` or at a folder above it, which keeps ``folder`` from being made; or None."""
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def why_unwritable(folder: Path) -> str | None:
    """Why no file can be made in the existing ``folder`` (by trying one, which also holds for root,
    whom permission bits do not stop), or None if one can."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return describe(exc)


def temp_files(folder: Path, name: str) -> list[Path]:
    """The temp files :func:`atomic_write` makes in ``folder`` for the files ``name`` (a glob pattern)
    names: where they outlive their writer (killed mid-write), the caller may remove them."""
    return list(folder.glob(f".{name}.*.tmp"))


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)`` for a temp file beside ``path``, then rename it over ``path``.

    Any failure removes the temp file, leaves ``path`` as it was and raises :class:`WriteError` naming
    ``path``, the reason and the free space left on its disk (:class:`SdexpError` where a file stands
    in the way of its folder, or a folder in its place).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # temp_files
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for the whole group
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(exc, Exception):  # Ctrl-C, exit: not a write failure
            raise
        if (blocking := file_in_the_way(path.parent)) is not None:  # the user's to fix: bad input
            raise SdexpError(f"cannot write {path}: {blocking} is a file, not a folder") from exc
        if path.is_dir():
            raise SdexpError(f"cannot write {path}: it is a folder, not a file") from exc
        free = ""
        if path.parent.is_dir():
            free = f"; {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free there"
        raise WriteError(f"cannot write {path} ({describe(exc)}{free})") from exc


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`), synced to disk."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def read_file(path: Path, parse: Callable[[Path], T], error: type[SdexpError], fix: str) -> T:
    """``parse(path)``; any failure (missing, unreadable, empty, corrupt) raises ``error`` naming the
    file, the reason and ``fix``."""
    try:
        return parse(Path(path))
    except Exception as exc:
        raise error(f"cannot read {path} ({describe(exc)}): {fix}") from exc
