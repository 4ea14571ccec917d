"""The ``logger`` group: TensorBoard event files hold the logged values and survive a resume; the W&B
logger's calls (through a stand-in module: wandb is an optional extra); a missing package is one line."""

from __future__ import annotations

import signal
import sys
import types
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.nn import functional as F

from sdexp import loggers, runs, train
from sdexp.config import ConfigError, compose_config, validate
from tests.conftest import TINY


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve in the run's TensorBoard files: tag -> [(step, value)] (what TensorBoard shows)."""
    events = EventAccumulator(str(run_dir / loggers.TENSORBOARD_DIR))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("before", ["tensorboard", "csv"])
def test_tensorboard_curves_are_the_metrics_and_survive_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: str
) -> None:
    """Also where the run was started with logger=csv: the curves then begin at the first epoch."""
    cfg = compose_config([*TINY, "trainer.epochs=3", "logger=tensorboard"])
    steps, cross_entropy = [], F.cross_entropy

    def loss_that_signals(*args: object, **kwargs: object) -> object:
        steps.append(None)
        if len(steps) == 2 * 8 + 3:  # 8 steps an epoch: step 3 of epoch 3
            signal.raise_signal(signal.SIGUSR2)
        return cross_entropy(*args, **kwargs)

    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    try:
        monkeypatch.setattr(F, "cross_entropy", loss_that_signals)
        with pytest.raises(SystemExit):
            train.run(compose_config([*TINY, "trainer.epochs=3", f"logger={before}"]), tmp_path)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    if before == "tensorboard":
        assert [step for step, _ in scalars(tmp_path)["train_loss"]] == [1, 2]
    monkeypatch.undo()
    train.run(cfg, tmp_path)  # resumes in epoch 3
    curves = scalars(tmp_path)
    for row in runs.read_metrics(tmp_path):
        for key in ("train_loss", "train_error", "val_error", "test_error", "lr", "images_per_s"):
            points = [value for step, value in curves[key] if step == row["epoch"]]
            assert points == [pytest.approx(row[key], rel=1e-6)], (key, row["epoch"])  # once, not twice
    result = runs.read_result(tmp_path)
    assert curves["final/test_error_at_best_val"] == [(3, pytest.approx(result["test_error_at_best_val"]))]
    events = EventAccumulator(str(tmp_path / loggers.TENSORBOARD_DIR))
    events.Reload()
    hparams = sorted(events.PluginTagToContent("hparams"))  # the run in TensorBoard's HParams table
    assert hparams == ["_hparams_/experiment", "_hparams_/session_end_info", "_hparams_/session_start_info"]


class FakeRun:
    """What the W&B logger uses of a ``wandb.Run``, recording the calls."""

    def __init__(self, **init: object) -> None:
        self.init, self.logged, self.summary, self.finished = init, [], {}, False

    def log(self, values: dict, step: int) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


def test_wandb_logger_names_groups_and_resumes_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[FakeRun] = []
    fake = types.SimpleNamespace(init=lambda **kw: started.append(FakeRun(**kw)) or started[-1])
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = compose_config([*TINY, "logger=wandb"])
    run_dir = tmp_path / "sweep" / "seed=0"
    train.run(cfg, run_dir)
    [run] = started
    assert run.init["mode"] == "offline" and run.init["project"] == "sdexp" and run.init["resume"] == "allow"
    assert (run.init["name"], run.init["group"], run.init["dir"]) == (
        "seed=0",
        "sweep",
        str(run_dir.absolute()),
    )
    assert run.init["config"]["trainer.epochs"] == 2 and run.init["config"]["model.widths"] == "[4, 8, 16]"
    rows = runs.read_metrics(run_dir)
    assert [step for step, _ in run.logged] == [1, 2]
    assert run.logged[1][1]["val_error"] == pytest.approx(rows[1]["val_error"])
    assert run.summary["test_error_at_best_val"] == runs.read_result(run_dir)["test_error_at_best_val"]
    assert run.finished
    again = loggers.build_logger(cfg, run_dir, rows)  # a resume: the same W&B run, the last epoch again
    assert started[-1].init["id"] == run.init["id"] and [s for s, _ in started[-1].logged] == [2]
    again.close()


def test_a_missing_logger_package_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ConfigError, match=r"^logger=wandb needs the wandb package: pip install -e '\.\[wandb\]'$"
    ):
        validate(compose_config(["logger=wandb"]))


def test_the_logger_changes_neither_the_folder_nor_the_resume(tmp_path: Path) -> None:
    train.run(compose_config([*TINY, "trainer.epochs=1"]), tmp_path)
    assert not runs.config_changes(
        tmp_path, compose_config([*TINY, "trainer.epochs=1", "logger=tensorboard"])
    )
