"""Argument types shared by the benchmark scripts, so that a bad value is a usage error naming the
option (exit status 2) before anything is timed, instead of a failure deep inside a benchmark or a
value quietly read as another."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from sdexp.config import DEVICES
from sdexp.files import why_unwritable

T = TypeVar("T")


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the script docstring's first paragraph (its whole first sentence)."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def fill(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> None:
    """Set each of these options that was not given (None) to its ``--quick`` or its full value:
    ``--quick`` shrinks what the user left open, never what they chose."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _integer(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {least}")
    return value


def count(text: str) -> int:
    """An integer >= 1."""
    return _integer(text, 1)


def workers(text: str) -> int:
    """A number of worker processes: an integer >= 0 (0: none, the work is done in this process)."""
    return _integer(text, 0)


def seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def one_of(*allowed: str) -> Callable[[str], str]:
    """One of ``allowed``."""

    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return parse


def flag(text: str) -> bool:
    """``true`` or ``false``."""
    return one_of("false", "true")(text) == "true"


def listed(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A comma list of ``kind``, each value once (a value listed twice would time one case twice)."""

    def parse(text: str) -> list[T]:
        values = [kind(part) for part in text.split(",")]
        if len(set(values)) < len(values):
            raise argparse.ArgumentTypeError(f"{text!r} lists a value twice")
        return values

    return parse


counts = listed(count)


def device(text: str) -> str:
    """``auto`` (CUDA where there is one), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, where there is one."""
    if re.fullmatch(DEVICES, text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if text == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here")
    if text.startswith("cuda:") and int(text[5:]) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPUs")
    return text


def new_file(text: str) -> Path:
    """A file to write at the end, checked at the start: its folder exists and it is no folder."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("an empty name: give a file name")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no folder {path.parent} to write it in")
    if (why := why_unwritable(path.parent)) is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: no file can be written in {path.parent} ({why})")
    return path
