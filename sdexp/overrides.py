"""Hydra command-line overrides: a run folder's name from a job's overrides, and a value quoted for one.

Both are about the command line, not the config schema, so the launchers need not import the schema.
"""

from __future__ import annotations

import hashlib


def run_name(override_dirname: str) -> str:
    """A run folder's name from Hydra's ``override_dirname``: ``default`` when there are no overrides,
    ``/`` replaced so that a path value stays one folder, long names shortened with a hash."""
    name = override_dirname.replace("/", "_") or "default"
    if len(name) > 200:
        name = f"{name[:180]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def quote_override(value: str) -> str:
    """``value`` as a quoted Hydra override value (paths may hold ``=``, ``,`` or brackets)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
