"""Where the run folders are, and what each one's run is doing now (running or stopped, queued, failed
before training), for what reads many of them: :mod:`sdexp.report`, :mod:`sdexp.status` and the
launchers. The files of one folder and their formats are in :mod:`sdexp.runs`.
"""

from __future__ import annotations

import glob
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdexp import runs
from sdexp.errors import failure_log


def held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock; True where that cannot be told (another host,
    no lock file) so that a running run is never called stopped by mistake."""
    holder = runs.lock_holder(run_dir)
    if holder is None or holder[1] != socket.gethostname():
        return True
    try:
        os.kill(holder[0], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def live_status(run_dir: Path, result: dict[str, Any]) -> str:
    """The result's status, but ``stopped`` for a run that says it is running while no process holds
    its folder (:func:`held`): killed, or its node was lost."""
    status = result["status"]
    return "stopped" if status == "running" and not held(run_dir) else status


def last_line(path: Path) -> str:
    """The last line of a text file that is not blank; "" for none, or no file."""
    text = path.read_text(errors="replace").strip() if path.is_file() else ""
    return text.splitlines()[-1] if text else ""


def error_aside(path: Path, among: int = 5) -> str:
    """run.py's one line on a failure it expects, among the last ``among`` lines of a console log (a
    launcher's own lines may follow it: srun's), framed to follow a launcher's summary of the job:
    `` (error: ...)``, else ""."""
    lines = path.read_text(errors="replace").strip().splitlines()[-among:] if path.is_file() else []
    said = next((line for line in reversed(lines) if line.startswith("error: ")), "")
    return f" ({said})" if said else ""


_RECORD = re.compile(r"\[[^]]*\]\[[^]]*\]\[[A-Z]+\] - ")  # a train.log record's first line (Hydra's format)


def _last_record(path: Path) -> str:
    """The first line of the last record of a log: a traceback logged with a record follows it."""
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return next((line for line in reversed(lines) if _RECORD.match(line)), "")


def failure_before_training(run_dir: Path) -> str | None:
    """How a run that wrote no result.json ended, if its train.log's last record says so: ``error: ...``
    (a data set not found, say) or ``stopped (Ctrl-C)`` (while it loaded its data); or the error in
    its console.log if it was refused before it started (a launcher's job whose config this machine
    cannot run); None if there is none, or something was logged since (a rerun)."""
    marker = f"[{failure_log.name}][ERROR] - "
    logged, console = _last_record(run_dir / runs.LOG), last_line(run_dir / runs.CONSOLE_LOG)
    if marker in logged:
        return logged.split(marker, 1)[1]
    return console if console.startswith("error: ") and not logged else None


def status_before_result(run_dir: Path) -> str:
    """What a run folder without ``result.json`` says of its run: ``failed: <error>`` (before training),
    ``queued`` (submitted to SLURM, whose job has not started), ``starting`` (its process starts, or
    loads its data) or ``stopped`` (stopped while loading it, or no process holds the folder any more)."""
    ended = failure_before_training(run_dir)
    if ended:
        return f"failed: {ended.removeprefix('error: ')}" if ended.startswith("error: ") else "stopped"
    job = runs.read_slurm_job(run_dir)
    if job and not _slurm_job_started(job):  # train.log may be an earlier job's
        return "queued"
    return "starting" if held(run_dir) else "stopped"


def _slurm_job_started(job: dict[str, str]) -> bool:
    """Whether SLURM has started the job (its node opened the job's log), though the run's process may
    not have written to its own log yet (Python starting, the job's ``setup`` lines)."""
    from submitit.core.utils import JobPaths  # the names submitit gives a job's files

    folder, job_id = job.get("submitit_folder"), job.get("slurm_job_id")
    if not isinstance(folder, str) or not isinstance(job_id, str):  # a damaged record: nothing to tell
        return False
    return JobPaths(folder, job_id).stdout.exists()


# What a run folder holds from its start: result.json comes later, once the data set is read.
MARKERS = (runs.RESULT, runs.SLURM_JOB, runs.LOCK, runs.LOG, runs.CONSOLE_LOG)
NO_RUN_FOLDERS = f"no run folders (folders with {', '.join(MARKERS[:-1])} or {MARKERS[-1]}) there"


def run_folders_under(folder: Path) -> set[Path]:
    """The run folders at or under ``folder``: those holding one of :data:`MARKERS`. Linked folders are
    followed (a folder of links to the runs to compare), each real folder once, so a loop of links
    ends and a run linked beside itself counts once. Hidden folders and Python environments below
    ``folder`` are not searched: from a repository's folder, ``.git`` or a venv holds no runs but may
    hold a file named like a marker (setuptools ships a ``.lock``)."""
    found, seen = set(), set()
    for root, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen or (root != str(folder) and "pyvenv.cfg" in files):
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        if any(name in files for name in MARKERS):
            found.add(Path(root))
    return found


def folder_of(path: Path) -> Path:
    """The run folder of a marker file given for it (``multirun/x/*/result.json``), else ``path``."""
    return path.parent if path.name in MARKERS and path.is_file() else path


def find_run_dirs(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Every run folder (:func:`run_folders_under`) at or under each path, globs expanded, each real
    folder once (under the first name it was reached by: ``sweep`` and its absolute path are one); and
    the paths (or globs) under which there is none.

    Raises :class:`~sdexp.runs.RunFolderError` for a path that is empty or matches nothing, or when no
    path holds a run.
    """
    found: dict[Path, Path] = {}
    empty = []
    for pattern in map(str, paths):
        if not pattern.strip():
            raise runs.RunFolderError("an empty path was given: name sweep folders, run folders or globs")
        matches = [Path(pattern)]
        if glob.has_magic(pattern) and not matches[0].exists():  # a list value, [4,8,16], is no glob
            # Hydra names a folder by a list value in brackets, which glob reads as a set of characters:
            # a glob that matches nothing is tried again with its brackets as they are (*widths=[4,8,16]*)
            matches = [Path(p) for p in glob.glob(pattern) or glob.glob(pattern.replace("[", "[[]"))]
        if not matches or not all(m.exists() for m in matches):
            raise runs.RunFolderError(f"{pattern}: no such file or folder")
        here = set().union(*(run_folders_under(folder_of(match)) for match in matches))
        if not here:
            empty.append(pattern)
        for folder in sorted(here):
            found.setdefault(folder.resolve(), folder)
    if not found:
        raise runs.RunFolderError(f"{', '.join(empty)}: {NO_RUN_FOLDERS}")
    return sorted(found.values()), empty
