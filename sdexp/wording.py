"""How messages count things: ``1 run``, ``2 runs``."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1."""
    return f"{n} {noun}{'s' if n != 1 else ''}"
