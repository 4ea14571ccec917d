"""The paper's presets (experiment=paper_*, +sweep=paper_*), the debug preset and run.py --help."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sdexp import config as config_module
from sdexp import preflight, runs, train
from sdexp.config import CONF_DIR, ConfigError, compose_config, register_configs, validate
from sdexp.optim import build_optimizer
from sdexp.report import NOT_EXPERIMENT_KEYS, config_values, paper_number, paper_results
from tests.conftest import ROOT, run_py

PAPER = sorted(p.stem for p in (CONF_DIR / "experiment").glob("paper_*.yaml"))
UNCONFIRMED = {"paper_cifar100"}  # copies of the paper disagree: no row in sdexp/paper_results.csv


def test_every_paper_experiment_has_its_sweep() -> None:
    assert PAPER == ["paper_cifar10", "paper_cifar100", "paper_cifar10_resnet1202", "paper_svhn"]
    assert sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")) == PAPER


def _preset_values(name: str, rule: str) -> dict:
    """The preset's config as the report compares it with the paper's protocol."""
    cfg = compose_config([f"experiment={name}", f"stochastic_depth={rule}"])
    return config_values(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize("name", PAPER)
def test_paper_experiment_matches_the_reports_paper_column(name: str) -> None:
    """Both rules of the preset find the paper's number in the report's table, and the numbers in the
    preset's header comment and in the README's row for the preset are those."""
    header = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    quoted = re.search(
        r"constant depth ([\d.]+) %, stochastic depth \(linear, p_L = 0.5\) ([\d.]+) %", header
    )
    assert quoted, "the header gives the paper's two test errors"
    readme = re.search(rf"^\| `{name}` \|.*\| ([\d.]+) → ([\d.]+) %", (ROOT / "README.md").read_text(), re.M)
    assert readme and readme.groups() == quoted.groups(), "the README's row gives the same numbers"
    for rule, number in zip(("off", "linear"), quoted.groups(), strict=True):
        validate(compose_config([f"experiment={name}", f"stochastic_depth={rule}"]))
        values = _preset_values(name, rule)
        if name in UNCONFIRMED:
            assert math.isnan(paper_number(values))
        else:
            assert paper_number(values) == float(number), rule


# Config keys that are not the paper's protocol: how a run computes (not what), and which images are
# held out (a draw, like the seed). Every other key is a column of sdexp/paper_results.csv.
NOT_PROTOCOL = {
    *NOT_EXPERIMENT_KEYS,
    "dataset.split_seed",
    "trainer.precision",
    "trainer.channels_last",
    "trainer.deterministic",
    "trainer.detect_anomaly",
    "trainer.cuda_graphs",
    "trainer.compile",
}


def test_every_paper_row_is_a_preset_with_all_its_keys() -> None:
    """Each row of the paper's table is the config of one preset and rule, key for key: every config key
    is a column or named as not the protocol (a new key must be placed), and every row is reached."""
    paper = paper_results()
    protocol = set(paper.columns) - {"paper_test_error"}
    numbers = []
    for name in sorted(set(PAPER) - UNCONFIRMED):
        for rule in ("off", "linear"):
            values = _preset_values(name, rule)
            assert set(values) - NOT_PROTOCOL == protocol, name
            numbers.append(paper_number(values))
    assert sorted(numbers) == sorted(paper["paper_test_error"])  # the six numbers differ: each row once


def test_svhn_preset_is_the_papers_svhn_protocol() -> None:
    cfg = compose_config(["experiment=paper_svhn"])
    data = cfg.dataset
    assert (data.extra, data.augment, data.val_size, cfg.model.name) == (True, False, 6000, "resnet152_cifar")
    model = torch.nn.Linear(1, 1)
    _, schedule = build_optimizer(model, cfg.optimizer, cfg.trainer.epochs)
    assert cfg.trainer.epochs == 50 and sorted(schedule.milestones) == [30, 35]  # lr ÷10 after 30 and 35


def _hydra_config(overrides: list[str]) -> dict:
    """The composed config with its ``hydra`` node, as run.py -m gets it."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_a_sweep_records_the_keys_its_folder_names_leave_out() -> None:
    """In multirun.yaml as a list (status.py names the sweep's folders from it), not conf/config.yaml's
    resolver, which a later sdexp may answer otherwise."""
    cfg = _hydra_config([])
    preflight.record_folder_naming(cfg)
    recorded = OmegaConf.to_container(cfg.hydra.job.config.override_dirname, resolve=False)["exclude_keys"]
    assert recorded == list(runs.RESUMABLE_CHANGES)


def test_a_key_given_twice_is_said(caplog: pytest.LogCaptureFixture) -> None:
    preflight.warn_of_keys_given_twice(["seed=1", "model=resnet20", "seed=2"])
    assert caplog.messages == ["seed is given twice (seed=1, then seed=2): the last counts"]


def test_a_sweep_over_options_by_pattern_lists_the_matching_options() -> None:
    """``-m 'model=glob(resnet1*)'``: Hydra lists the group's options through a config loader, which the
    checks before a sweep (and status.py, outside Hydra) must give it."""
    cfg = _hydra_config([])
    cfg.hydra.overrides.task = ["model=glob(resnet1*)", "seed=0,1"]
    models = {job[0] for job in preflight.sweep_jobs(cfg)}
    assert models == {f"model={name}" for name in ("resnet101", "resnet110", "resnet1202", "resnet152",
                                                    "resnet152_cifar", "resnet18")}  # fmt: skip
    assert len(preflight.sweep_jobs(cfg)) == 12


@pytest.mark.parametrize("name", PAPER)
def test_sweep_preset_runs_seeds_times_both_rules_into_a_named_folder(name: str) -> None:
    cfg = _hydra_config([f"+sweep={name}"])
    assert cfg.hydra.sweep.dir == f"multirun/{name}"
    cfg.hydra.overrides.task = [f"+sweep={name}"]  # what Hydra records for the command line
    jobs = preflight.sweep_jobs(cfg)
    expected = [
        {f"+sweep={name}", f"seed={s}", f"stochastic_depth={r}"} for s in (0, 1, 2) for r in ("off", "linear")
    ]
    assert len(jobs) == 6 and all(set(job) in expected for job in jobs)
    assert {frozenset(job) for job in jobs} == {frozenset(e) for e in expected}
    assert compose_config([f"+sweep={name}"]).model == compose_config([f"experiment={name}"]).model


def test_sweep_presets_leave_other_commands_alone() -> None:
    assert not _hydra_config([]).hydra.sweeper.get("params")


@pytest.mark.parametrize("experiment", ["quickstart", *PAPER])
def test_debug_preset_shrinks_any_experiment(experiment: str) -> None:
    cfg = compose_config([f"experiment={experiment}", "+debug=default"])
    validate(cfg)
    data = cfg.dataset
    assert (cfg.trainer.epochs, data.train_size, data.val_size, data.test_size) == (1, 512, 128, 256)
    assert cfg.trainer.deterministic and cfg.trainer.detect_anomaly
    assert cfg.model == compose_config([f"experiment={experiment}"]).model  # the groups are the user's
    assert _hydra_config(["+debug=default"]).hydra.run.dir.startswith("debug/")


@pytest.mark.parametrize(
    ("command", "hydra_overrides", "refused"),
    [
        (["+sweep=paper_cifar10", "+debug=default"], [], False),  # debug's folder wins
        (["+debug=default", "seed=1", "+sweep=paper_cifar10"], [], True),  # the sweep's folder would
        (["+debug=default", "+sweep=paper_cifar10"], ["hydra.sweep.dir=mine"], False),  # the user's folder
    ],
)
def test_debug_before_a_sweep_preset_is_refused_unless_the_folder_is_named(
    command: list[str], hydra_overrides: list[str], refused: bool
) -> None:
    cfg = _hydra_config(command + hydra_overrides)
    cfg.hydra.overrides.task, cfg.hydra.overrides.hydra = command, hydra_overrides  # as Hydra records them
    if refused:
        assert cfg.hydra.sweep.dir == "multirun/paper_cifar10"
        with pytest.raises(ConfigError, match=r"\+debug=default comes before \+sweep=paper_cifar10"):
            preflight.check_debug_after_sweep(cfg)
    else:
        preflight.check_debug_after_sweep(cfg)


def test_debug_run_trains_with_anomaly_checks(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    cross_entropy = torch.nn.functional.cross_entropy

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(torch.is_anomaly_enabled())
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recording)
    train.run(compose_config(["experiment=quickstart", "+debug=default", "trainer.device=cpu"]), tmp_path)
    assert runs.read_result(tmp_path)["epochs_completed"] == 1
    assert seen and all(seen)
    assert not torch.is_anomaly_enabled()  # off again after the run


def test_anomaly_checks_refuse_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "resolve_device", lambda _name: torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"cannot check inside CUDA graphs: add trainer\.step=autograd"):
        config_module._check_segments(compose_config(["+debug=default", "trainer.step=segments"]), False)


@pytest.mark.slow
def test_help_lists_groups_options_and_examples(tmp_path) -> None:
    proc = run_py("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    options = {line.split(": ")[0]: line.split(": ")[1].split(", ") for line in lines if ": " in line}
    for group in [p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"]:
        assert sorted(options[group]) == sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")), group
    assert sum(line.strip().startswith("python run.py") for line in lines) == 3
    assert not list(tmp_path.iterdir())  # --help writes nothing
