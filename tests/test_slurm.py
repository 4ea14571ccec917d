"""Sweeps through the ``slurm`` launcher preset against a real SLURM cluster (tests/slurm/start.sh).

Skipped where no cluster answers (a laptop); CI starts one and sets SDEXP_REQUIRE_SLURM=1, which turns
the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sdexp import runs
from tests.conftest import ROOT, TINY, change_saved_epochs

pytestmark = pytest.mark.slow  # each test runs whole commands: the full suite only


def _answers(command: list[str]) -> bool:
    if shutil.which(command[0]) is None:
        return False
    try:
        return subprocess.run(command, capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# Both the controller and accounting: submitit reads job states with sacct, and without it a cancelled
# job is waited on until the test's timeout.
_silent = [command for command in ("sinfo", "sacct") if not _answers([command, "--noheader"])]
if _silent:
    why = f"{' and '.join(_silent)} does not answer here; tests/slurm/start.sh starts a cluster (as root)"
    if os.environ.get("SDEXP_REQUIRE_SLURM") == "1":
        raise RuntimeError(f"SDEXP_REQUIRE_SLURM=1 but {why}")
    pytest.skip(why, allow_module_level=True)

# The test cluster has no GPUs (a gpus_per_node=1 request would be refused) and a few cores.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5"]  # fmt: skip


def sweep_command(*overrides: str) -> list[str]:
    """run.py -m through the slurm preset: TINY runs, with ``overrides`` replacing TINY's keys."""
    keys = {o.split("=")[0] for o in overrides}
    tiny = [o for o in TINY if o.split("=")[0] not in keys]
    return [sys.executable, str(ROOT / "run.py"), "-m", *SLURM, *tiny, *overrides, "hydra.sweep.dir=sweep"]


def sweep(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run the sweep to its end; its output (Hydra logs to stdout) with stderr in ``stdout``."""
    return subprocess.run(
        sweep_command(*overrides), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600,
    )  # fmt: skip


def popen(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def results(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


def recorded(sweep_dir: Path) -> list[Path]:
    """The sweep's run folders that record a SLURM job."""
    return [p.parent for p in sweep_dir.glob(f"*/{runs.SLURM_JOB}")]


def output_acting_on(
    proc: subprocess.Popen, when: Callable[[str], bool], action: Callable[[], object]
) -> str:
    """All of ``proc``'s output, read as it comes; ``action`` runs on each line ``when`` picks. ``proc``
    is killed if it has not ended two minutes after its output did."""
    output = ""
    try:
        for line in proc.stdout:
            output += line
            if when(line):
                action()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    return output


def test_two_by_two_sweep_completes_records_job_ids_and_a_rerun_submits_nothing(tmp_path: Path) -> None:
    proc = sweep(tmp_path, "seed=0,1", "stochastic_depth=off,linear")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "4 runs: 4 new, 0 resumed, 0 skipped (finished before); 0 failed" in proc.stdout
    done = results(tmp_path / "sweep")
    assert len(done) == 4
    assert all(r["status"] == "completed" for r in done.values())
    assert all(r["device_name"].endswith(", 1 thread)") for r in done.values())  # cpus_per_task=1
    job_ids = {r["slurm_job_id"] for r in done.values()}
    assert len(job_ids) == 4 and None not in job_ids
    assert sorted((r["seed"], r["stochastic_depth"]) for r in done.values()) == [
        (0, "linear"), (0, "off"), (1, "linear"), (1, "off")
    ]  # fmt: skip
    again = sweep(tmp_path, "seed=0,1", "stochastic_depth=off,linear")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "4 runs, 0 to submit" in again.stdout
    assert "4 runs: 0 new, 0 resumed, 4 skipped (finished before); 0 failed" in again.stdout
    assert results(tmp_path / "sweep") == done
    # A folder whose run has another config (as if conf/ had changed since) is refused, not submitted.
    run_dir = next((tmp_path / "sweep").glob("*seed=1,stochastic_depth=off*"))
    change_saved_epochs(run_dir, 3)
    changed = sweep(tmp_path, "seed=0,1", "stochastic_depth=off,linear")
    assert changed.returncode != 0
    assert "4 runs, 0 to submit" in changed.stdout
    refused = (
        "1 refused (another config, a damaged file or a live process in the folder, or a file in its place)"
    )
    assert f"3 skipped (finished before), {refused}; 1 failed" in changed.stdout
    assert "trainer.epochs: 3 -> 2" in changed.stdout.split("failed: ")[-1]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_rerun_while_the_jobs_are_in_slurm_waits_for_them_instead_of_submitting_them_again(
    tmp_path: Path,
) -> None:
    # The first launch is stopped (SIGTERM) as soon as it waits for the two jobs it submitted (60 tiny
    # epochs, about 15 s each); the jobs go on, and the rerun must not submit them a second time.
    overrides = ("seed=0,1", "trainer.epochs=60")
    first = popen(sweep_command(*overrides), tmp_path)
    output = output_acting_on(
        first, lambda line: "waiting for 2 runs in SLURM" in line, lambda: first.send_signal(signal.SIGTERM)
    )
    assert first.returncode == 128 + signal.SIGTERM, output[-3000:]
    said = "stopped (SIGTERM); the submitted jobs go on in SLURM: run the same command again to wait for them"
    assert output.strip().splitlines()[-1].startswith(said)
    submitted = {p.name: runs.read_slurm_job(p)["slurm_job_id"] for p in recorded(tmp_path / "sweep")}
    again = sweep(tmp_path, *overrides)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "2 runs, 0 to submit" in again.stdout
    summary = "0 new, 0 resumed, 0 skipped (finished before), 2 queued (in SLURM from an earlier launch)"
    assert f"2 runs: {summary}; 0 failed" in again.stdout
    done = results(tmp_path / "sweep")
    assert {name: r["slurm_job_id"] for name, r in done.items()} == submitted  # the first launch's jobs
    assert all(r["status"] == "completed" and r["resumed_from"] == [] for r in done.values())


def test_a_gpu_run_submitted_from_a_host_without_one_is_checked_on_its_node(tmp_path: Path) -> None:
    # The submitting host (a login node) need not have the GPU a job asks for: the job is submitted,
    # and its node, which on this test cluster has none either, refuses it in one line.
    proc = sweep(tmp_path, "trainer.device=cuda")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1 run: 1 new, 0 resumed, 0 skipped (finished before); 1 failed" in proc.stdout
    said = "error: trainer.device=cuda but CUDA is not available here"
    assert f"ended FAILED ({said}" in proc.stdout.split("failed: ")[-1]  # the job's line, in the summary
    log_err = Path(proc.stdout.split("; see ")[-1].split()[0])
    assert said in log_err.read_text()


def test_a_failing_job_is_reported_as_it_fails_not_after_the_jobs_before_it(tmp_path: Path) -> None:
    # Job #0 would train for minutes; #1 fails at once. #0 is cancelled once #1's failure is reported.
    overrides = ("dataset=synthetic,imagefolder", "dataset.root=/nonexistent", "trainer.epochs=2000")
    proc = popen(sweep_command(*overrides), tmp_path)

    def cancel_the_long_run() -> None:
        [long_run] = (tmp_path / "sweep").glob("*dataset=synthetic*")
        assert (runs.previous_result(long_run) or {}).get("status") in (None, "running")
        subprocess.run(["scancel", runs.read_slurm_job(long_run)["slurm_job_id"]], check=True)

    output = output_acting_on(proc, lambda line: "] #1 failed" in line, cancel_the_long_run)
    assert proc.returncode == 1, output[-3000:]
    assert "2 runs: 2 new, 0 resumed, 0 skipped (finished before); 2 failed" in output
    assert "ended FAILED (error: dataset imagefolder: nothing found at /nonexistent" in output


def test_a_sweep_where_sacct_fails_warns_that_ended_jobs_may_go_unnoticed_and_still_completes(
    tmp_path: Path,
) -> None:
    # A cluster without accounting: sacct, first on the launcher's PATH, fails as SLURM's does there.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sacct"
    fake.write_text("#!/bin/sh\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        sweep_command(), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "failed (Slurm accounting storage is disabled): without SLURM accounting" in proc.stdout
    assert "1 run: 1 new, 0 resumed, 0 skipped (finished before); 0 failed" in proc.stdout


def test_a_job_of_an_earlier_launch_cancelled_while_the_rerun_waits_is_submitted_again(
    tmp_path: Path,
) -> None:
    # As the README says to do with a job to submit anew: scancel it, then rerun. SLURM may still list
    # the cancelled job (completing) when the rerun asks, so the rerun waits for it, then submits it.
    overrides = ("seed=0,1", "trainer.epochs=150")  # about 40 s: the rerun finds both in SLURM
    first = popen(sweep_command(*overrides), tmp_path)
    try:
        wait_for(lambda: len(recorded(tmp_path / "sweep")) == 2, "the first launch's submission")
    finally:
        first.kill()
        first.communicate()
    rerun = popen(sweep_command(*overrides), tmp_path)
    cancelled = next(p for p in recorded(tmp_path / "sweep") if "seed=1" in p.name)
    output = output_acting_on(  # cancelled once the rerun waits for both
        rerun,
        lambda line: "waiting for it" in line and "seed=1" in line,
        lambda: subprocess.run(["scancel", runs.read_slurm_job(cancelled)["slurm_job_id"]], check=True),
    )
    assert rerun.returncode == 0, output[-3000:]
    assert "of an earlier launch ended CANCELLED" in output and "submitting it again" in output
    assert (
        "0 new, 1 resumed, 0 skipped (finished before), 1 queued (in SLURM from an earlier launch); 0 failed"
        in output
    )
    done = results(tmp_path / "sweep")
    assert all(r["status"] == "completed" for r in done.values())
    assert len(runs.read_result(cancelled)["resumed_from"]) == 1
    assert [row["epoch"] for row in runs.read_metrics(cancelled)] == list(range(1, 151))


def test_cancelled_job_is_reported_failed_while_the_other_completes(tmp_path: Path) -> None:
    # The long job (60 tiny epochs, about 15 s) is cancelled after its first epoch.
    proc = popen(sweep_command("trainer.epochs=2,60"), tmp_path)

    def run_dir(epochs: int) -> Path:
        [found] = (tmp_path / "sweep").glob(f"*trainer.epochs={epochs},*")
        return found

    def long_run_trained_an_epoch() -> bool:
        try:
            return runs.read_result(run_dir(60))["epochs_completed"] >= 1
        except (ValueError, runs.RunFolderError):  # no folder yet, or no result.json in it yet
            return False

    try:
        wait_for(long_run_trained_an_epoch, "the long job's first epoch")
        subprocess.run(["scancel", runs.read_result(run_dir(60))["slurm_job_id"]], check=True, timeout=30)
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "2 runs: 2 new, 0 resumed, 0 skipped (finished before); 1 failed" in output
    failed = output.split("failed: ")[-1]
    assert "trainer.epochs=60" in failed and "CANCELLED" in failed
    assert runs.read_result(run_dir(2))["status"] == "completed"
    assert runs.read_result(run_dir(60))["status"] == "interrupted"  # SIGTERM: a checkpoint was written
    again = sweep(tmp_path, "trainer.epochs=2,60")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "2 runs: 0 new, 1 resumed, 1 skipped (finished before); 0 failed" in again.stdout
    resumed = runs.read_result(run_dir(60))
    assert resumed["status"] == "completed" and len(resumed["resumed_from"]) == 1
    assert [row["epoch"] for row in runs.read_metrics(run_dir(60))] == list(range(1, 61))


def check_requeued_after_time_limit(tmp_path: Path, count: int, epochs: int, *overrides: str) -> None:
    """Sweep ``count`` runs, all in one SLURM job, under a one-minute limit with SIGUSR2 15 s before it;
    once every run was interrupted by the signal, give the requeued job 10 minutes so that it finishes
    in its second attempt. Every run must have checkpointed, been requeued and gone on from where it
    stopped to complete all ``epochs``."""
    limit = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=15"]
    proc = popen(sweep_command(*limit, f"trainer.epochs={epochs}", *overrides), tmp_path)

    def all_interrupted() -> bool:
        try:
            found = [runs.read_result(p.parent) for p in (tmp_path / "sweep").glob("*/result.json")]
        except (ValueError, runs.RunFolderError):  # a result.json being replaced
            return False
        return len(found) == count and all(r["status"] == "interrupted" for r in found)

    try:
        wait_for(all_interrupted, "the time-limit signal", timeout=300)
        [job] = {r["slurm_job_id"] for r in results(tmp_path / "sweep").values()}
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True, timeout=30)
        output, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert f": {count} new, 0 resumed, 0 skipped (finished before); 0 failed" in output
    for run_dir in (p.parent for p in (tmp_path / "sweep").glob("*/result.json")):
        result = runs.read_result(run_dir)
        assert result["status"] == "completed" and result["slurm_job_id"] == job
        [resumed] = result["resumed_from"]
        assert resumed["epoch"] > 1 or resumed["step"] > 0  # it went on from where it stopped
        assert [row["epoch"] for row in runs.read_metrics(run_dir)] == list(range(1, epochs + 1))
        assert "received SIGUSR2" in (run_dir / runs.LOG).read_text()
    submitit_logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in submitit_logs


def test_time_limit_signal_checkpoints_requeues_and_resumes(tmp_path: Path) -> None:
    # SLURM signals up to 30 s before signal_delay_s asks, so the job is signalled 15-45 s after it
    # starts, in the middle of about 90 s of training (one thread; 46 s for half as many images in CI
    # left too little room). The requeued job waits cred_expire (10 s on the test cluster) to start.
    check_requeued_after_time_limit(tmp_path, 1, 30, "trainer.num_threads=1", "dataset.train_size=6144")


PACKED = ["hydra.launcher.runs_per_task=2", "hydra.launcher.cpus_per_task=2"]


def test_runs_per_task_packs_two_runs_into_each_task_and_a_rerun_submits_nothing(tmp_path: Path) -> None:
    proc = sweep(tmp_path, *PACKED, "seed=0,1", "stochastic_depth=off,linear")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "4 runs, 4 to submit (2 per array task)" in proc.stdout
    assert "4 runs: 4 new, 0 resumed, 0 skipped (finished before); 0 failed" in proc.stdout
    done = results(tmp_path / "sweep")
    assert len(done) == 4 and all(r["status"] == "completed" for r in done.values())
    assert all(r["device_name"].endswith(", 1 thread)") for r in done.values())  # 2 CPUs, 2 runs
    tasks: dict[str, set[str]] = {}
    for name, result in done.items():
        tasks.setdefault(result["slurm_job_id"], set()).add(name)
    assert sorted(len(names) for names in tasks.values()) == [2, 2]  # 2 tasks of 2 runs
    for names in tasks.values():
        for name in names:
            record = runs.read_slurm_job(tmp_path / "sweep" / name)
            assert set(record["runs_in_task"]) == names
            assert (tmp_path / "sweep" / name / "console.log").is_file()  # each run its own process
    again = sweep(tmp_path, *PACKED, "seed=0,1", "stochastic_depth=off,linear")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "4 runs, 0 to submit" in again.stdout
    assert "4 runs: 0 new, 0 resumed, 4 skipped (finished before); 0 failed" in again.stdout
    assert results(tmp_path / "sweep") == done


def test_time_limit_signals_both_runs_of_a_task_which_is_requeued_and_resumes_them(tmp_path: Path) -> None:
    # As in the single-run test above, with two runs of one thread each sharing the task's two CPUs:
    # each epoch takes about twice as long as the single run's, so 15 epochs outlast the signal (about
    # 3 minutes on a slow day of this 2-core machine, 1 on a fast one).
    check_requeued_after_time_limit(tmp_path, 2, 15, *PACKED, "dataset.train_size=6144", "seed=0,1")
