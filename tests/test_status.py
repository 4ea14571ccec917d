"""analysis/status.py: where a sweep stands, from its folders, whatever state they are in."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sdexp import report, run_folders, runs, status, train
from sdexp.config import CONF_DIR, compose_config, register_configs
from tests.conftest import ROOT, TINY, ctrl_c_default, run_command

# One sweep of 3 seeds x 2 rules; the folder of each job, as Hydra names it (conf/config.yaml).
SWEPT = ["seed=0,1,2", "stochastic_depth=off,linear"]


def _name(seed: int, rule: str) -> str:
    return f"seed={seed},stochastic_depth={rule}"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder whose six runs are completed, running, stopped (killed), failed, queued in SLURM
    and not started; made from one real run, copied and edited."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose(config_name="config", overrides=TINY, return_hydra_config=True)
    hydra_cfg.hydra.overrides.task = (
        SWEPT  # the command line, as Hydra records it (TINY left out: shorter names)
    )
    OmegaConf.save(hydra_cfg, sweep_dir / status.MULTIRUN)

    done = sweep_dir / _name(0, "off")
    train.run(compose_config([*TINY, "seed=0", "stochastic_depth=off"]), done)

    def copy(seed: int, rule: str, **result: object) -> Path:
        run_dir = sweep_dir / _name(seed, rule)
        shutil.copytree(done, run_dir)
        runs.write_result(run_dir, {**runs.read_result(done), **result})
        return run_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    running = copy(0, "linear", status="running", epochs_completed=1, slurm_job_id="77_1")
    (running / runs.LOCK).write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")  # alive: this one
    stopped = copy(1, "off", status="running", epochs_completed=1)
    (stopped / runs.LOCK).write_text(f"pid {dead.pid} on {socket.gethostname()}\n")  # a process gone
    copy(1, "linear", status="failed", error="RuntimeError: boom")
    queued = sweep_dir / _name(2, "off")
    queued.mkdir()
    runs.write_slurm_job(queued, "78_4", "submitit")
    return sweep_dir  # seed=2 linear: not started


def test_status_of_a_sweep_in_every_state(sweep: Path) -> None:
    table = status.sweep_status([sweep])
    rows = {r["run"]: r for r in table.to_dict("records")}
    assert list(rows) == [f"seed={s} stochastic_depth={r}" for s in (0, 1, 2) for r in ("off", "linear")]
    states = {run: row["status"] for run, row in rows.items()}
    assert list(states.values()) == ["completed", "running", "stopped", "failed", "queued", "not started"]
    done, running = rows["seed=0 stochastic_depth=off"], rows["seed=0 stochastic_depth=linear"]
    metrics = runs.read_metrics(sweep / _name(0, "off"))
    assert (done["epoch"], done["last val error %"]) == ("2/2", metrics[-1]["val_error"])
    assert done["img/s"] == metrics[-1]["images_per_s"] and pd.isna(done["time left"])
    assert running["epoch"] == "1/2" and running["slurm job"] == "77_1"
    result = runs.read_result(sweep / _name(0, "off"))
    assert running["time left"].total_seconds() == pytest.approx(
        result["train_time_s"], abs=1
    )  # 1 epoch left
    assert rows["seed=2 stochastic_depth=off"]["slurm job"] == "78_4"
    line = status.totals(table)
    assert line.startswith("6 runs: 1 completed, 1 running, 1 stopped, 1 failed, 1 queued, 1 not started")
    assert "longest time left" in line


def test_status_names_a_damaged_file_and_goes_on(sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    (copy / _name(0, "off") / runs.RESULT).write_text('{"status": "comp')  # a half-written file
    (copy / _name(0, "linear") / runs.METRICS).write_text("epoch,val_error\n1,abc\n")
    states = status.sweep_status([copy])["status"].tolist()
    assert states[0].startswith("unreadable: ") and "result.json" in states[0]
    assert states[1].startswith("unreadable: ") and "metrics.csv" in states[1]
    assert states[2:] == ["stopped", "failed", "queued", "not started"]


def test_a_run_that_failed_before_training_is_failed_until_it_logs_again(tmp_path: Path) -> None:
    failure = "[2026-12-06 05:00:00,000][sdexp.failure][ERROR] - error: dataset cifar10: nothing found\n"
    (tmp_path / runs.LOG).write_text(failure)
    assert status.run_row(tmp_path)["status"] == "failed: dataset cifar10: nothing found"
    (tmp_path / runs.LOG).write_text(failure + "[2026-12-06 06:00:00,000][sdexp.train][INFO] - building\n")
    assert status.run_row(tmp_path)["status"] == "starting"  # rerun, not there yet


@pytest.mark.parametrize("text", ["", "foo,bar\n1,2\n"])
def test_a_metrics_file_without_its_header_is_unreadable(sweep: Path, tmp_path: Path, text: str) -> None:
    """Not "no epochs yet": metrics.csv is always written with its header."""
    run_dir = shutil.copytree(sweep / _name(0, "off"), tmp_path / "run")
    (run_dir / runs.METRICS).write_text(text)
    said = status.run_row(run_dir)["status"]
    assert said.startswith("unreadable: ") and "no epoch column in its first line" in said


@pytest.mark.parametrize(
    ("log", "state"),
    [
        (
            "[2026-12-06 05:00:00,000][sdexp.failure][ERROR] - error: KeyError: 'data' (the traceback is in"
            " train.log)\nTraceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'data'\n",
            "failed: KeyError: 'data' (the traceback is in train.log)",
        ),
        ("[2026-12-06 05:00:00,000][sdexp.failure][ERROR] - stopped (Ctrl-C)\n", "stopped"),
    ],
)
def test_how_a_run_ended_before_training_is_its_last_log_record(tmp_path: Path, log: str, state: str) -> None:
    """An unexpected error's traceback follows its line in train.log; Ctrl-C while the data loads is a
    record too: neither run is starting any more."""
    (tmp_path / runs.LOG).write_text("[2026-12-06 04:59:00,000][sdexp.data][INFO] - decoding\n" + log)
    assert status.run_row(tmp_path)["status"] == state


def test_a_damaged_lock_file_is_one_rows_matter(sweep: Path, tmp_path: Path) -> None:
    """Random bytes in a running run's .lock: its holder cannot be told, so it is still running."""
    run_dir = shutil.copytree(sweep / _name(0, "linear"), tmp_path / "run")
    (run_dir / runs.LOCK).write_bytes(bytes(range(128, 256)))
    assert status.run_row(run_dir)["status"] == "running"


def test_a_launchers_job_refused_before_it_started_is_failed(tmp_path: Path) -> None:
    """The local launcher's job whose own check refused it: console.log alone, its last line the error."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.CONSOLE_LOG).write_text("error: trainer.device=cuda but CUDA is not available here\n")
    assert status.sweep_status([tmp_path])["status"].tolist() == [
        "failed: trainer.device=cuda but CUDA is not available here"
    ]
    assert report.load_runs([tmp_path]).unusable["reason"].tolist() == [
        "no result.json: failed: trainer.device=cuda but CUDA is not available here"
    ]
    (run_dir / runs.LOG).write_text("[2026-12-06 06:00:00,000][sdexp.train][INFO] - building\n")
    assert status.run_row(run_dir)["status"] == "starting"  # started again since


def test_a_run_folder_that_failed_before_training_is_found_alone(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.LOG).write_text("[2026-12-06 05:00:00,000][sdexp.failure][ERROR] - error: no data\n")
    for path in (run_dir, tmp_path):  # given itself, or the folder above it
        assert status.sweep_status([path])[["run", "status"]].values.tolist() == [["run", "failed: no data"]]


def test_a_run_without_result_whose_lock_holder_is_gone_is_stopped(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / runs.LOG).write_text("[2026-12-06 05:00:00,000][sdexp.train][INFO] - building\n")
    assert status.run_row(tmp_path)["status"] == "starting"  # loading its data: no lock yet
    (tmp_path / runs.LOCK).write_text(f"pid {dead.pid} on {socket.gethostname()}\n")
    assert status.run_row(tmp_path)["status"] == "stopped"  # killed after it took the folder
    (tmp_path / runs.LOCK).write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
    assert status.run_row(tmp_path)["status"] == "starting"


def test_a_slurm_job_that_has_started_is_starting_though_its_run_has_written_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runs.LOG).write_text("[2026-12-06 05:00:00,000][sdexp.train][INFO] - building\n")
    runs.write_slurm_job(run_dir, "78_4", str(tmp_path / ".submitit" / "%j"))  # submitted again
    assert status.run_row(run_dir)["status"] == "queued"  # its train.log is the earlier job's
    (tmp_path / ".submitit" / "78_4").mkdir(parents=True)
    (tmp_path / ".submitit" / "78_4" / "78_4_0_log.out").touch()  # the node opened the job's log
    assert status.run_row(run_dir)["status"] == "starting"  # Python imports, or the job's setup lines
    (run_dir / runs.SLURM_JOB).write_text('{"slurm_job_id": 7}')  # damaged by hand: no traceback
    assert status.run_row(run_dir)["status"] == "queued"


def test_aggregate_sees_each_state_as_status_does(sweep: Path) -> None:
    """A killed run is stopped in both; a folder without result.json is listed by aggregate with why."""
    by_status = {r["run"]: r["status"] for r in status.sweep_status([sweep]).to_dict("records")}
    table, _, unusable = report.load_runs([sweep])
    for run_dir, state in zip(table["run_dir"], table["status"], strict=True):
        assert by_status[Path(run_dir).name.replace(",", " ")] == state
    assert unusable[["run_dir", "reason"]].values.tolist() == [
        [str(sweep / _name(2, "off")), "no result.json: queued"]
    ]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("config", "unreadable: "),  # a config without trainer.epochs names the file and key
        ("metrics", "completed"),  # metrics.csv without val_error: the row without it
        ("result", "running"),  # a running run's result without train_time_s: no time left
    ],
)
def test_files_lacking_a_field_give_a_row(sweep: Path, tmp_path: Path, edit: str, expected: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(sweep / _name(0, "off"), run_dir)
    if edit == "config":
        (run_dir / runs.CONFIG).write_text("seed: 0\ntrainer: null\n")
    elif edit == "metrics":
        (run_dir / runs.METRICS).write_text("epoch,test_error\n1,50.0\n")
    else:
        result = {k: v for k, v in runs.read_result(run_dir).items() if k != "train_time_s"}
        runs.write_result(run_dir, {**result, "status": "running", "epochs_completed": 1})
        (run_dir / runs.LOCK).write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
    row = status.run_row(run_dir)
    assert row["status"].startswith(expected)
    if edit == "config":
        assert "config.yaml: trainer.epochs is None" in row["status"]
    assert pd.isna(row.get("time left"))
    assert pd.isna(row.get("last val error %")) == (edit != "result")


def _sweep_named_by(subdir: str, sweep: Path, other: Path, folders: dict[str, str]) -> None:
    """In ``other``, the record of ``sweep`` with ``hydra.sweep.subdir=subdir``, and copies of its runs
    (``folders``: its folder name -> the copy's)."""
    other.mkdir()
    record = OmegaConf.load(sweep / status.MULTIRUN)
    record.hydra.sweep.subdir = subdir
    OmegaConf.save(record, other / status.MULTIRUN)
    for name, copy in folders.items():
        shutil.copytree(sweep / name, other / copy)


def test_a_sweep_with_its_own_folder_names_and_several_sweeps(sweep: Path, tmp_path: Path) -> None:
    """Folders named by hydra.sweep.subdir=job${hydra.job.num} are the planned runs, not extra ones."""
    other = tmp_path / "other"
    _sweep_named_by("job${hydra.job.num}", sweep, other, {_name(0, "off"): "job0"})
    table = status.sweep_status([other])
    assert table[["run", "status"]].values.tolist()[:2] == [
        ["seed=0 stochastic_depth=off", "completed"],
        ["seed=0 stochastic_depth=linear", "not started"],
    ]
    assert status.totals(table).startswith("6 runs: 5 not started, 1 completed")
    both = status.sweep_status([sweep, other])["run"].tolist()
    assert len(both) == 12 and both[0] == f"{sweep}: seed=0 stochastic_depth=off"
    assert both[6] == f"{other}: seed=0 stochastic_depth=off"


def test_folders_named_from_the_jobs_own_values_are_listed_as_found(sweep: Path, tmp_path: Path) -> None:
    """A subdir such as s${seed} is resolved in each started job; from the sweep's record alone every
    job would get one name, so each folder found is listed under its own name, not another job's."""
    other = tmp_path / "other"
    folders = {_name(0, "off"): "s0_off", _name(1, "linear"): "s1_linear"}
    _sweep_named_by("s${seed}_${stochastic_depth.rule}", sweep, other, folders)
    table = status.sweep_status([other])
    assert table[["run", "status"]].values.tolist() == [["s0_off", "completed"], ["s1_linear", "failed"]]


def test_a_run_the_sweeps_record_no_longer_plans_is_named_by_what_sets_it_apart(
    sweep: Path, tmp_path: Path
) -> None:
    """A folder of an earlier command into the sweep folder (its record now plans other runs) is named by
    its overrides less those the sweep's jobs share, not by its folder's long name; one without
    readable overrides by its folder, as is a run folder given on its own."""
    other = tmp_path / "other"
    record = OmegaConf.load(sweep / status.MULTIRUN)
    record.hydra.overrides.task = ["trainer.epochs=2", "model.widths=[4,8,16]", "seed=0,1"]
    other.mkdir()
    OmegaConf.save(record, other / status.MULTIRUN)
    earlier = "model.widths=[4,8,16],seed=7,stochastic_depth=linear,trainer.epochs=2"
    shutil.copytree(sweep / _name(0, "off"), other / earlier)
    overrides = ["trainer.epochs=2", "model.widths=[4,8,16]", "seed=7", "stochastic_depth=linear"]
    OmegaConf.save(OmegaConf.create(overrides), other / earlier / runs.OVERRIDES)
    shutil.copytree(sweep / _name(0, "off"), other / "no_overrides")
    table = status.sweep_status([other])
    assert table["run"].tolist() == ["seed=0", "seed=1", "seed=7 stochastic_depth=linear", "no_overrides"]
    assert status.sweep_status([other / earlier])["run"].tolist() == [earlier]


def test_a_cut_metrics_line_makes_the_run_unreadable(sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(sweep / _name(0, "off"), copy)
    (copy / runs.METRICS).write_text((copy / runs.METRICS).read_text()[:-3])
    assert "its last line is cut short" in status.run_row(copy)["status"]


def test_an_unknown_status_is_unreadable(sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(sweep / _name(0, "off"), copy)
    (copy / runs.RESULT).write_text('{"status": "weird"}')
    shown = status.run_row(copy)["status"]
    assert shown.startswith(f"unreadable: {copy / runs.RESULT}: status 'weird' is not one of running, comp")


@pytest.mark.parametrize("text", ["", "foo: 1\n", "hydra: {}\n"])
def test_a_multirun_record_that_is_not_one_is_named(sweep: Path, tmp_path: Path, text: str) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    (copy / status.MULTIRUN).write_text(text)
    table = status.sweep_status([copy])  # the runs found are still shown
    assert len(table) == len(run_folders.run_folders_under(copy)) > 0
    assert [note.split(" (")[0] for note in table.attrs["notes"]] == [f"cannot read {copy / status.MULTIRUN}"]
    for folder in run_folders.run_folders_under(copy):
        shutil.rmtree(folder)
    with pytest.raises(runs.RunFolderError, match=f"cannot read {copy / status.MULTIRUN}"):
        status.sweep_status([copy])  # nothing else to show


@pytest.mark.slow
def test_status_command_prints_the_table_and_watches(sweep: Path, tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "analysis" / "status.py"), str(sweep)]
    proc = run_command(command, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split("|")[1].strip() == "run" and len(lines) == 2 + 6 + 1
    assert lines[-1].startswith("6 runs: 1 completed")
    never = run_command([*command, "--watch", "nan"], tmp_path)
    assert never.returncode == 2 and "--watch nan: give a number of seconds > 0" in never.stderr
    first = run_command([*command[:2], "--watch", str(sweep)], tmp_path)  # the option before the folder
    assert first.returncode == 2 and "(for the default 10 s, put --watch after the folders)" in first.stderr
    missing = run_command([*command[:2], str(tmp_path / "nowhere")], tmp_path)
    assert (
        missing.returncode == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such folder"
    )
    watching = subprocess.Popen(
        [*command, "--watch", "0.2"], stdout=subprocess.PIPE, text=True, preexec_fn=ctrl_c_default
    )
    tables = 0
    while tables < 2:  # refreshed: the table twice (started, as slowly as a busy machine may)
        line = watching.stdout.readline()
        assert line, "the command ended before printing two tables"
        assert "\033[2J" not in line  # a pipe, not a terminal: nothing to clear
        tables += line.startswith("6 runs: 1 completed")
    watching.send_signal(signal.SIGINT)
    watching.communicate(timeout=30)
    assert watching.returncode == 0  # Ctrl-C is how --watch ends


def test_a_run_folder_alone_is_a_sweep_of_one(sweep: Path) -> None:
    table = status.sweep_status([sweep / _name(0, "off")])
    assert table["status"].tolist() == ["completed"] and table["run"].tolist() == [_name(0, "off")]
    assert json.loads((sweep / _name(0, "off") / runs.RESULT).read_text())["status"] == "completed"


def test_an_empty_path_is_refused_not_read_as_this_folder(sweep: Path) -> None:
    with pytest.raises(runs.RunFolderError, match="an empty path was given"):
        status.sweep_status([sweep, ""])


def test_hidden_folders_and_python_environments_are_not_searched_unless_named(
    sweep: Path, tmp_path: Path
) -> None:
    """From a repository's folder: a venv's setuptools ships a ``.lock``, which is not a run."""
    shutil.copytree(sweep / _name(0, "off"), tmp_path / "outputs" / "run")
    for holder in (".venv/lib/site-packages/setuptools/_vendor", "venv/lib/_vendor", ".git/x"):
        (tmp_path / holder).mkdir(parents=True)
        (tmp_path / holder / runs.LOCK).write_text("")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert run_folders.run_folders_under(tmp_path) == {tmp_path / "outputs" / "run"}
    assert run_folders.run_folders_under(tmp_path / ".git") == {tmp_path / ".git" / "x"}  # named: searched
    assert status.sweep_status([tmp_path])["run"].tolist() == ["run"]
