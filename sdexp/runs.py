"""The run folder: its file names and formats, for the code that writes and reads them.

A run folder holds ``.hydra/`` (config.yaml, overrides.yaml, hydra.yaml), ``metrics.csv`` (one row per
epoch), ``result.json`` (status and summary), ``checkpoint.pt`` (the state after the last finished
epoch, or at the step where a stop signal came), ``train.log`` and ``.lock`` (locked by the process
training in it); a run started by sdexp's local or packed launcher also ``console.log`` (its process's
output); a run submitted to SLURM also ``slurm_job.json`` (its job id, submitit folder and the
runs packed into the same job if any, written at submission, so a rerun of the sweep can tell that
the job is still queued or running). Every file is written atomically (temp file + rename), so a
reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sdexp.errors import SdexpError
from sdexp.files import atomic_write_text, read_file, temp_files

try:
    import fcntl
except ImportError:  # Windows: run folders can be read there, and are not locked
    fcntl = None

log = logging.getLogger(__name__)

METRICS = "metrics.csv"
RESULT = "result.json"
LOG = "train.log"
CHECKPOINT = "checkpoint.pt"
SLURM_JOB = "slurm_job.json"
LOCK = ".lock"
LAUNCH_LOCK = ".launch.lock"  # in a sweep folder: held by the command that launches the sweep
CONSOLE_LOG = "console.log"
HYDRA_DIR = ".hydra"
CONFIG = Path(HYDRA_DIR) / "config.yaml"
OVERRIDES = Path(HYDRA_DIR) / "overrides.yaml"  # the run's command-line overrides

METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_error",
    "val_error",
    "test_error",
    "epoch_time_s",
    "images_per_s",
    "executed_block_fraction",
)
# The result's final errors, in percent. An empty split's error is NaN in memory and null in result.json,
# which stays strict JSON (jq, JavaScript and pandas' read_json refuse a bare NaN).
FINAL_ERRORS = ("best_val_error", "test_error_at_best_val", "test_error")
OTHER_FOLDER = "another folder (hydra.run.dir=...; in a sweep, hydra.sweep.dir=...)"  # advice in errors
STATUSES = ("running", "completed", "failed", "interrupted", "diverged")
FINISHED = ("completed", "diverged")  # rerunning gives the same outcome, so a rerun skips these
# Keys that may change between a run and its resumption: they change how it is computed (the order of
# sums, the workers' augmentation streams), not the experiment. Hydra leaves the same keys out of
# run-folder names (conf/config.yaml: override_dirname.exclude_keys).
RESUMABLE_CHANGES = (
    "trainer.progress",
    "trainer.device",
    "trainer.num_threads",
    "trainer.step",  # the same step computed another way (tests/test_step.py)
    "trainer.conv_weight_grad",  # the same weight gradients, summed in another order (tests/test_conv.py)
    "dataset.download",
    "dataset.cache_dir",
    "dataset.num_workers",
    "logger",  # the group as typed (logger=tensorboard), for Hydra's folder names; its keys below
    "logger.name",
    "logger.project",
    "logger.entity",
    "logger.mode",
)


class RunFolderError(SdexpError):
    """A run folder that cannot be used as asked; the message names it and says what to do."""


class FolderInUse(RunFolderError):
    """Another process holds the folder's lock (trains in the run folder): the folder's train.log is that
    process's run, and says nothing of this."""

    in_run_log = False

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(
            f"{folder} is in use by another process ({holder}): let it finish or stop it, then run this again"
        )
        self.folder, self.holder = folder, holder

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # pickled with a SLURM job's outcome
        return type(self), (self.folder, self.holder)


class SweepInUse(FolderInUse):
    """Another command launches the sweep: a second launch would start (or submit) each run it has not
    finished a second time, only for the run's lock to refuse one of the two."""

    def __init__(self, folder: Path, holder: str) -> None:
        RunFolderError.__init__(
            self,
            f"the sweep in {folder} is being launched by another command ({holder}): let it finish, or "
            "stop it and run this again (it resumes the runs, and waits for SLURM jobs already submitted); "
            "runs to train beside it need another hydra.sweep.dir",
        )
        self.folder, self.holder = folder, holder


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process: a second process that would train in it (the same command run
    twice, a duplicate job) gets :class:`FolderInUse` instead of writing the same files."""
    with holding(run_dir / LOCK, unlocked="a second process could train in it too"):
        for leftover in temp_files(run_dir, CHECKPOINT):  # its writer was killed: only a holder writes
            with contextlib.suppress(OSError):  # only disk space at stake
                leftover.unlink()
                log.info("removed %s, left by a process stopped while writing it", leftover)
        yield


@contextlib.contextmanager
def holding(
    lock_path: Path,
    refusal: type[FolderInUse] = FolderInUse,
    unlocked: str = "another process could hold it too",
) -> Iterator[IO[str]]:
    """Hold the lock file ``lock_path`` (made, with its folder, if need be) for this process, and name
    this process in it; ``refusal`` (naming the holder) where another process holds it, and a warning
    that says what is ``unlocked`` where the file system has no locks.

    The lock is ``flock``; the kernel releases it however the process ends, so a crash leaves no stale
    lock. A lock file removed while this waited for it (its holder cleaned up) is let go for the one at
    the path now, so that two processes never each hold one.
    """
    while True:
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(lock_path, "a+", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise RunFolderError(
                f"cannot open {lock_path} ({exc.strerror}): remove it and run this again"
            ) from None
        if fcntl is None:
            break
        try:
            _lock(lock)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            lock.close()
            raise refusal(lock_path.parent, holder) from None
        except OSError as exc:  # a file system without flock (ENOLCK, EOPNOTSUPP)
            log.warning("cannot lock %s (%s): %s", lock_path, exc, unlocked)
            break
        if is_at(lock, lock_path):
            break
        lock.close()
    with lock:
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield lock


def is_at(file: IO[str], path: Path) -> bool:
    """Whether the open ``file`` is the one at ``path`` still (not removed, nor replaced by another)."""
    try:
        here, there = os.fstat(file.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _lock(lock: IO[str], tries: int = 10) -> None:
    """``flock`` ``lock`` for this process, trying for about a second before BlockingIOError: a
    launcher's probe of a run's lock (:func:`in_use`) holds it for an instant."""
    for _ in range(tries - 1):
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        time.sleep(0.1)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def in_use(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be trained in now, if a process holds its lock (as :func:`exclusive` would
    find it), else None: for a launcher, before it starts a job that would only be refused. The probe
    takes a shared lock for an instant."""
    if fcntl is None:
        return None
    try:
        with open(run_dir / LOCK, encoding="utf-8", errors="replace") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released as the file closes
            except BlockingIOError:
                return str(FolderInUse(run_dir, lock.read().strip()))
    except OSError:  # no lock file, or a file system without flock: nothing to tell
        return None
    return None


def lock_holder(run_dir: Path) -> tuple[int, str] | None:
    """``(pid, host)`` of the process the run's ``.lock`` names: the last one to hold the folder, which
    may have ended since. None where there is no readable lock file."""
    try:
        words = (run_dir / LOCK).read_text(encoding="utf-8").split()  # as exclusive() writes it
    except (OSError, UnicodeDecodeError):  # damaged: the holder cannot be told
        return None
    if len(words) != 4 or words[0] != "pid" or not words[1].isdigit():
        return None
    return int(words[1]), words[3]


def write_metrics(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write all epoch rows so far to ``metrics.csv`` (columns: :data:`METRIC_COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / METRICS, buf.getvalue())


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    """Write ``result.json``; its ``status`` must be one of :data:`STATUSES`."""
    if result.get("status") not in STATUSES:
        raise ValueError(f"result status {result.get('status')!r} not in {STATUSES}")
    nulls = {k: None for k in FINAL_ERRORS if isinstance(result.get(k), float) and math.isnan(result[k])}
    text = json.dumps({**result, **nulls}, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(run_dir / RESULT, text + "\n")


class RunRecord:
    """A run's ``result.json`` and ``metrics.csv`` as training goes: each method is one change of the
    run's state, written at once (atomically)."""

    def __init__(self, run_dir: Path, result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        self.run_dir, self.result, self.rows = Path(run_dir), result, rows

    @classmethod
    def new(cls, run_dir: Path, fields: dict[str, Any]) -> RunRecord:
        """A run starting from scratch, with ``fields`` (model, seed, versions, ...) in its result."""
        result = {
            "status": "running",
            "epochs_completed": 0,
            "train_time_s": 0.0,
            "resumed_from": [],
            **fields,
        }
        record = cls(run_dir, result, [])
        record._write()
        return record

    @classmethod
    def resumed(
        cls, run_dir: Path, result: dict[str, Any], rows: list[dict[str, Any]], step: int, **updates: Any
    ) -> RunRecord:
        """A run resumed from its checkpoint's ``result`` and ``rows`` at ``step`` of the next epoch;
        ``updates`` are the fields that describe this process (device, SLURM job)."""
        result = {k: v for k, v in result.items() if k != "interrupted_in_epoch"}  # resumed_from says it
        record = cls(run_dir, {**result, **updates, "status": "running"}, rows)
        record.result.setdefault("resumed_from", []).append({"epoch": record.next_epoch, "step": step})
        record._write()
        return record

    @property
    def next_epoch(self) -> int:
        return self.result["epochs_completed"] + 1

    def epoch_done(self, row: dict[str, Any], peak_gpu_memory_gib: float | None = None) -> None:
        """Add a finished epoch's metrics. The paper reports the test error at the epoch of the best
        validation error (the first such epoch on ties). ``peak_gpu_memory_gib``: the most GPU memory
        this process has held so far; the result keeps the largest over the run's processes."""
        self.rows.append(row)
        result = self.result
        if peak_gpu_memory_gib is not None:
            result["peak_gpu_memory_gib"] = max(peak_gpu_memory_gib, result.get("peak_gpu_memory_gib", 0.0))
        result["epochs_completed"] = row["epoch"]
        result["train_time_s"] += row["epoch_time_s"]
        if row["val_error"] < result.get("best_val_error", math.inf):
            result.update(best_val_error=row["val_error"], best_epoch=row["epoch"],
                          test_error_at_best_val=row["test_error"])  # fmt: skip
        if not math.isnan(row["val_error"]):  # evaluated (the test split may be empty: NaN)
            result["test_error"] = row["test_error"]
        write_metrics(self.run_dir, self.rows)
        self._write()

    def interrupted(self, epoch: int) -> None:
        self.result.update(status="interrupted", interrupted_in_epoch=epoch)
        self._write()

    def diverged(self, epoch: int, step: int) -> None:
        self.result.update(status="diverged", diverged_at={"epoch": epoch, "step": step})
        self._write()

    def completed(self) -> None:
        self.result["status"] = "completed"
        self._write()

    def _write(self) -> None:
        write_result(self.run_dir, self.result)


def record_failure(run_dir: Path, exc: BaseException) -> None:
    """Write ``status: failed`` (``interrupted`` for Ctrl-C) with the error to ``result.json``, and add
    notes to ``exc`` saying where it is recorded and how to go on."""
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    try:
        result = previous_result(run_dir) or {}
        result.update(status=status, error_type=type(exc).__name__, error=str(exc))
        write_result(run_dir, result)
        exc.add_note(f"recorded in {run_dir / RESULT} (status: {status})")
    except SdexpError as unrecorded:  # a full disk, or a result.json damaged meanwhile
        exc.add_note(f"{RESULT} could not record it either ({unrecorded})")
    if (run_dir / CHECKPOINT).exists():
        exc.add_note("the last checkpoint is intact: run the same command again to resume from it")
    else:
        exc.add_note("run the same command again to start over")


def write_slurm_job(
    run_dir: Path, job_id: str, submitit_folder: str, runs_in_task: Sequence[str] | None = None
) -> None:
    """Record in ``slurm_job.json`` the SLURM job submitted to train this run and, where the job trains
    several runs (``runs_per_task``), their folder names."""
    record: dict[str, Any] = {"slurm_job_id": job_id, "submitit_folder": submitit_folder}
    if runs_in_task is not None:
        record["runs_in_task"] = list(runs_in_task)
    atomic_write_text(run_dir / SLURM_JOB, json.dumps(record, indent=2) + "\n")


def read_slurm_job(run_dir: Path) -> dict[str, str] | None:
    """The run's ``slurm_job.json`` (``slurm_job_id``, ``submitit_folder``), or None if it has none."""
    path = Path(run_dir) / SLURM_JOB
    if not path.exists():
        return None
    return read_file(
        path, _json_object, RunFolderError,
        "remove it if no SLURM job of this run is queued or running, then launch again",
    )  # fmt: skip


def write_config_files(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig | None = None) -> None:
    """Write ``.hydra/config.yaml`` (resolved) and, under Hydra, ``hydra.yaml`` and ``overrides.yaml``.

    run.py turns Hydra's own copy off (``hydra.output_subdir: null``) so that these are written only
    after the folder has been checked: a rejected command never overwrites a run's config.
    """
    files = {CONFIG: OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)}
    if hydra_cfg is not None:
        files[Path(HYDRA_DIR) / "hydra.yaml"] = {"hydra": OmegaConf.to_container(hydra_cfg, resolve=False)}
        files[OVERRIDES] = OmegaConf.to_container(hydra_cfg.overrides.task)
    for path, content in files.items():
        atomic_write_text(run_dir / path, OmegaConf.to_yaml(OmegaConf.create(content)))


def config_changes(run_dir: Path, cfg: DictConfig) -> list[str]:
    """``key: saved -> new`` for every key whose value differs from the run's saved config, leaving out
    :data:`RESUMABLE_CHANGES`; empty when nothing is saved yet."""
    if not (Path(run_dir) / CONFIG).exists():
        return []
    saved = flatten(read_config(run_dir))
    new = flatten(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return [
        f"{key}: {saved.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(saved.keys() | new.keys())
        if saved.get(key) != new.get(key) and key not in RESUMABLE_CHANGES
    ]


def check_config(run_dir: Path, cfg: DictConfig) -> None:
    """Raise :class:`RunFolderError` if ``run_dir`` holds a run whose config differs from ``cfg``
    (see :func:`config_changes`), naming the differing keys."""
    has_run = any((Path(run_dir) / name).exists() for name in (RESULT, CHECKPOINT))
    if has_run and not (Path(run_dir) / CONFIG).exists():
        raise RunFolderError(
            f"{run_dir} holds a run without its {CONFIG}, so its config cannot be compared with this one: "
            f"restore the file, or choose {OTHER_FOLDER}"
        )
    changes = config_changes(run_dir, cfg)
    if changes:
        raise RunFolderError(
            f"{run_dir} holds a run with another config ({'; '.join(changes)}): choose {OTHER_FOLDER} "
            "or remove this one"
        )


def _json_object(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"holds a {type(value).__name__}, not a JSON object")
    return value


RESULT_ADVICE = "restore it, or move it away to rebuild it from the checkpoint (run the same command again)"


def read_result(run_dir: Path) -> dict[str, Any]:
    """The run's ``result.json``, with null errors as NaN (:data:`FINAL_ERRORS`); a damaged one raises
    :class:`RunFolderError` naming it."""
    result = read_file(
        Path(run_dir) / RESULT, _json_object, RunFolderError,
        RESULT_ADVICE,
    )  # fmt: skip
    return {**result, **{k: math.nan for k in FINAL_ERRORS if k in result and result[k] is None}}


def _count(v: float) -> bool:
    return isinstance(v, int) and v >= 0


def _error(v: float) -> bool:
    return math.isnan(v) or 0 <= v <= 100  # percent; NaN: null in the file (no test split)


# result.json fields that must be numbers where present, with what each may be; and the fields a
# completed run must have.
NUMBER_FIELDS: dict[str, tuple[Callable[[float], bool], str]] = {
    "seed": (_count, "an integer >= 0"),
    "epochs_completed": (_count, "an integer >= 0"),
    "train_time_s": (lambda v: 0 <= v < math.inf, "a number of seconds >= 0"),
    **dict.fromkeys(FINAL_ERRORS, (_error, "a percentage from 0 to 100, or null")),
}
COMPLETED_FIELDS = ("train_time_s", "test_error", "test_error_at_best_val")


def _result_problem(result: dict[str, Any]) -> str | None:
    if result.get("status") not in STATUSES:
        return f"status {result.get('status')!r} is not one of {', '.join(STATUSES)}"
    for key, (ok, allowed) in NUMBER_FIELDS.items():
        value = result.get(key, 0)
        if not isinstance(value, int | float) or isinstance(value, bool) or not ok(value):
            return f"{key} is {value!r}, not {allowed}"
    missing = [key for key in COMPLETED_FIELDS if result["status"] == "completed" and key not in result]
    return f"a completed run without {', '.join(missing)}" if missing else None


def check_result(run_dir: Path, result: dict[str, Any]) -> None:
    """Raise :class:`RunFolderError` if the run's result (read from its folder) has a status sdexp
    never writes, a field of :data:`NUMBER_FIELDS` that is no number or out of its range, or is
    completed without one of :data:`COMPLETED_FIELDS`: a file edited by hand, or not sdexp's."""
    problem = _result_problem(result)
    if problem is not None:
        raise RunFolderError(f"{Path(run_dir) / RESULT}: {problem}: {RESULT_ADVICE}")


def previous_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``result.json``, or None if it has none yet."""
    return read_result(run_dir) if (Path(run_dir) / RESULT).exists() else None


def finished_result(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``result.json`` if the run finished (:data:`FINISHED`: a rerun would only repeat it),
    else None; one the analysis could not use (:func:`check_result`) raises :class:`RunFolderError`,
    rather than be skipped as finished or trained over."""
    previous = previous_result(run_dir)
    if previous is not None:
        check_result(run_dir, previous)
    return previous if previous is not None and previous.get("status") in FINISHED else None


def metrics_text(path: Path) -> str:
    """The text of a ``metrics.csv``; ValueError if its last line is cut short (:func:`write_metrics`
    ends every line, the last one too)."""
    text = Path(path).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("its last line is cut short")
    return text


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` as floats (``epoch`` as int)."""

    def parse(path: Path) -> list[dict[str, float]]:
        rows = csv.DictReader(io.StringIO(metrics_text(path), newline=""))
        if "epoch" not in (rows.fieldnames or ()):  # write_metrics always writes the header
            raise ValueError("no epoch column in its first line")
        return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in rows]

    return read_file(
        Path(run_dir) / METRICS, parse, RunFolderError,
        "restore it, or move it away: rerunning the command writes it again from the checkpoint",
    )  # fmt: skip


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config (``.hydra/config.yaml``) as plain nested dicts."""

    def parse(path: Path) -> dict[str, Any]:
        with open(path, encoding="utf-8") as f:
            config = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if not isinstance(config, dict):
            raise ValueError("not a YAML mapping")
        return config

    return read_file(
        Path(run_dir) / CONFIG, parse, RunFolderError,
        f"restore it, or choose {OTHER_FOLDER}",
    )  # fmt: skip


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, sub in tree.items():
        flat.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    return flat
