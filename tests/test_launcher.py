"""The local parallel launcher (hydra/launcher=local): a queue of slots, one job per GPU or CPU worker."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import pickle
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hydra_plugins.sdexp_launcher import mps
from hydra_plugins.sdexp_launcher.jobs import Job, process_outcome, refuse_busy, run_state
from hydra_plugins.sdexp_launcher.local_launcher import LocalLauncher, slot_environments, visible_gpus
from hydra_plugins.sdexp_launcher.packed import PackedTask, run_environments
from hydra_plugins.sdexp_launcher.slurm_launcher import SlurmLauncher, check_settings
from sdexp import runs, train
from sdexp.config import compose_config
from sdexp.errors import SdexpError, Terminated
from sdexp.signals import StopSignals
from tests.conftest import ROOT, TINY, change_saved_epochs, ctrl_c_default


def sweep(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    launcher = ["hydra/launcher=local", "hydra.launcher.cpu_workers=2", "hydra.sweep.dir=sweep"]
    command = [sys.executable, str(ROOT / "run.py"), "-m", *launcher, *TINY, *extra]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_jobs_run_two_at_a_time_and_a_rerun_skips_them(tmp_path: Path) -> None:
    proc = sweep(tmp_path, "seed=0,1", "stochastic_depth=off,linear")
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr + proc.stdout
    assert log.index("#1 start") < log.index("#0 done")  # the second slot started before the first ended
    assert "4 runs: 4 new, 0 resumed, 0 skipped (finished before); 0 failed" in log
    assert "; every run: model=resnet20 dataset=synthetic model.widths=[4,8,16]" in log  # not on job lines
    assert "#0 done: seed=0 stochastic_depth=off\n" in log
    results = sorted((tmp_path / "sweep").glob("*/result.json"))
    assert len(results) == 4
    for path in results:
        result = json.loads(path.read_text())
        assert result["status"] == "completed"
        assert result["device_name"].endswith("1 thread)")  # 2 cores shared by 2 workers
        assert (path.parent / runs.CONSOLE_LOG).is_file()
    names = [p.parent.name for p in results]  # named from each job's overrides
    for seed in (0, 1):
        for rule in ("off", "linear"):
            assert sum(f"seed={seed},stochastic_depth={rule}" in n for n in names) == 1
    again = sweep(tmp_path, "seed=0,1", "stochastic_depth=off,linear")
    assert again.returncode == 0, again.stderr
    assert "4 runs: 0 new, 0 resumed, 4 skipped" in again.stderr + again.stdout


@pytest.mark.slow
def test_a_sweep_launched_in_batches_names_every_override_on_each_jobs_lines(tmp_path: Path) -> None:
    """Each batch alone would call its own values shared: the seed would go missing from job lines."""
    overrides = (
        "seed=0,1",
        "stochastic_depth=off,linear",
        "trainer.epochs=1",
        "hydra.sweeper.max_batch_size=2",
    )
    proc = sweep(tmp_path, *overrides)  # a batch per seed
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr + proc.stdout
    assert "every run" not in log
    line = log.split("#0 done: ")[1].splitlines()[0]
    assert line.startswith("model=resnet20") and "seed=0" in line and "stochastic_depth=off" in line


def test_a_jobs_lines_name_what_sets_it_apart_or_else_all_its_overrides() -> None:
    shared = frozenset({"model=resnet20", "hydra.sweep.dir=x"})
    job = Job(0, ["model=resnet20", "seed=1", "hydra.sweep.dir=x"], Path("run"), "new", shared=shared)
    assert job.shown == "seed=1"
    like = Job(1, ["model=resnet20", "hydra.sweep.dir=x"], Path("run1"), "new", shared=shared)
    assert like.shown == "model=resnet20"  # like jobs in folders named by their number: not a blank line


@pytest.mark.slow
def test_a_folder_holding_another_config_is_refused_without_starting_the_job(tmp_path: Path) -> None:
    assert sweep(tmp_path, "seed=0").returncode == 0
    [run_dir] = [p.parent for p in (tmp_path / "sweep").glob("*/result.json")]
    change_saved_epochs(run_dir, 3)  # 3 epochs then, 2 now
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = sweep(tmp_path, "seed=0")
    assert again.returncode != 0
    log = again.stderr + again.stdout
    summary = (
        "1 run: 0 new, 0 resumed, 0 skipped (finished before), "
        "1 refused (another config, a damaged file or a live process in the folder, or a file in its place)"
    )
    assert f"{summary}; 1 failed" in log
    assert "holds a run with another config (trainer.epochs: 3 -> 2)" in log.split("failed: ")[-1]
    assert "#0 start" not in log
    assert (
        again.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "run the same command again to retry them, once the refused runs' folders are fixed as their "
            "lines say: finished runs are skipped"
        )
    )
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # console.log too


@pytest.mark.slow
def test_a_file_where_a_jobs_folder_should_be_refuses_that_job_alone(tmp_path: Path) -> None:
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "s0").write_text("")
    proc = sweep(tmp_path, "seed=0,1", "trainer.epochs=1", "hydra.sweep.subdir=s${hydra.job.num}")  # as Hydra
    assert proc.returncode == 1, proc.stderr
    log = proc.stderr + proc.stdout
    assert "2 runs: 1 new, 0 resumed, 0 skipped (finished before), 1 refused" in log
    assert "seed=0: cannot make the run folder sweep/s0: sweep/s0 is a file" in log.split("failed: #0 ")[-1]
    assert "#1 done" in log and "#0 start" not in log and "Traceback" not in log


def test_one_slot_per_gpu_or_cpu_worker() -> None:
    assert slot_environments(["0", "3"], cpu_workers=4, cores=16) == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "3"},
    ]
    cpu = slot_environments([], cpu_workers=3, cores=16)
    assert cpu == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "5"}] * 3


def test_a_sweep_of_fewer_jobs_than_cpu_workers_shares_the_cores_among_its_jobs() -> None:
    one_job = slot_environments([], cpu_workers=2, cores=2, jobs=1)
    assert one_job == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}]
    three_jobs = slot_environments([], cpu_workers=4, cores=16, jobs=3)
    assert three_jobs == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "5"}] * 3
    many_jobs = slot_environments([], cpu_workers=2, cores=8, jobs=10)
    assert many_jobs == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4"}] * 2


def test_k_slots_per_gpu_spread_over_the_gpus() -> None:
    slots = slot_environments(["0", "3"], cpu_workers=4, cores=16, runs_per_gpu=3)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "3", "0", "3", "0", "3"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"runs_per_gpu": 0}, "hydra.launcher.runs_per_gpu=0 is not allowed: an integer >= 1"),
        ({"runs_per_gpu": "2"}, "hydra.launcher.runs_per_gpu=2 is not allowed"),
        ({"mps": "maybe"}, "hydra.launcher.mps=maybe is not allowed: auto, true or false"),
        ({"bogus": 1}, "hydra.launcher.bogus is not a config key; hydra.launcher has gpus, runs_per_gpu, "),
    ],
)
def test_bad_launcher_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(SdexpError, match=message):
        LocalLauncher(**settings)


def test_the_launchers_settings_are_its_presets_keys_in_order() -> None:
    """An unknown setting is answered with the list of the others, from the signature (``+key=``) or
    from the preset (``key=``): both lists must read the same."""
    preset = [key for key in OmegaConf.load(ROOT / "conf/hydra/launcher/local.yaml") if key != "_target_"]
    assert [name for name in inspect.signature(LocalLauncher).parameters if name != "unknown"] == preset


@pytest.mark.parametrize("value", [0, "2", True])
def test_bad_runs_per_task_is_refused(value: object) -> None:
    message = f"hydra.launcher.runs_per_task={value} is not allowed: an integer >= 1"
    with pytest.raises(SdexpError, match=message):
        SlurmLauncher(runs_per_task=value)


def test_runs_of_a_task_divide_its_cpus_and_take_its_gpus_in_turn() -> None:
    one_gpu = run_environments(3, {"SLURM_CPUS_PER_TASK": "8", "CUDA_VISIBLE_DEVICES": "5"})
    assert one_gpu == [{"OMP_NUM_THREADS": "2"}] * 3  # all on the task's GPU
    two_gpus = run_environments(3, {"SLURM_CPUS_PER_TASK": "2", "CUDA_VISIBLE_DEVICES": "1,4"})
    assert two_gpus == [
        {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "1"},
        {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "4"},
        {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "1"},
    ]


@pytest.mark.slow
def test_packed_task_trains_each_run_in_a_process_of_its_own_and_skips_finished_ones(tmp_path: Path) -> None:
    jobs = [Job(idx, [*TINY, f"seed={idx}"], tmp_path / f"seed={idx}", "new") for idx in range(2)]
    task = PackedTask(str(ROOT / "run.py"))
    outcomes = task(jobs)
    assert [o.status.name for o in outcomes] == ["COMPLETED", "COMPLETED"]
    assert [o.working_dir for o in outcomes] == [str(job.run_dir) for job in jobs]
    consoles = [(job.run_dir / runs.CONSOLE_LOG).read_text() for job in jobs]
    assert all(json.loads((job.run_dir / "result.json").read_text())["status"] == "completed" for job in jobs)
    again = task(jobs)  # as a requeued task: both finished, neither started again
    assert [o.status.name for o in again] == ["COMPLETED", "COMPLETED"]
    assert [(job.run_dir / runs.CONSOLE_LOG).read_text() for job in jobs] == consoles


def test_a_packed_run_stopped_while_it_loads_its_data_is_interrupted_and_the_signal_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.py ends with 143 when SIGTERM comes while it loads its data (not killed, -15): the run is
    interrupted, not failed, so the task passes the signal on (SLURM ends or requeues it)."""
    script = tmp_path / "loading.py"  # as run.py: the task gets SIGTERM, the run stops while it loads
    script.write_text("import os, signal, sys\nos.kill(os.getppid(), signal.SIGTERM)\nsys.exit(143)\n")
    forwarded = []
    monkeypatch.setattr(StopSignals, "forward", lambda self: forwarded.append(self.received))
    [outcome] = PackedTask(str(script))([Job(0, ["seed=0"], tmp_path / "seed=0", "new")])
    assert forwarded == [signal.SIGTERM]
    assert "exited with status 143" in str(outcome._return_value)


def fake_mps_control(folder: Path, start_status: int = 0) -> Path:
    """An ``nvidia-cuda-mps-control`` that records each call (its arguments, stdin and pipe folder) in
    ``calls.txt`` and exits with ``start_status`` when asked to start (``-d``)."""
    script = folder / mps.CONTROL
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$* stdin=$(cat) pipe=$CUDA_MPS_PIPE_DIRECTORY" >> "{folder}/calls.txt"\n'
        f'[ "$1" = "-d" ] && exit {start_status}\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder / "calls.txt"


def test_mps_is_wanted_where_gpus_are_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.INFO):
        assert not mps.wanted(True, 2, [])  # asked for, but no GPU: one line says so
    assert "hydra.launcher.mps=true: no GPU here, so no MPS" in caplog.text
    assert not mps.wanted("auto", 2, ["0"])  # no control program here
    fake_mps_control(tmp_path)
    assert mps.wanted("auto", 2, ["0"])
    assert not mps.wanted("auto", 1, ["0"]) and not mps.wanted("auto", 2, [])
    assert mps.wanted(True, 1, ["0"]) and not mps.wanted(False, 4, ["0"])


def test_mps_daemon_starts_for_the_sweep_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_mps_control(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    pipe = str((tmp_path / "sweep" / ".mps" / "pipe").absolute())
    with mps.daemon(tmp_path / "sweep", start=True) as env:
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == pipe and Path(env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
        assert calls.read_text().splitlines() == [f"-d stdin= pipe={pipe}"]
    assert calls.read_text().splitlines()[1:] == [f" stdin=quit pipe={pipe}"]
    with pytest.raises(KeyboardInterrupt), mps.daemon(tmp_path / "sweep", start=True):
        raise KeyboardInterrupt  # Ctrl-C during the sweep: stopped all the same
    assert calls.read_text().splitlines()[-1] == f" stdin=quit pipe={pipe}"


def test_mps_that_cannot_start_falls_back_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = fake_mps_control(tmp_path, start_status=1)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with mps.daemon(tmp_path / "sweep", start=True) as env:
        assert env == {}
    assert len(calls.read_text().splitlines()) == 1  # started, failed, never asked to stop
    assert "MPS could not start" in caplog.text and "share each GPU without it" in caplog.text


@pytest.mark.slow
def test_two_runs_share_one_gpu_under_the_sweeps_mps(tmp_path: Path) -> None:
    """A fake GPU (jobs train on the CPU; CUDA_VISIBLE_DEVICES lists one) and a fake MPS control."""
    calls = fake_mps_control(tmp_path)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=local",
               "hydra.launcher.runs_per_gpu=2", *TINY, "seed=0,1", "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr + proc.stdout
    assert "2 runs on 1 GPU(s), 2 per GPU" in log
    assert log.index("#1 start (CUDA_VISIBLE_DEVICES=0, CUDA_MPS_PIPE_DIRECTORY=") < log.index("#0 done")
    assert "#0 start (CUDA_VISIBLE_DEVICES=0, CUDA_MPS_PIPE_DIRECTORY=" in log
    assert log.index("MPS daemon started") < log.index("#0 start") < log.index("MPS daemon stopped")
    assert [line.split(" pipe=")[0] for line in calls.read_text().splitlines()] == [
        "-d stdin=",
        " stdin=quit",
    ]
    assert len(list((tmp_path / "sweep").glob("*/result.json"))) == 2


def test_visible_gpus_follow_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert visible_gpus() == ["2", "5"] and not caplog.messages
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a machine without GPUs: said
    assert visible_gpus() == ["2", "5"]
    assert caplog.messages == [
        "CUDA_VISIBLE_DEVICES=2,5 names 2 GPUs, but torch sees 0 GPUs: unset it (or set it to '') to run "
        "CPU workers"
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


@pytest.mark.slow
def test_sweeps_named_by_the_time_do_not_share_a_folder(tmp_path: Path) -> None:
    # Both sweeps start in the same year, as two default-named sweeps may start in the same second.
    command = [sys.executable, str(ROOT / "run.py"), "-m", *TINY, "trainer.epochs=1",
               "hydra.sweep.dir=out/${now:%Y}"]  # fmt: skip
    for _ in range(2):
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    year = time.strftime("%Y")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [year, f"{year}-2"]
    for sweep_dir in (tmp_path / "out").iterdir():
        assert len(list(sweep_dir.glob("*/result.json"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "said"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_a_signal_to_the_local_launcher_alone_stops_its_jobs_which_checkpoint_and_starts_no_more(
    tmp_path: Path, sig: signal.Signals, said: str
) -> None:
    """SIGTERM as a scheduler sends it; SIGINT as a terminal's Ctrl-C does, to the launcher's process
    group, which its jobs are not in: each job gets the signal once, passed on, and checkpoints."""
    tiny = [o for o in TINY if not o.startswith("trainer.epochs=")]
    command = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=local",
               "hydra.launcher.cpu_workers=2", *tiny, "trainer.epochs=300", "seed=0,1,2",
               "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_default, start_new_session=True,
    )  # fmt: skip

    def epochs_done() -> list[int]:
        done = []
        for path in (tmp_path / "sweep").glob("*/result.json"):
            try:
                done.append(json.loads(path.read_text())["epochs_completed"])
            except ValueError:  # being replaced
                done.append(0)
        return done

    deadline = time.monotonic() + 120
    while len([n for n in epochs_done() if n >= 1]) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the two first jobs did not train"
        time.sleep(0.2)
    os.killpg(proc.pid, sig)  # to the launcher's process group, as a terminal sends Ctrl-C
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"stopped ({said}); run the same command again to resume the sweep"
    )
    log = out + err
    assert f"{said}: starting no more jobs" in log and "failed" not in log
    assert log.count("stopped: ") == 2
    results = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/result.json")]
    assert [r["status"] for r in results] == ["interrupted", "interrupted"]  # the third never started
    assert all(r["epochs_completed"] < 300 for r in results)


JOB_ENDING_AS_SIGNALLED = """
import signal, sys, time
from pathlib import Path
from sdexp import runs

run_dir = Path(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("hydra.run.dir=")).strip("'"))
if "completes" in sys.argv:  # its result is written: the signal comes as the process ends
    errors = {"test_error": 9.0, "test_error_at_best_val": 9.0}
    runs.write_result(run_dir, {"status": "completed", "train_time_s": 1.0, **errors})
signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
(run_dir / "ready").touch()
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("job", "said"), [("completes", "#0 done: completes"), ("trains", "#0 stopped: trains")]
)
def test_a_job_whose_run_completed_as_the_sweep_stopped_is_done_not_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, job: str, said: str
) -> None:
    """The launcher's SIGTERM reaches a job that has written its result but not yet exited: its run
    completed (a rerun skips it), so the summary must not call it stopped."""
    script = tmp_path / "job.py"
    script.write_text(JOB_ENDING_AS_SIGNALLED)
    monkeypatch.setattr(sys, "argv", [str(script)])  # what the launcher starts for each job
    run_dir = tmp_path / "run"
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    slots.put({})

    def stop_when_ready() -> None:
        deadline = time.monotonic() + 60
        while not (run_dir / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stops the sweep

    threading.Thread(target=stop_when_ready, daemon=True).start()
    with caplog.at_level(logging.INFO), pytest.raises(Terminated):
        LocalLauncher()._run_all([Job(0, [job], run_dir, "new")], slots)
    assert said in caplog.text and "failed" not in caplog.text


@pytest.mark.slow
def test_jobs_of_a_killed_launcher_checkpoint_and_stop(tmp_path: Path) -> None:
    """``kill -9`` of the launcher (no handler runs) used to leave its jobs training out of reach and
    holding their folders; each now gets SIGTERM from the kernel, checkpoints and stops."""
    tiny = [o for o in TINY if not o.startswith("trainer.epochs=")]
    command = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=local",
               "hydra.launcher.cpu_workers=2", *tiny, "trainer.epochs=300", "seed=0,1",
               "hydra.sweep.dir=sweep"]  # fmt: skip
    launcher = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def results() -> list[dict]:
        found = []
        for path in (tmp_path / "sweep").glob("*/result.json"):
            with contextlib.suppress(ValueError):  # being replaced
                found.append(json.loads(path.read_text()))
        return found

    def folders() -> list[Path]:
        return [path.parent for path in (tmp_path / "sweep").glob("*/result.json")]

    try:
        deadline = time.monotonic() + 120
        while len([r for r in results() if r["epochs_completed"] >= 1]) < 2:
            assert launcher.poll() is None and time.monotonic() < deadline, "the two jobs did not train"
            time.sleep(0.2)
        launcher.kill()
        launcher.wait()
        while any(runs.in_use(folder) for folder in folders()) and time.monotonic() < deadline + 60:
            time.sleep(0.2)  # each job checkpoints, then exits and lets its folder go
        assert [r["status"] for r in results()] == ["interrupted", "interrupted"]
        assert all(
            runs.in_use(folder) is None and (folder / runs.CHECKPOINT).exists() for folder in folders()
        )
    finally:  # where the jobs did not stop, stop them: they would train 300 epochs
        launcher.kill()
        for folder in folders():
            holder = runs.lock_holder(folder)
            if holder and runs.in_use(folder):
                os.kill(holder[0], signal.SIGKILL)


def test_a_folder_another_process_trains_in_is_refused_without_starting_a_job(tmp_path: Path) -> None:
    """As when an earlier sweep's job still trains there: its job would load the data only to be
    refused, and the summary would say only that it exited with status 2."""
    jobs = [Job(0, [], tmp_path / "run", "new"), Job(1, [], tmp_path / "done", "skipped")]
    assert refuse_busy(jobs) == jobs
    with runs.exclusive(tmp_path / "run"), runs.exclusive(tmp_path / "done"):
        busy, skipped = refuse_busy(jobs)
    assert skipped == jobs[1]  # finished: not started, whoever holds it
    assert busy.state == "refused"
    assert busy.reason == (
        f"{tmp_path / 'run'} is in use by another process (pid {os.getpid()} on {socket.gethostname()}): "
        "let it finish or stop it, then run this again"
    )
    assert refuse_busy(jobs) == jobs  # released


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=local"], ["hydra/launcher=slurm"]])
def test_a_second_launch_of_a_sweep_being_launched_is_refused_before_it_writes_anything(
    tmp_path: Path, launcher: list[str]
) -> None:
    """Two launches of one sweep at once would start (or submit) each unfinished run twice, and the
    second would rewrite the first's multirun.yaml, by which status.py lists the sweep's jobs."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "multirun.yaml").write_text("the first launch's\n")
    command = [sys.executable, str(ROOT / "run.py"), "-m", *launcher, *TINY, "seed=0,1",
               f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    with runs.holding(sweep_dir / runs.LAUNCH_LOCK):  # as the first launch holds it
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    said = f"error: the sweep in {sweep_dir} is being launched by another command (pid {os.getpid()} on "
    assert proc.stderr.strip().splitlines()[-1].startswith(said), proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in sweep_dir.iterdir()) == [runs.LAUNCH_LOCK, "multirun.yaml"]  # no run folder
    assert (sweep_dir / "multirun.yaml").read_text() == "the first launch's\n"


@pytest.mark.slow
def test_a_sweep_holds_its_folder_until_it_ends_and_a_refused_one_leaves_no_lock_file(tmp_path: Path) -> None:
    """Held by the command (Hydra's basic launcher here), not by one batch of its jobs; a launcher that
    refuses its settings once the folder is held leaves the folder as it was."""
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "run.py"), "-m", *TINY, "trainer.epochs=100", "seed=0,1",
               "hydra.sweeper.max_batch_size=1", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(sweep_dir.glob(f"*seed=1*/{runs.RESULT}")) and time.monotonic() < deadline:
            time.sleep(0.2)  # the second batch has started
        assert list(sweep_dir.glob(f"*seed=1*/{runs.RESULT}")) and proc.poll() is None
        lock = sweep_dir / runs.LAUNCH_LOCK
        with pytest.raises(runs.FolderInUse, match=f"pid {proc.pid} on "), runs.holding(lock):
            pass
    finally:
        proc.kill()
        proc.wait()
    new = tmp_path / "new" / "sweep"
    refused = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=local",
               "hydra.launcher.cpu_workers=0", *TINY, "seed=0,1", f"hydra.sweep.dir={new}"]  # fmt: skip
    proc = subprocess.run(refused, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "cpu_workers=0 is not allowed" in proc.stderr, proc.stderr
    assert not (tmp_path / "new").exists()


def test_a_lock_file_removed_while_another_process_waits_for_it_is_not_held_twice(tmp_path: Path) -> None:
    """As when a command refused after preflight removes its sweep's lock file on its way out: one that
    waited for the removed file must hold the one at the path, or a third command would hold that too."""
    path = tmp_path / runs.LAUNCH_LOCK
    held: queue.Queue[bool] = queue.Queue()
    release = threading.Event()

    def second() -> None:
        with runs.holding(path) as lock:
            held.put(runs.is_at(lock, path))
            release.wait(10)

    waiter = threading.Thread(target=second)
    with runs.holding(path):
        waiter.start()
        time.sleep(0.3)  # it has opened the file, and tries to lock it for about a second
        path.unlink()
    try:
        assert held.get(timeout=10)
        with pytest.raises(runs.FolderInUse, match=f"pid {os.getpid()} on "), runs.holding(path):
            pass
    finally:
        release.set()
        waiter.join()
    error = runs.SweepInUse(tmp_path, "pid 1 on host")  # pickled with a SLURM job's outcome
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


@pytest.mark.parametrize(
    ("code", "console", "said"),
    [
        (-9, "", "killed by SIGKILL; see"),
        (-15, "error: an earlier attempt's line\n", "killed by SIGTERM; see"),
        (2, "error: seed=x is not allowed\n\n", "exited with status 2 (error: seed=x is not allowed); see"),
    ],
)
def test_a_failed_jobs_line_says_how_it_ended(tmp_path: Path, code: int, console: str, said: str) -> None:
    tmp_path.joinpath(runs.CONSOLE_LOG).write_text(console)
    outcome = process_outcome(Job(3, ["seed=1"], tmp_path, "new"), code)
    assert str(outcome._return_value) == f"{said} {tmp_path / runs.CONSOLE_LOG}"


def test_a_finished_runs_metrics_moved_away_are_written_again_by_a_launcher(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """status.py advises moving a damaged metrics.csv away and rerunning; a launcher skips the finished
    run, so it writes the file again itself (as the run's own command does)."""
    cfg = compose_config(TINY)
    train.run(cfg, tmp_path)
    metrics = (tmp_path / runs.METRICS).read_bytes()
    (tmp_path / runs.METRICS).unlink()
    assert run_state(tmp_path, cfg) == ("skipped", "")
    assert (tmp_path / runs.METRICS).read_bytes() == metrics
    (tmp_path / runs.METRICS).unlink()
    checkpoint = tmp_path / runs.CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # damaged as well: the run stays finished
    with caplog.at_level(logging.WARNING):
        assert run_state(tmp_path, cfg) == ("skipped", "")
    assert f"{tmp_path / runs.METRICS} cannot be written again: cannot read checkpoint" in caplog.text
    assert not (tmp_path / runs.METRICS).exists()


def test_a_finished_run_whose_result_the_analysis_cannot_use_is_refused_not_skipped(tmp_path: Path) -> None:
    cfg = compose_config(TINY)
    train.run(cfg, tmp_path)
    runs.write_result(tmp_path, {**json.loads((tmp_path / runs.RESULT).read_text()), "test_error": "12.5"})
    state, reason = run_state(tmp_path, cfg)
    assert state == "refused"
    assert reason.startswith(f"{tmp_path / runs.RESULT}: test_error is '12.5', not a percentage")
    assert reason.endswith(f": {runs.RESULT_ADVICE}")


@pytest.mark.parametrize(
    ("launcher", "code"),
    [("parent", 0), ("gone", -signal.SIGTERM), (None, 0)],
    ids=["launcher alive", "launcher gone before the request", "started by hand"],
)
def test_a_job_asks_for_sigterm_at_its_launchers_end(launcher: str | None, code: int) -> None:
    """The job's side of what the kill -9 test above checks end to end: a job whose launcher is already
    gone stops at once; a job started by hand is left alone."""
    script = (
        "import os, sys\n"
        "from sdexp import signals\n"
        "signals.stop_with_the_launcher()\n"
        "assert signals.LAUNCHER_PID not in os.environ\n"
    )
    pid = {"parent": str(os.getpid()), "gone": str(2**22 + 1)}.get(launcher)  # above Linux's largest pid
    env = {k: v for k, v in os.environ.items() if k != "SDEXP_LAUNCHER_PID"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env={**env, **({"SDEXP_LAUNCHER_PID": pid} if pid else {})},
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr


@pytest.mark.parametrize(
    ("said", "line"),
    [
        (
            "sbatch: error: invalid partition specified: nosuch\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified",
            "sbatch refused the array (sbatch: error: invalid partition specified: nosuch): nothing was "
            "submitted",
        ),
        (  # the array may exist all the same
            "sbatch: error: Socket timed out on send/recv operation",
            "sbatch failed (sbatch: error: Socket timed out on send/recv operation): see squeue before "
            "running the sweep again",
        ),
    ],
)
def test_an_sbatch_failure_is_one_line_that_says_whether_anything_was_submitted(
    monkeypatch: pytest.MonkeyPatch, said: str, line: str
) -> None:
    from submitit.core.utils import FailedJobError

    def failing(*_args: object) -> None:
        raise FailedJobError(said)

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(SlurmLauncher, "_executor", lambda self: None)
    monkeypatch.setattr(SlurmLauncher, "_submit_array", failing)
    with pytest.raises(SdexpError) as raised:
        SlurmLauncher()._submit([])
    assert str(raised.value) == line


def test_slurm_settings_are_checked_before_anything_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """What submitit or sbatch would refuse only once the sweep folder is written; null leaves a setting
    to SLURM."""
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")  # a login node
    with pytest.raises(SdexpError, match=r"hydra\.launcher\.foo is not a config key: conf/hydra/launcher"):
        check_settings({"foo": 1})
    check_settings({"mail_user": "me@example.org"})  # any of submitit's SLURM settings
    check_settings({"mem_gb": None, "cpus_per_task": None, "mem_per_gpu": "8G", "cpus_per_gpu": 4})
    check_settings({"mem_gb": 0})  # all of a node's memory
    with pytest.raises(SdexpError, match=r"hydra\.launcher\.cpus_per_task=0 is not allowed: an integer >= 1"):
        check_settings({"cpus_per_task": 0})
    with pytest.raises(SdexpError, match=r"tasks_per_node=2 is not allowed: 1 \(a run trains in one process"):
        check_settings({"tasks_per_node": 2})  # two processes would train the same run
    check_settings({"nodes": 1, "tasks_per_node": None})
    for option in ("array", "signal", "open_mode"):  # array: the sweep would wait for tasks it never made
        with pytest.raises(SdexpError, match=rf"sets sbatch's --{option.replace('_', '-')} itself \("):
            check_settings({"additional_parameters": {option: "x"}})
    check_settings({"additional_parameters": {"account": "me", "qos": "normal"}})
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(SdexpError, match="sbatch, which is not on PATH here: start the sweep on the cluster"):
        check_settings({})
