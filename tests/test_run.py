"""run.py end to end: the run-folder contract, multiruns, determinism, failures and bad overrides."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdexp import runs, train
from sdexp.config import compose_config
from sdexp.environment import speed_settings
from tests.conftest import TINY, run_py

RESULT_KEYS = {
    "status",
    "epochs_completed",
    "test_error",
    "best_val_error",
    "best_epoch",
    "test_error_at_best_val",
    "train_time_s",
    "num_params",
    "model",
    "dataset",
    "stochastic_depth",
    "seed",
    "torch_version",
    "device_name",
    "git_revision",
}


def test_train_writes_the_run_folder_contract(tmp_path: Path) -> None:
    result = train.run(compose_config(TINY), tmp_path)
    on_disk = runs.read_result(tmp_path)
    assert on_disk == result
    assert set(on_disk) >= RESULT_KEYS
    assert on_disk["status"] == "completed" and on_disk["epochs_completed"] == 2
    assert on_disk["stochastic_depth"] == "linear" and on_disk["model"] == "resnet20"
    rows = runs.read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == set(runs.METRIC_COLUMNS)
    for row in rows:
        for key in ("train_error", "val_error", "test_error"):
            assert 0 <= row[key] <= 100
        assert 0 < row["executed_block_fraction"] < 1
    best = min(rows, key=lambda r: r["val_error"])
    assert on_disk["best_epoch"] == best["epoch"]
    assert on_disk["test_error_at_best_val"] == best["test_error"]
    assert on_disk["test_error"] == rows[-1]["test_error"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind
    assert "peak_gpu_memory_gib" not in on_disk  # a CPU run


def test_peak_gpu_memory_is_the_largest_over_a_runs_processes(tmp_path: Path) -> None:
    record = runs.RunRecord.new(tmp_path, {})
    row = {"epoch": 1, "epoch_time_s": 1.0, "val_error": 50.0, "test_error": 50.0}
    record.epoch_done(row, peak_gpu_memory_gib=2.5)
    resumed = runs.RunRecord.resumed(tmp_path, record.result, record.rows, step=0)
    resumed.epoch_done({**row, "epoch": 2}, peak_gpu_memory_gib=1.5)  # a later process needed less
    assert runs.read_result(tmp_path)["peak_gpu_memory_gib"] == 2.5


def test_an_empty_test_splits_nan_error_is_null_in_result_json_and_nan_when_read(tmp_path: Path) -> None:
    record = runs.RunRecord.new(tmp_path, {})
    record.epoch_done({"epoch": 1, "epoch_time_s": 1.0, "val_error": 40.0, "test_error": math.nan})
    text = (tmp_path / runs.RESULT).read_text()
    on_disk = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not strict JSON"))
    assert on_disk["test_error"] is None and on_disk["test_error_at_best_val"] is None
    assert on_disk["best_val_error"] == 40.0
    read = runs.read_result(tmp_path)
    assert math.isnan(read["test_error"]) and math.isnan(read["test_error_at_best_val"])
    assert math.isnan(record.result["test_error"])  # the record in memory keeps its NaN


def test_constant_depth_runs_every_block(tmp_path: Path) -> None:
    train.run(compose_config([*TINY, "stochastic_depth=off", "trainer.epochs=1"]), tmp_path)
    assert runs.read_metrics(tmp_path)[0]["executed_block_fraction"] == 1.0


def test_eval_every_skips_epochs_but_always_evaluates_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_config([*TINY, "trainer.epochs=3", "trainer.eval_every=2"])
    with caplog.at_level("INFO", logger="sdexp.train"):
        train.run(cfg, tmp_path)
    val = [r["val_error"] for r in runs.read_metrics(tmp_path)]
    assert math.isnan(val[0]) and not math.isnan(val[1]) and not math.isnan(val[2])
    assert "epoch 1/3" in caplog.text and "val -  test -  blocks run" in caplog.text  # not "nan%"
    assert "nan" not in caplog.text.lower()


def test_same_seed_is_deterministic_on_cpu(tmp_path: Path) -> None:
    timing = {"epoch_time_s", "images_per_s"}
    metrics = []
    for name in ("a", "b", "c"):
        seed = "seed=1" if name != "c" else "seed=2"
        cfg = compose_config([*TINY, "trainer.deterministic=true", seed])
        train.run(cfg, tmp_path / name)
        rows = runs.read_metrics(tmp_path / name)
        metrics.append([{k: v for k, v in r.items() if k not in timing} for r in rows])
    assert metrics[0] == metrics[1]
    assert metrics[0] != metrics[2]


def test_linear_epochs_runs_and_decays(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "stochastic_depth=linear_epochs", "trainer.epochs=3"])
    train.run(cfg, tmp_path)
    fractions = [r["executed_block_fraction"] for r in runs.read_metrics(tmp_path)]
    assert fractions[0] == 1.0 and fractions[2] < 0.8


def test_failure_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise FloatingPointError("boom")

    monkeypatch.setattr(train, "train_one_epoch", explode)
    with pytest.raises(FloatingPointError):
        train.run(compose_config(TINY), tmp_path)
    result = runs.read_result(tmp_path)
    assert result["status"] == "failed"
    assert result["error_type"] == "FloatingPointError" and result["error"] == "boom"


@pytest.mark.slow
def test_run_py_single_run(tmp_path: Path) -> None:
    proc = run_py(*TINY, "hydra.run.dir=out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        assert (out / ".hydra" / name).is_file()
    assert json.loads((out / runs.RESULT).read_text())["status"] == "completed"
    assert len(runs.read_metrics(out)) == 2
    log = (out / runs.LOG).read_text()
    assert "epoch 2/2" in log and "done: best val error" in log


@pytest.mark.slow
def test_run_py_multirun_writes_one_folder_per_job(tmp_path: Path) -> None:
    proc = run_py("-m", *TINY, "trainer.epochs=1", "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = sorted(tmp_path.glob("sweep/*/result.json"))
    assert len(results) == 2
    assert sorted(json.loads(p.read_text())["seed"] for p in results) == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["hydra/launcher=basic", "hydra/launcher=local"])
def test_hydra_interpolations_in_overrides_resolve_as_in_the_started_job(
    tmp_path: Path, launcher: str
) -> None:
    """``${hydra:...}`` resolves only once Hydra starts the job; the checks before it must not refuse it,
    and the local launcher's jobs (processes of their own) know their number too. The run folders
    are named from each job's own values."""
    jobs = ["seed=${hydra:job.num}", "dataset.root=${hydra: runtime.cwd}/data", "optimizer.lr=0.1,0.05"]
    subdir = "hydra.sweep.subdir=j${hydra:job.num}_lr${optimizer.lr}"
    proc = run_py(
        "-m", launcher, *TINY, "trainer.epochs=1", *jobs, "hydra.sweep.dir=sweep", subdir, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    folders = sorted(p.parent for p in tmp_path.glob("sweep/*/result.json"))
    assert [f.name for f in folders] == ["j0_lr0.1", "j1_lr0.05"]
    configs = [runs.read_config(folder) for folder in folders]
    assert [c["seed"] for c in configs] == [0, 1]
    assert {c["dataset"]["root"] for c in configs} == {str(tmp_path / "data")}


@pytest.mark.slow
def test_a_run_folder_named_from_a_hydra_value_is_checked_as_the_run_names_it(tmp_path: Path) -> None:
    """The default run folder is named from the overrides, so from ``${hydra:runtime.cwd}`` too: the
    check of that folder before the run starts must resolve it as the run does."""
    proc = run_py(*TINY, "trainer.epochs=1", "dataset.root=${hydra:runtime.cwd}/data", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (p.parent for p in tmp_path.glob("outputs/*/result.json"))
    assert runs.read_config(folder)["dataset"]["root"] == str(tmp_path / "data")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=resnet111", "resnet111"),
        ("stochastic_depth.final_survival=1.5", "stochastic_depth.final_survival=1.5"),
        ("trainer.epoch=3", "trainer.epoch"),
        ("trainer.device=cuda:7", "trainer.device"),
    ],
)
def test_run_py_rejects_bad_overrides(tmp_path: Path, override: str, message: str) -> None:
    if (
        override.startswith("trainer.device")
        and subprocess.run([sys.executable, "-c", "import torch; exit(torch.cuda.is_available())"]).returncode
    ):
        pytest.skip("this machine has CUDA, so trainer.device=cuda:7 may be valid")
    proc = run_py(*TINY, override, "hydra.run.dir=out", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "out" / runs.RESULT).exists()


def test_bf16_and_channels_last_train_on_cpu(tmp_path: Path) -> None:
    overrides = [*TINY, "trainer.epochs=1", "trainer.precision=bf16", "trainer.channels_last=true"]
    result = train.run(compose_config(overrides), tmp_path)
    assert result["status"] == "completed"
    assert 0 <= result["test_error"] <= 100


def test_speed_settings_default_to_fp32_on_cpu_and_channels_last_on_cpu_and_cuda() -> None:
    cfg = compose_config()
    assert speed_settings(cfg.trainer, torch.device("cpu")) == (None, True)
    assert speed_settings(cfg.trainer, torch.device("cuda")) == (torch.bfloat16, True)
    assert speed_settings(cfg.trainer, torch.device("mps")) == (None, False)
    cfg = compose_config(["trainer.channels_last=false", "trainer.precision=fp32"])
    assert speed_settings(cfg.trainer, torch.device("cuda")) == (None, False)
