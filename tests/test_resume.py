"""Nothing lost: exact resume after SIGKILL, SIGUSR2/SIGTERM, finished runs, failures and bad input."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch.nn import functional as F

from sdexp import runs, train
from sdexp.checkpoint import load_checkpoint
from sdexp.config import CONF_DIR, compose_config, register_configs
from sdexp.data import build_data
from sdexp.preflight import job_folders
from sdexp.runs import RunFolderError
from sdexp.signals import StopSignals
from tests.conftest import ROOT, TINY, run_py

T = TypeVar("T")
TIMING = ("epoch_time_s", "images_per_s")
# Long enough (about 0.5 s an epoch here) to be stopped in the middle, deterministic on the CPU.
SLOW = [*TINY, "dataset.train_size=1024", "trainer.epochs=6", "trainer.deterministic=true"]


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *SLOW, *extra, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(run_dir: Path, *extra: str) -> tuple[int, str]:
    proc = start(run_dir, *extra)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def wait_for_epochs(run_dir: Path, proc: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        path = run_dir / runs.METRICS
        if path.exists() and len(runs.read_metrics(run_dir)) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach epoch {n} while running")


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The metrics of an uninterrupted run (in this process: the same numbers as run.py's)."""
    run_dir = tmp_path_factory.mktemp("reference")
    train.run(compose_config(SLOW), run_dir)
    return runs.read_metrics(run_dir)


def signalling_at_call(fn: Callable[..., T], n: int) -> Callable[..., T]:
    """``fn``, which raises SIGUSR2 as its ``n``-th call starts: a stop signal at a chosen point."""
    calls = 0

    def wrapped(*args: object, **kwargs: object) -> T:
        nonlocal calls
        calls += 1
        if calls == n:
            signal.raise_signal(signal.SIGUSR2)
        return fn(*args, **kwargs)

    return wrapped


def run_until_stopped(cfg: DictConfig, run_dir: Path) -> dict:
    """``train.run`` in this process, which a SIGUSR2 raised inside it stops; the run's result."""
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)  # what the signal is passed on to
    try:
        with pytest.raises(SystemExit) as stopped:
            train.run(cfg, run_dir)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped.value.code == 128 + signal.SIGUSR2
    return runs.read_result(run_dir)


@pytest.mark.parametrize("step", ["autograd", "segments"])
def test_a_stop_in_mid_epoch_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """In this process: SIGUSR2 arrives during step 5 of epoch 3 (raised from the loss), the run
    checkpoints there and ends, and the rerun ends with the uninterrupted run's metrics. The subprocess
    tests do the same with real signals from outside. With the segment-wise step too, against the
    plain autograd run: on the CPU the two are the same to the bit, the resumed one rebuilt."""
    common = [*TINY, "trainer.epochs=4", "trainer.deterministic=true"]
    cfg = compose_config([*common, f"trainer.step={step}"])
    train.run(compose_config(common), tmp_path / "reference")
    reference = runs.read_metrics(tmp_path / "reference")
    # 256 images in batches of 32: 8 steps an epoch
    monkeypatch.setattr(F, "cross_entropy", signalling_at_call(F.cross_entropy, 2 * 8 + 5))
    result = run_until_stopped(cfg, tmp_path / "run")
    assert (result["status"], result["epochs_completed"], result["interrupted_in_epoch"]) == (
        "interrupted",
        2,
        3,
    )
    monkeypatch.undo()
    train.run(cfg, tmp_path / "run")
    resumed = runs.read_result(tmp_path / "run")
    assert resumed["resumed_from"] == [{"epoch": 3, "step": 5}] and "interrupted_in_epoch" not in resumed
    assert without_timing(runs.read_metrics(tmp_path / "run")) == without_timing(reference)


def test_a_mid_epoch_resume_with_the_dataloader_says_it_is_not_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_config([*TINY, "dataset.loader=torch"])
    monkeypatch.setattr(F, "cross_entropy", signalling_at_call(F.cross_entropy, 5))
    run_until_stopped(cfg, tmp_path)
    monkeypatch.undo()
    train.run(cfg, tmp_path)
    assert "dataset.loader=torch: the rest of this epoch is not exactly" in caplog.text


# evaluate's calls: val, test each epoch
@pytest.mark.parametrize(("call", "epoch"), [(1, 1), (3, 2), (8, 4)])
def test_a_stop_in_the_evaluation_stops_it_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: int, epoch: int
) -> None:
    """SIGUSR2 as epoch 1's or 2's validation starts, or as the last epoch's test split does: the run
    stops without waiting for the evaluation, its checkpoint holds every step of the epoch, and the
    rerun evaluates the epoch and ends with the uninterrupted run's metrics, without PyTorch's warning
    that a schedule stepped before its optimizer skips a rate (it does not, here)."""
    cfg = compose_config([*TINY, "trainer.epochs=4", "trainer.deterministic=true"])
    train.run(cfg, tmp_path / "reference")
    monkeypatch.setattr(train, "evaluate", signalling_at_call(train.evaluate, call))
    result = run_until_stopped(cfg, tmp_path / "run")
    assert (result["status"], result["epochs_completed"], result["interrupted_in_epoch"]) == (
        "interrupted",
        epoch - 1,
        epoch,
    )
    monkeypatch.undo()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.run(cfg, tmp_path / "run")
    assert not [w.message for w in caught if "lr_scheduler" in str(w.message)]
    resumed = runs.read_result(tmp_path / "run")
    assert resumed["status"] == "completed" and resumed["resumed_from"] == [{"epoch": epoch, "step": 8}]
    reference = runs.read_metrics(tmp_path / "reference")
    assert without_timing(runs.read_metrics(tmp_path / "run")) == without_timing(reference)


@pytest.mark.parametrize(("epoch", "status"), [(1, "interrupted"), (2, "completed")])
def test_a_stop_after_an_epochs_checkpoint_trains_no_more_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, epoch: int, status: str
) -> None:
    """The signal comes after epoch 1 of 2 is saved: the run stops before epoch 2's first step. After
    the last epoch: nothing is left to resume, so the run is completed; the signal still stops the
    process (a sweep running its jobs in it must not start the next)."""
    log_epoch = train._log_epoch

    def log_that_signals(row: dict, epochs: int) -> None:
        log_epoch(row, epochs)
        if row["epoch"] == epoch:
            signal.raise_signal(signal.SIGUSR2)

    monkeypatch.setattr(train, "_log_epoch", log_that_signals)
    cfg = compose_config([*TINY, "trainer.epochs=2"])
    result = run_until_stopped(cfg, tmp_path)
    assert (result["status"], result["epochs_completed"], result.get("interrupted_in_epoch")) == (
        status,
        epoch,
        2 if status == "interrupted" else None,
    )
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.endswith("the run had completed: nothing to resume" if epoch == 2 else "resume")
    monkeypatch.undo()
    train.run(cfg, tmp_path)
    resumed = [{"epoch": 2, "step": 0}] if epoch == 1 else []  # a completed run is not trained again
    assert runs.read_result(tmp_path).get("resumed_from") == resumed


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_exactly(tmp_path: Path, reference: list[dict]) -> None:
    proc = start(tmp_path)
    wait_for_epochs(tmp_path, proc, 2)
    proc.kill()
    proc.wait()
    killed_after = len(runs.read_metrics(tmp_path))
    assert runs.read_result(tmp_path)["status"] == "running"  # SIGKILL leaves no chance to record
    assert killed_after < 6
    code, out = finish(tmp_path)
    assert code == 0, out
    assert "at step 0" in out  # from the end of an epoch
    assert without_timing(runs.read_metrics(tmp_path)) == without_timing(reference)
    result = runs.read_result(tmp_path)
    assert result["status"] == "completed"
    assert [r["step"] for r in result["resumed_from"]] == [0]


@pytest.mark.slow
def test_a_folder_another_process_trains_in_is_refused(tmp_path: Path) -> None:
    proc = start(tmp_path, "trainer.epochs=100")
    try:
        wait_for_epochs(tmp_path, proc, 1)
        code, out = finish(tmp_path, "trainer.epochs=100")
        assert proc.poll() is None  # the first one trains on
    finally:
        proc.kill()
        proc.wait()
    assert code == 2, out
    assert f"is in use by another process (pid {proc.pid} on {socket.gethostname()})" in out
    assert "in use" not in (tmp_path / runs.LOG).read_text()  # the first one's log says nothing of it
    with runs.exclusive(tmp_path):  # the lock went with the killed process
        assert (tmp_path / runs.LOCK).read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"


def test_a_file_system_without_locks_trains_unlocked_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_locks(*_args: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runs.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING), runs.exclusive(tmp_path):
        assert (tmp_path / runs.LOCK).exists()
    assert f"cannot lock {tmp_path / runs.LOCK} ([Errno {errno.ENOLCK}] No locks available)" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("job", "then"),
    [(None, "run the same command again to resume"), ("812", "SLURM requeues the job, which resumes")],
)
def test_the_stop_line_says_what_comes_next(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, job: str | None, then: str
) -> None:
    """SIGUSR2 outside SLURM (sent by hand, say) is requeued by nobody: the line says to rerun."""
    for variable in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(variable, raising=False)
    if job:
        monkeypatch.setenv("SLURM_JOB_ID", job)
    stop = StopSignals()
    stop.received = signal.SIGUSR2
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)  # what the signal is passed on to
    try:
        with pytest.raises(SystemExit):
            stop.forward()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert capsys.readouterr().err.strip().startswith(f"stopped (SIGUSR2): checkpoint written; {then}")


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_stop_signal_checkpoints_and_rerun_resumes(
    tmp_path: Path, reference: list[dict], sig: signal.Signals
) -> None:
    proc = start(tmp_path)
    wait_for_epochs(tmp_path, proc, 1)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"received {sig.name}" in out
    result = runs.read_result(tmp_path)
    assert result["status"] == "interrupted"
    done = result["epochs_completed"]
    assert 1 <= done < 6 and result["interrupted_in_epoch"] == done + 1
    before = runs.read_metrics(tmp_path)
    code, out = finish(tmp_path)
    assert code == 0, out
    assert f"resuming epoch {done + 1} at step" in out  # mid-epoch: the steps done are kept
    after = runs.read_metrics(tmp_path)
    assert after[:done] == before[:done]  # kept, not retrained
    assert without_timing(after) == without_timing(reference)
    assert [r["epoch"] for r in runs.read_result(tmp_path)["resumed_from"]] == [done + 1]


def test_finished_run_is_not_retrained(tmp_path: Path) -> None:
    cfg = compose_config(TINY)
    train.run(cfg, tmp_path)
    snapshot = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    result = train.run(cfg, tmp_path)
    assert result["status"] == "completed"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == snapshot
    (tmp_path / runs.METRICS).unlink()  # a damaged one moved away, as status.py advises
    assert train.run(cfg, tmp_path)["status"] == "completed"
    assert (tmp_path / runs.METRICS).read_bytes() == snapshot[runs.METRICS]  # from checkpoint.pt
    (tmp_path / runs.RESULT).unlink()  # likewise: rebuilt as it was, not "resumed" past the last epoch
    assert train.run(cfg, tmp_path)["status"] == "completed"
    assert (tmp_path / runs.RESULT).read_bytes() == snapshot[runs.RESULT]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_corrupt_checkpoint_is_named_and_nothing_changes(tmp_path: Path) -> None:
    cfg = compose_config(TINY)
    train.run(cfg, tmp_path)
    result = runs.read_result(tmp_path)
    result["status"] = "interrupted"
    runs.write_result(tmp_path, result)
    checkpoint = tmp_path / runs.CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated
    before = _files(tmp_path)
    with pytest.raises(RunFolderError, match=f"{checkpoint}: it is damaged or not an sdexp checkpoint"):
        train.run(cfg, tmp_path)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("change", ["fewer images", "fewer classes", "fewer classes, older checkpoint"])
def test_a_run_is_not_resumed_on_other_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A stopped run whose data set changed since (images removed, a class folder gone) is refused:
    a resumed epoch's sample order and the model's head would not fit the new data. A checkpoint from
    before runs recorded their data tells its classes by the model's head."""
    cfg = compose_config(TINY)
    data = build_data(cfg.dataset)
    train.run(cfg, tmp_path)
    result = runs.read_result(tmp_path)
    assert (result["train_images"], result["classes"]) == (256, 10)
    runs.write_result(tmp_path, {**result, "status": "interrupted"})
    checkpoint = load_checkpoint(tmp_path / runs.CHECKPOINT)
    if change.endswith("older checkpoint"):
        checkpoint["result"] = {
            k: v for k, v in checkpoint["result"].items() if k not in ("train_images", "classes")
        }
        monkeypatch.setattr(train, "load_checkpoint", lambda _path: checkpoint)
    if change == "fewer images":
        data = dataclasses.replace(data, train=data.train.subset(torch.arange(200)))
        says = "trained on 256 training images; dataset=synthetic now gives 200: restore the data, or"
    else:
        keep = data.train.labels < 9
        train_split = data.train.subset(keep.nonzero()[:, 0])
        data = dataclasses.replace(data, train=train_split, classes=data.classes[:9])
        both = f"256 training images and 10 classes; dataset=synthetic now gives {int(keep.sum())} and 9"
        says = both if change == "fewer classes" else "trained on 10 classes; dataset=synthetic now gives 9:"
    monkeypatch.setattr(train, "build_data", lambda _cfg: data)
    before = _files(tmp_path)
    with pytest.raises(RunFolderError, match=re.escape(says)):
        train.run(cfg, tmp_path)
    assert _files(tmp_path) == before  # refused before anything is written: still "interrupted"


@pytest.mark.parametrize(
    ("other", "says"),
    [("seed=1", "seed 1, not 0"), ("model.widths=[4,8,8]", "weights of another architecture")],
)
def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path, other: str, says: str) -> None:
    """A checkpoint copied in from another run's folder would resume that run under this one's config
    (and, with other weights, fail half-way as an internal error); it is refused before anything is
    written."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    train.run(compose_config([*TINY, "seed=0"]), ours)
    train.run(compose_config([*TINY, other]), theirs)
    runs.write_result(ours, {**runs.read_result(ours), "status": "interrupted"})
    (ours / runs.CHECKPOINT).write_bytes((theirs / runs.CHECKPOINT).read_bytes())
    before = _files(ours)
    with pytest.raises(
        RunFolderError, match=re.escape(f"{ours / runs.CHECKPOINT} is another run's: {says}:")
    ):
        train.run(compose_config([*TINY, "seed=0"]), ours)
    assert _files(ours) == before


def test_a_stopped_run_without_its_checkpoint_trains_again_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_config(TINY)
    train.run(cfg, tmp_path)
    runs.write_result(tmp_path, {**runs.read_result(tmp_path), "status": "interrupted"})
    (tmp_path / runs.CHECKPOINT).unlink()
    with caplog.at_level(logging.WARNING, logger="sdexp.train"):
        assert train.run(cfg, tmp_path)["status"] == "completed"
    assert "records 2 completed epochs but has no checkpoint.pt: training again from the first" in caplog.text
    assert runs.read_result(tmp_path)["resumed_from"] == []  # a new start, not a resumption


def test_other_config_in_a_run_folder_is_refused(tmp_path: Path) -> None:
    train.run(compose_config(TINY), tmp_path)
    before = _files(tmp_path)
    with pytest.raises(RunFolderError, match=r"trainer\.epochs: 2 -> 3"):
        train.run(compose_config([*TINY, "trainer.epochs=3"]), tmp_path)
    assert _files(tmp_path) == before
    # Keys that do not change results may differ.
    assert train.run(compose_config([*TINY, "trainer.progress=true"]), tmp_path)["status"] == "completed"


def test_a_checkpoint_temp_file_of_a_killed_run_is_removed_by_the_next(tmp_path: Path) -> None:
    """A process killed while writing its checkpoint leaves the temp file (full size): the run that
    takes the folder next removes it, as only the folder's holder writes there."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / f".{runs.CHECKPOINT}.x1y2z3.tmp").write_bytes(b"\0" * 1000)
    train.run(compose_config(TINY), tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_divergence_stops_with_epoch_and_step(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "optimizer.lr=1e30", "stochastic_depth=off"])
    result = train.run(cfg, tmp_path)
    assert result["status"] == "diverged"
    assert result["diverged_at"]["epoch"] == 1
    assert 1 <= result["diverged_at"]["step"] <= 8  # 256 images / batch 32
    assert runs.read_result(tmp_path) == result
    assert not (tmp_path / runs.CHECKPOINT).exists()  # no checkpoint of non-finite weights


@pytest.mark.parametrize("call", [8, 5], ids=["last step", "mid-epoch"])
def test_a_stop_in_the_epoch_that_diverges_still_stops_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, call: int
) -> None:
    """SIGUSR2 in the last step, or in the middle, of an epoch whose loss diverged: the run ends
    diverged (nothing to resume: no checkpoint of non-finite weights), and the signal is passed on, so
    that a sweep running its jobs in this process stops."""
    monkeypatch.setattr(F, "cross_entropy", signalling_at_call(F.cross_entropy, call))  # 8 steps an epoch
    result = run_until_stopped(compose_config([*TINY, "optimizer.lr=1e30", "stochastic_depth=off"]), tmp_path)
    assert result["status"] == "diverged" and result["diverged_at"]["epoch"] == 1
    assert result["diverged_at"]["step"] < call and not (tmp_path / runs.CHECKPOINT).exists()
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == "stopped (SIGUSR2): the run had diverged: nothing to resume"


def test_exception_is_recorded_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> float:
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(train, "evaluate", explode)
    with pytest.raises(RuntimeError) as caught:
        train.run(compose_config(TINY), tmp_path)
    result = runs.read_result(tmp_path)
    assert result["status"] == "failed"
    assert (result["error_type"], result["error"]) == ("RuntimeError", "out of memory, say")
    assert caught.value.__notes__ == [
        f"recorded in {tmp_path / runs.RESULT} (status: failed)",
        "run the same command again to start over",  # it failed in the first epoch: no checkpoint yet
    ]


def test_ctrl_c_is_recorded_as_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object, **kwargs: object) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.run(compose_config(TINY), tmp_path)
    assert runs.read_result(tmp_path)["status"] == "interrupted"


@pytest.mark.slow
def test_bad_value_leaves_an_existing_run_untouched(tmp_path: Path) -> None:
    assert run_py(*TINY, "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    before = _files(tmp_path / "run")
    proc = run_py(*TINY, "optimizer.lr=-1", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: optimizer.lr=-1.0 is not allowed: a finite number > 0"
    assert _files(tmp_path / "run") == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["hydra.run.dir=file/run"], "hydra.run.dir"),
        (["-m", "hydra.sweep.dir=file/${now:%Y}"], "hydra.sweep.dir"),
    ],
)
def test_unwritable_output_folder_is_one_line(tmp_path: Path, args: list[str], key: str) -> None:
    (tmp_path / "file").write_text("not a folder")
    command = [sys.executable, str(ROOT / "run.py"), *args[:-1], *TINY, args[-1]]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the output folder" in lines[0]
    assert key in lines[0]


@pytest.mark.slow
def test_default_run_folder_is_named_from_the_overrides(tmp_path: Path) -> None:
    proc = run_py(*TINY, "seed=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "outputs").iterdir()
    assert "seed=3" in folder.name and "model=resnet20" in folder.name
    assert "trainer.progress" not in folder.name  # keys that do not change results are left out
    again = run_py(*TINY, "seed=3", cwd=tmp_path)
    assert again.returncode == 0
    assert "already holds a completed run" in again.stdout + again.stderr


def test_folder_names_leave_out_exactly_the_resumable_keys() -> None:
    register_configs()  # conf/config.yaml's exclude_keys come from RESUMABLE_CHANGES through a resolver
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose(config_name="config", return_hydra_config=True)
        typed = compose(config_name="config", overrides=["trainer.progress=false", "dataset.num_workers=0",
                        "trainer.epochs=3", "seed=1"], return_hydra_config=True)  # fmt: skip
    assert typed.hydra.job.override_dirname == "seed=1,trainer.epochs=3"  # as Hydra names the folder
    job = [f"{key}=x" for key in runs.RESUMABLE_CHANGES] + ["trainer.epochs=3", "seed=1"]
    assert job_folders(config, [job]) == ["seed=1,trainer.epochs=3"]  # as status.py and the checks do


def test_files_are_readable_by_the_group(tmp_path: Path) -> None:
    train.run(compose_config(TINY), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in (runs.RESULT, runs.METRICS, runs.CHECKPOINT):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert json.loads((tmp_path / runs.RESULT).read_text())["status"] == "completed"
