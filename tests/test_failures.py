"""Every bad input or broken environment: one line naming the problem, a non-zero exit, no traceback,
and nothing already written changed. One table per command line tool: a new case is one row.

Each case starts from a copy of one finished tiny run (``run``) in a folder of its own, damages what
its ``setup`` damages, runs the command there and checks the exit status, that the last line of stderr
holds the expected text, that no traceback was printed, and that every file that was there before
(the logs apart) is unchanged.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from analysis import aggregate
from sdexp import checkpoint, errors, run_folders, runs, signals, status, train
from sdexp.config import compose_config
from sdexp.errors import WriteError
from tests.conftest import ROOT, TINY, change_saved_epochs, ctrl_c_default, run_command

LOGS = {runs.LOG, "console.log", runs.LOCK}  # appended to, or naming the process, by design


class Case(NamedTuple):
    name: str
    setup: Callable[[Path], None]  # damages the copy of the finished run in ``run/``
    args: list[str]  # the command's arguments (``run.py``'s come after TINY)
    code: int
    says: str  # part of the last line of stderr
    then: Callable[[Path], bool] = lambda _: True  # anything else that must hold afterwards


def nothing(_: Path) -> None:
    pass


def no_folder_made(cwd: Path) -> bool:
    """A refused sweep leaves no folder: not even its time-named ``multirun/<date>/<time>``."""
    return not (cwd / "multirun").exists()


def write(relative: str, text: str) -> Callable[[Path], None]:
    return lambda cwd: (cwd / relative).write_text(text)


def image_tree(*classes: tuple[str, int]) -> Callable[[Path], None]:
    """``images/train/<class>/`` with that many (tiny, valid) PNG files each."""

    def make(cwd: Path) -> None:
        from PIL import Image

        (cwd / "images" / "train").mkdir(parents=True)
        for name, count in classes:
            (cwd / "images" / "train" / name).mkdir()
            for i in range(count):
                Image.new("RGB", (32, 32)).save(cwd / "images" / "train" / name / f"{i}.png")

    return make


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda cwd: [setup(cwd) for setup in setups] and None


def statuses(sweep: Path) -> list[str]:
    return [runs.read_result(p.parent)["status"] for p in sweep.glob(f"*/{runs.RESULT}")]


def lock_folder(cwd: Path) -> None:
    (cwd / "run" / runs.LOCK).unlink()
    (cwd / "run" / runs.LOCK).mkdir()


def remove(relative: str) -> Callable[[Path], None]:
    return lambda cwd: (cwd / relative).unlink()


def running(cwd: Path) -> None:
    result = runs.read_result(cwd / "run")
    runs.write_result(cwd / "run", {**result, "status": "running"})


IMAGES = ["dataset=imagefolder", "dataset.root=images", "dataset.cache_dir=cache", "hydra.run.dir=new"]
RUN = ["hydra.run.dir=run"]  # the finished run's folder
RESULT, CONFIG = f"run/{runs.RESULT}", f"run/{runs.CONFIG}"
RUN_PY = [
    Case("unknown option", nothing, ["model=resnet999"], 2, "model=resnet999: no such option; model is one"),
    Case("unknown preset", nothing, ["experiment=quickstrat"], 2, "experiment=quickstrat: no such option"),
    Case(
        "a key into an empty mapping",  # it takes a +
        nothing,
        ["hydra/launcher=slurm", "hydra.launcher.additional_parameters.qos=normal"],
        2,
        "additional_parameters has no keys yet: add one with a +, +hydra.launcher.additional_parameters.qos=",
    ),
    Case(
        "unknown launcher",  # the slurm preset's schema (refused if chosen) is not offered
        nothing,
        ["hydra/launcher=slurmm"],
        2,
        "hydra/launcher is one of basic, local, slurm, submitit_local, submitit_slurm",
    ),
    Case("null group", nothing, ["model=null"], 2, "model=null: model needs one of its options: resnet101, "),
    Case("null value", nothing, ["trainer.step=null"], 2, "trainer.step=null is not allowed: give one of"),
    Case("unknown optimizer", nothing, ["optimizer.name=adam"], 2, "optimizer.name: Invalid value 'adam'"),
    Case(
        "bad logger mode",
        nothing,
        ["logger.mode=ofline"],
        2,
        "logger.mode: Invalid value 'ofline', expected one of [offline, online, disabled]",
    ),
    Case("job number in a run", nothing, ["seed=${hydra:job.num}"], 2, "hydra.job.num is set in sweeps"),
    Case(
        "unknown Hydra value",
        nothing,
        ["dataset=cifar10", "dataset.root=${hydra:runtime.cdw}/data"],
        2,
        "dataset.root=${hydra:runtime.cdw}/data: hydra.runtime.cdw is null, or not in Hydra's config",
    ),
    Case("wrong type", nothing, ["seed=${trainer.device}"], 2, "seed: Value 'cpu' of type 'str'"),
    Case(
        "key not found", nothing, ["seed=${nowhere}"], 2, "seed=${nowhere}: Interpolation key 'nowhere' not"
    ),
    Case(
        "variable not set",
        nothing,
        ["-m", "seed=0,1", "optimizer.lr=${oc.env:SDEXP_NOPE}"],
        2,
        "optimizer.lr=${oc.env:SDEXP_NOPE}: KeyError raised while resolving interpolation",
    ),
    Case("null list", nothing, ["model.widths=null"], 2, "model.widths=null is not allowed: give a list"),
    Case(
        "key under a null",
        nothing,
        ["+dataset.mean.x=1"],
        2,
        "error: +dataset.mean.x=1: cannot apply it to the config",
    ),
    Case("null number", nothing, ["optimizer.lr=null"], 2, "optimizer.lr=null is not allowed: give a number"),
    Case("group removed", nothing, ["~logger"], 2, "no logger chosen: add logger=... to the command"),
    Case("value left missing", nothing, ["seed=???"], 2, "seed must be given: add seed=... to the command"),
    Case("key removed", nothing, ["~seed"], 2, "seed must be given: add seed=... to the command"),
    Case(
        "a group with a default added twice",
        nothing,
        ["+model=resnet20", "+model=resnet56"],
        2,
        "+model=resnet20: model has an option already: write model=resnet20, without the +",
    ),
    Case(
        "a preset added twice",
        nothing,
        ["-m", "+sweep=paper_cifar10", "+sweep=paper_svhn"],
        2,
        "+sweep=paper_cifar10 and +sweep=paper_svhn: sweep takes one option: give one",
    ),
    Case(
        "multistep that never steps",
        nothing,
        ["optimizer=sgd_cosine", "optimizer.schedule=multistep", "optimizer.milestones=[0.5]"],
        2,
        "schedule=multistep with optimizer.gamma=1 leaves the rate",
    ),
    Case(
        "milestones repeated",
        nothing,
        ["optimizer.milestones=[0.5,0.5]"],
        2,
        "optimizer.milestones=[0.5, 0.5] is not allowed: increasing fractions",
    ),
    Case("group key left missing", nothing, ["model.name=???"], 2, "model.name must be given: add model."),
    Case("group without name removed", nothing, ["~stochastic_depth"], 2, "no stochastic_depth chosen: add"),
    Case("list of one option", nothing, ["model=[resnet20]"], 2, "takes one option; write model=resnet20"),
    Case(
        "two options of a group",
        nothing,
        ["model=[resnet20,resnet32]", "hydra.run.dir=new"],
        2,
        "model takes one option; to train each, sweep them: -m model=resnet20,resnet32",
        then=lambda cwd: not (cwd / "new").exists(),
    ),
    Case(
        "two options of a group in a sweep of one job",
        nothing,
        ["-m", "model=[resnet20,resnet32]", "hydra.sweep.dir=sweep"],
        2,
        "sweep them: -m model=resnet20,resnet32; in job #0; no job was started",
        then=lambda cwd: not (cwd / "sweep").exists(),
    ),
    Case(
        "two options of a group in a sweep",
        nothing,
        ["-m", "dataset=[synthetic,cifar10]", "seed=0,1", "hydra.sweep.dir=sweep"],
        2,
        "dataset takes one option; to train each, sweep them: -m dataset=synthetic,cifar10; in job #0",
        then=lambda cwd: not (cwd / "sweep").exists(),
    ),
    Case(
        "debug before sweep",
        nothing,
        ["-m", "+debug=default", "+sweep=paper_cifar10"],
        2,
        "+debug=default comes before +sweep=paper_cifar10 on the command line",
        then=lambda cwd: not (cwd / "multirun").exists() and not (cwd / "debug").exists(),
    ),
    Case("two modes", nothing, ["-m", "--cfg=job"], 2, "Only one of --run, --multirun, --cfg"),
    Case("unknown key", nothing, ["trainer.epochz=3"], 2, "trainer.epochz is not a config key; trainer has"),
    Case(
        "+ on a key", nothing, ["+trainer.epochs=3"], 2, "trainer.epochs is in the config already: set it wi"
    ),
    Case(
        "+ on a group", nothing, ["+model=resnet56"], 2, "model has an option already: write model=resnet56"
    ),
    Case(
        "W&B key, csv",
        nothing,
        ["+logger.mode=online"],
        2,
        "mode=online is a W&B setting, unused by the csv logger (logger.name=csv): drop it",
    ),
    Case("wrong type", nothing, ["trainer.epochs=abc"], 2, "trainer.epochs: Value 'abc'"),
    Case(
        "sweep without -m",
        nothing,
        ["seed=0,1"],
        2,
        "seed=0,1: values separated by commas are a sweep, which only run.py -m runs: give one value",
    ),
    Case(
        "group sweep without -m",
        nothing,
        ["model=resnet20,resnet32"],
        2,
        "model=resnet20,resnet32: options separated by commas are a sweep, which only run.py -m runs",
    ),
    Case("unparsable", nothing, ["seed=["], 2, "cannot parse the override 'seed=['"),
    Case(
        "unquoted path",
        nothing,
        ["dataset.root=/data/ü"],
        2,
        "/data/ü); put the value in quotes (within the shell's): dataset.root='/data/ü'",
    ),
    Case("value out of range", nothing, ["optimizer.lr=-1"], 2, "optimizer.lr=-1.0 is not allowed"),
    Case(
        "bad swept value",
        nothing,
        ["-m", "stochastic_depth.final_survival=0.5,1.5", "hydra.sweep.dir=sweep"],
        2,
        "final_survival=1.5 is not allowed: 0 < final_survival <= 1; in job #1",
        then=lambda cwd: not (cwd / "sweep").exists(),  # no job started, not even the good one
    ),
    Case("no class folders", image_tree(), IMAGES, 2, "images/train is not an ImageFolder tree"),
    Case(
        "empty class folder",
        image_tree(("cat", 2), ("dog", 0)),
        IMAGES,
        2,
        "no valid file for the classes dog",
    ),
    Case(  # refused before decoding: the broken image is never read
        "one class folder",
        both(image_tree(("cat", 2)), write("images/train/cat/broken.png", "not an image")),
        IMAGES,
        2,
        "has 1 class (cat): classifying needs",
    ),
    Case("empty result.json", write(RESULT, ""), RUN, 2, "run/result.json (JSONDecodeError"),
    Case("corrupt result.json", write(RESULT, '{"sta'), RUN, 2, "cannot read"),
    Case("result.json not an object", write(RESULT, "[]"), RUN, 2, "not a JSON object"),
    Case("corrupt config.yaml", write(CONFIG, "a: [b"), RUN, 2, "config.yaml"),
    Case(
        "corrupt checkpoint", both(running, write("run/checkpoint.pt", "x")), RUN, 2, "cannot read checkpoint"
    ),
    Case("another config", nothing, [*RUN, "seed=5"], 2, "holds a run with another config (seed: 0 -> 5)"),
    Case(
        "output is a file",
        write("file", ""),
        ["hydra.run.dir=file/run"],
        2,
        "cannot write the output folder file/run (file is a file): set hydra.run.dir=...",
    ),
    Case(
        "a sweep job's folder is a file",
        both(lambda cwd: (cwd / "sweep").mkdir(), write("sweep/s0", "")),
        ["-m", "seed=0,1", "hydra.sweep.dir=sweep", "hydra.sweep.subdir=s${seed}"],
        2,
        "cannot make the folder sweep/s0: it is a file",
    ),
    Case(
        ".hydra is a file",
        both(lambda cwd: (cwd / "fresh").mkdir(), write("fresh/.hydra", "")),
        ["hydra.run.dir=fresh"],
        2,
        "fresh/.hydra is a file, not a folder",
    ),
    Case("empty output folder", nothing, ["hydra.run.dir="], 2, "hydra.run.dir is empty: give a folder"),
    Case("run without its config", remove(CONFIG), RUN, 2, "holds a run without its .hydra/config.yaml"),
    Case("lock is a folder", both(running, lock_folder), RUN, 2, "run/.lock (Is a directory): remove it"),
    Case(
        "a sweep preset without -m",
        nothing,
        ["+sweep=paper_cifar10", "hydra.run.dir=new"],
        2,
        "this config is a sweep over seed, stochastic_depth (hydra.sweeper.params",
        then=lambda cwd: not (cwd / "new").exists(),
    ),
    Case(
        "no MPS here",
        nothing,
        ["trainer.device=mps", "hydra.run.dir=new"],
        2,
        "trainer.device=mps but MPS is not available here: use auto or cpu",
        then=lambda cwd: not (cwd / "new").exists(),  # refused before the folder is claimed
    ),
    Case(
        "the one-graph step on the CPU",
        nothing,
        ["trainer.step=graph", "hydra.run.dir=new"],
        2,
        "trainer.step=graph needs a CUDA device (trainer.device=cpu): use trainer.step=segments",
        then=lambda cwd: not (cwd / "new").exists(),
    ),
    Case(
        "cpu_workers not a number",
        nothing,
        ["-m", "hydra/launcher=local", "hydra.launcher.cpu_workers=abc", "seed=0,1", "hydra.sweep.dir=sweep"],
        2,
        "hydra.launcher.cpu_workers=abc is not allowed: an integer >= 1",
        then=lambda cwd: not (cwd / "sweep").exists(),  # nothing written, no empty folder left
    ),
    *(
        Case(
            f"two jobs, one folder ({name} launcher)",
            nothing,
            ["-m", *launcher, "trainer.step=autograd,segments", "hydra.sweep.dir=sweep"],
            2,
            "#0 (trainer.step=autograd) and #1 (trainer.step=segments) would train in the same run folder",
            then=lambda cwd: not (cwd / "sweep").exists(),
        )
        for name, launcher in (("basic", []), ("local", ["hydra/launcher=local"]))
    ),
    *(
        Case(
            f"one subdir for all jobs ({name} launcher)",
            nothing,
            ["-m", *launcher, "seed=0,1", "hydra.sweep.dir=sweep", "hydra.sweep.subdir=same"],
            2,
            "hydra.sweep.subdir=same names one folder for all 2 jobs of the sweep",
            then=lambda cwd: not (cwd / "sweep").exists(),
        )
        for name, launcher in (("basic", []), ("local", ["hydra/launcher=local"]))
    ),
    Case(
        "a value listed twice",
        nothing,
        ["-m", "seed=0,1,0", "hydra.sweep.dir=sweep"],
        2,
        "jobs #0 and #2 are one job (seed=0): the sweep lists a value twice",
        then=lambda cwd: not (cwd / "sweep").exists(),
    ),
    *(
        Case(name, nothing, ["-m", "hydra/launcher=local", key, "seed=0,1"], 2, says, then=no_folder_made)
        for name, key, says in (
            ("GPU ids not a list", "hydra.launcher.gpus=0", "hydra.launcher.gpus=0 is not allowed: a list"),
            ("unknown launcher key", "+hydra.launcher.foo=1", "hydra.launcher.foo is not a config key;"),
            ("GPU listed twice", "hydra.launcher.gpus=[0,0]", "hydra.launcher.gpus=[0, 0] lists a GPU twice"),
        )
    ),
    *(
        Case(name, nothing, ["-m", *args, "hydra.sweep.dir=sweep"], 2, says, then=no_folder_made)
        for name, args, says in (
            (
                "a dot for the launcher's slash",
                ["hydra.launcher=local", "seed=0,1"],
                "hydra.launcher=local: choose the launcher with hydra/launcher=local",
            ),
            (
                "the slurm preset's schema as a launcher",
                ["hydra/launcher=sdexp_slurm", "seed=0,1"],
                "hydra/launcher=sdexp_slurm is the schema of the slurm preset, with submitit's defaults",
            ),
            (
                "a sweep over sweep presets",
                ["+sweep=paper_cifar10,paper_svhn"],
                "+sweep=paper_cifar10, +sweep=paper_svhn: each sweep preset is a grid of its own",
            ),
        )
    ),
    Case(
        "GPU not visible",
        nothing,
        ["-m", "hydra/launcher=local", "hydra.launcher.gpus=[99]", "seed=0,1", "hydra.sweep.dir=sweep"],
        2,
        "hydra.launcher.gpus: GPU 99 is not visible here",
    ),
    Case(
        "a sweep job fails (basic launcher)",
        nothing,
        ["-m", "dataset=cifar10,synthetic", "dataset.root=none", "hydra.sweep.dir=sweep"],
        2,
        "a failing job ends the sweep (hydra/launcher=local runs every job whatever the others do)",
        then=lambda cwd: statuses(cwd / "sweep") == [],  # it stopped the sweep: no run trained
    ),
    Case(
        "a sweep job fails",
        nothing,
        [
            "-m",
            "hydra/launcher=local",
            "dataset=synthetic,cifar10",
            "dataset.root=none",
            "hydra.sweep.dir=sweep",
        ],
        1,
        "1 of 2 runs failed (listed above)",
        then=lambda cwd: (
            statuses(cwd / "sweep") == ["completed"]  # the other job ran to its end
            and "error: dataset cifar10: nothing found at"
            in next((cwd / "sweep").glob("*cifar10*/console.log")).read_text()
            and "failed: dataset cifar10: nothing found at"  # status.py: it never wrote result.json
            in status.sweep_status([cwd / "sweep"]).set_index("run").loc["dataset=cifar10", "status"]
        ),
    ),
]
AGGREGATE = [
    Case("no such folder", nothing, ["nowhere"], 2, "nowhere: no such file or folder"),
    Case("unknown --by key", nothing, ["run", "--by", "model.nme"], 2, "model.nme not found in the runs"),
    Case("text --metric", nothing, ["run", "--metric", "model"], 2, "--metric model is not a result.json"),
    Case("config --metric", nothing, ["run", "--metric", "seed"], 2, "--metric seed is not a result.json"),
    Case("unknown --metric", nothing, ["run", "--metric", "eror"], 2, "eror is not a result.json number;"),
    Case("empty --out", nothing, ["run", "--out", ""], 2, "--out is empty"),
    Case("empty path", nothing, ["run", ""], 2, "an empty path was given"),
    Case("--out is a file", write("out", ""), ["run", "--out", "out/report"], 2, "out is a file, not a"),
    Case("--out where no file can be made (even by root)", nothing, ["run", "--out", "/proc/report"], 2,
         "--out /proc/report: no file can be written in /proc"),
    Case("summary.csv is a folder", lambda cwd: (cwd / "out" / "summary.csv").mkdir(parents=True),
         ["run", "--out", "out"], 2, "out/summary.csv: it is a folder, not a file"),
]  # fmt: skip


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name not in LOGS}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train.run(compose_config([*TINY, "trainer.epochs=1", "seed=0"]), run_dir)
    return run_dir


@pytest.fixture
def workspace(tmp_path: Path, finished_run: Path) -> Path:
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path


def check(case: Case, cwd: Path, command: list[str]) -> subprocess.CompletedProcess:
    case.setup(cwd)
    before = files(cwd)
    proc = run_command(command, cwd)
    assert proc.returncode == case.code, proc.stderr
    assert case.says in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr + proc.stdout
    after = files(cwd)
    assert {p: after.get(p) for p in before} == before  # nothing that was there changed
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("case", RUN_PY, ids=[c.name for c in RUN_PY])
def test_run_py(case: Case, workspace: Path) -> None:
    flags = [arg for arg in case.args if arg.startswith("-")]  # -m goes before the overrides
    overrides = [arg for arg in case.args if arg not in flags]
    command = [sys.executable, str(ROOT / "run.py"), *flags, *TINY, "trainer.epochs=1", *overrides]
    proc = check(case, workspace, command)
    if "-m" not in case.args:
        assert len(proc.stderr.strip().splitlines()) == 1
    new = workspace / "new"  # a data error leaves no lock and no result, only train.log with the error
    assert sorted(p.name for p in new.iterdir()) == [runs.LOG] if new.exists() else True
    assert case.then(workspace)


@pytest.mark.slow
@pytest.mark.parametrize("case", AGGREGATE, ids=[c.name for c in AGGREGATE])
def test_aggregate(case: Case, workspace: Path) -> None:
    check(case, workspace, [sys.executable, str(ROOT / "analysis" / "aggregate.py"), *case.args])


# The analysis never fails on what a sweep folder can hold: each damaged run is listed with the reason.
DAMAGED_RUNS = [
    ("empty result.json", write("run/result.json", ""), "JSONDecodeError"),
    ("result.json not an object", write("run/result.json", "3"), "not a JSON object"),
    ("unknown status", write("run/result.json", '{"status": "weird"}'), "status 'weird' is not one of"),
    ("no config", remove("run/.hydra/config.yaml"), "config.yaml (No such file or directory)"),
    ("corrupt metrics.csv", write("run/metrics.csv", "epoch\n1,2,3\n"), "its epochs are left out"),
    (
        "metrics.csv row cut short",
        lambda cwd: (cwd / "run/metrics.csv").write_text((cwd / "run/metrics.csv").read_text() + "2,0.1,2\n"),
        "metrics.csv (ValueError: line 3 is cut short)",
    ),
    (
        "metrics.csv last line cut short",
        lambda cwd: (cwd / "run/metrics.csv").write_text((cwd / "run/metrics.csv").read_text()[:-3]),
        "metrics.csv (ValueError: its last line is cut short)",
    ),
    (
        "text number",
        write(RESULT, '{"status": "completed", "test_error_at_best_val": "abc"}'),
        "is 'abc', not a",
    ),
    (
        "infinite time",
        write(RESULT, '{"status": "running", "train_time_s": Infinity}'),
        "train_time_s is inf, not a number of seconds >= 0",
    ),
    (
        "negative error",
        write(RESULT, '{"status": "running", "test_error": -6.41}'),
        "test_error is -6.41, not a percentage from 0 to 100, or null",
    ),
    (
        "negative epochs",
        write(RESULT, '{"status": "running", "epochs_completed": -1}'),
        "epochs_completed is -1, not an integer >= 0",
    ),
    (
        "completed without numbers",
        write(RESULT, '{"status": "completed"}'),
        "a completed run without train_time_s",
    ),
]


@pytest.mark.parametrize(("name", "damage", "reason"), DAMAGED_RUNS, ids=[d[0] for d in DAMAGED_RUNS])
def test_aggregate_lists_damaged_runs(
    name: str, damage: Callable[[Path], None], reason: str, workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    shutil.copytree(workspace / "run", workspace / "good")
    config = workspace / "good" / runs.CONFIG
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "seed": 1}))  # not a repeat
    damage(workspace)
    assert aggregate.main([str(workspace)]) == 0
    out = capsys.readouterr().out
    assert "Could not use (1)" in out and reason in out
    assert "| synthetic" in out  # the good run's row


def test_aggregate_lists_a_path_without_runs(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    (workspace / "empty").mkdir()
    assert aggregate.main([str(workspace / "run"), str(workspace / "empty")]) == 0
    out = capsys.readouterr().out
    assert "1 run in 1 group\n" in out and f"empty | {run_folders.NO_RUN_FOLDERS}" in out


def test_aggregate_with_nothing_completed_says_so(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    running(workspace)
    assert aggregate.main([str(workspace / "run"), "--out", str(workspace / "report")]) == 0
    out = capsys.readouterr().out
    assert "nothing to show yet: 1 run folder, none completed (1 running)" in out
    assert "wrote nothing to" in out and not (workspace / "report").exists()


def test_aggregate_groups_by_list_valued_keys(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """A sweep over models: their blocks_per_stage lists differ and become a grouping key."""
    config = runs.read_config(workspace / "run")
    shutil.copytree(workspace / "run", workspace / "other")
    config["model"].update(name="resnet32", blocks_per_stage=[5, 5, 5])
    (workspace / "other" / runs.CONFIG).write_text(yaml.safe_dump(config))
    assert aggregate.main([str(workspace)]) == 0
    out = capsys.readouterr().out
    assert "2 runs in 2 groups\n" in out and "[5, 5, 5]" in out and "[3, 3, 3]" in out


def test_a_full_disk_during_a_checkpoint_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint and the failure record both fail to write, as on a full disk: the message says
    both, and that the last checkpoint is intact."""

    disk_full = []

    def full(path: Path, *args: object) -> None:
        disk_full.append(path)
        raise WriteError(f"cannot write {path} (No space left on device; 0.0 MiB free there)")

    write_result = runs.write_result
    train.run(compose_config([*TINY, "trainer.epochs=1"]), tmp_path / "run")
    (tmp_path / "run" / runs.RESULT).unlink()  # so that a 2-epoch run resumes from the checkpoint
    change_saved_epochs(tmp_path / "run", 2)
    before = (tmp_path / "run" / runs.CHECKPOINT).read_bytes()
    monkeypatch.setattr(checkpoint, "save_checkpoint", full)
    monkeypatch.setattr(runs, "write_result", lambda *a: full(a[0]) if disk_full else write_result(*a))
    cfg = compose_config([*TINY, "trainer.epochs=2"])
    with pytest.raises(WriteError) as caught:
        train.run(cfg, tmp_path / "run")
    line, code = errors.message(caught.value)
    assert code == 1 and "\n" not in line
    assert "checkpoint.pt (No space left on device" in line
    assert "result.json could not record it either" in line
    assert "the last checkpoint is intact: run the same command again to resume from it" in line
    assert (tmp_path / "run" / runs.CHECKPOINT).read_bytes() == before


def test_tracebacks_asked_for_leave_the_checks_before_a_sweep_on(tmp_path: Path) -> None:
    """With SDEXP_TRACEBACK=1 a refused sweep prints the traceback and is refused all the same (Hydra
    would turn the check's exception into a warning and start the jobs)."""
    command = [sys.executable, str(ROOT / "run.py"), "-m", *TINY, "stochastic_depth.final_survival=0.5,1.5",
               "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SDEXP_TRACEBACK": "1"})  # fmt: skip
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stochastic_depth.final_survival=1.5 is not") and "in job #1" in last
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_an_unexpected_error_is_one_line_with_the_traceback_in_train_log(tmp_path: Path) -> None:
    """A bug (here: a checkpoint whose content is not what the trainer wrote) prints one line; the
    traceback is in train.log, and SDEXP_TRACEBACK=1 prints it."""
    command = [sys.executable, str(ROOT / "run.py"), *TINY, "trainer.epochs=1", "hydra.run.dir=run"]
    assert subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=300).returncode == 0
    import torch

    torch.save({"model": {}}, tmp_path / "run" / runs.CHECKPOINT)
    (tmp_path / "run" / runs.RESULT).unlink()
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and "the traceback is in" in line and "SDEXP_TRACEBACK=1" in line
    assert "Traceback" in (tmp_path / "run" / runs.LOG).read_text()
    shown = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "SDEXP_TRACEBACK": "1"})  # fmt: skip
    assert proc.returncode == 1 and "Traceback" in shown.stderr


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.5, 3.0])
def test_ctrl_c_while_starting_is_one_line(tmp_path: Path, after_s: float) -> None:
    """Ctrl-C during the first seconds (the imports, Hydra composing, the data): one line, status 130."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *TINY, "trainer.epochs=100", "hydra.run.dir=run"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_default,
    )  # fmt: skip
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("stopped (")


def test_ctrl_c_checkpoints_and_says_how_to_resume(tmp_path: Path) -> None:
    slow = [*TINY, "dataset.train_size=1024", "trainer.epochs=6"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *slow, "hydra.run.dir=run"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_default,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / runs.METRICS).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    last = out.strip().splitlines()[-1]
    assert "received SIGINT: stopped in epoch" in last and "run the same command again to resume" in last
    said = "stopped (SIGINT): checkpoint written; run the same command again to resume"
    assert err.strip().splitlines()[-1] == said
    result = runs.read_result(tmp_path / "run")
    assert result["status"] == "interrupted"
    assert (tmp_path / "run" / runs.CHECKPOINT).exists()


def test_sigterm_while_the_data_loads_is_reported_and_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's default would end the process without a line in the run's log."""
    build_data = train.build_data

    def terminated_while_loading(cfg: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)
        return build_data(cfg)

    monkeypatch.setattr(train, "build_data", terminated_while_loading)
    with pytest.raises(errors.Terminated) as caught:
        train.run(compose_config([*TINY, "trainer.epochs=1"]), tmp_path / "run")
    assert errors.message(caught.value) == ("stopped (SIGTERM)", 128 + signal.SIGTERM)
    assert not (tmp_path / "run").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_while_the_data_loads_goes_to_a_handler_someone_else_installed() -> None:
    """submitit's handler, which leaves SIGTERM to SLURM, is kept."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        with signals.reported_if_default(signal.SIGTERM):
            os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    ("override", "advised"),
    [("dataset.root=/data/ü", True), ("trainer..epochs=3", False), ("seed=${x", False), ("seed=[1", False)],
)
def test_quoting_is_advised_only_where_it_makes_the_override_parse(override: str, advised: bool) -> None:
    with pytest.raises(OverrideParseException) as raised:
        OverridesParser.create().parse_overrides([override])
    line, code = errors.message(raised.value)
    assert code == 2 and line.startswith(f"error: cannot parse the override {override!r}")
    assert ("put the value in quotes" in line) == advised


def test_an_sdexp_error_in_the_notebook_is_its_line_or_with_sdexp_traceback_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """IPython shows what ``_render_traceback_`` gives in place of the traceback."""
    try:
        raise runs.RunFolderError("multirun/x: no such file or folder")
    except runs.RunFolderError as exc:
        error = exc
    monkeypatch.delenv(errors.TRACEBACK_VARIABLE, raising=False)
    assert error._render_traceback_() == ["error: multirun/x: no such file or folder"]
    monkeypatch.setenv(errors.TRACEBACK_VARIABLE, "1")
    shown = error._render_traceback_()
    assert shown[0] == "Traceback (most recent call last):" and shown[-1].startswith(
        "sdexp.runs.RunFolderError"
    )
