"""Argument types shared by the benchmark scripts, so that a bad number is a usage error naming the
option (exit status 2) instead of a failure deep inside a benchmark."""

from __future__ import annotations

import argparse


def count(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def counts(text: str) -> list[int]:
    """A comma list of integers >= 1."""
    return [count(v) for v in text.split(",")]
