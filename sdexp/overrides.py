"""Hydra command-line overrides: a run folder's name from a job's overrides, a value quoted for one, and
the overrides all of a sweep's jobs share.

Both are about the command line, not the config schema, so the launchers need not import the schema.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence


def run_name(override_dirname: str) -> str:
    """A run folder's name from Hydra's ``override_dirname``: ``default`` when there are no overrides,
    ``/`` replaced so that a path value stays one folder, long names shortened with a hash."""
    name = override_dirname.replace("/", "_") or "default"
    if len(name) > 200:
        name = f"{name[:180]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def quote_override(value: str) -> str:
    """``value`` as a quoted Hydra override value (paths may hold ``=``, ``,`` or brackets). Hydra keeps
    the backslashes of a quoted value as they are, except a run of them before a quote or at the end,
    where two stand for one: so only those are doubled (a folder named from ``seed=${...}`` holds
    ``$\\{``, which must stay as it is)."""
    escaped = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda m: m[1] * 2, escaped) + "'"


def shared_by_all(jobs: Sequence[Sequence[str]]) -> frozenset[str]:
    """The overrides that every one of a sweep's ``jobs`` has: said once, so that each job is named by
    those that set it apart; none for a single job, which all of its overrides name."""
    return frozenset.intersection(*map(frozenset, jobs)) if len(jobs) > 1 else frozenset()
