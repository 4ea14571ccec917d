"""Every config option composes and validates; bad values fail naming their key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from sdexp.config import CONF_DIR, ConfigError, compose_config, validate
from sdexp.loggers import missing_package
from sdexp.preflight import jobs_run_here

GROUPS = [
    "model",
    "dataset",
    "optimizer",
    "stochastic_depth",
    "trainer",
    "logger",
    "experiment",
    "sweep",
    "debug",
]
ADDED = {"sweep", "debug"}  # not in the defaults list: added with +
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_every_group_has_options() -> None:
    assert {g for g, _ in OPTIONS} == set(GROUPS)


# Options that need a value no default can give.
REQUIRED = {("dataset", "imagefolder"): ["dataset.root=/data/tree"]}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_validates(group: str, option: str) -> None:
    plus = "+" if group in ADDED else ""
    cfg = compose_config([f"{plus}{group}={option}", *REQUIRED.get((group, option), [])])
    if group == "logger" and missing_package(option):  # an optional extra not installed here
        with pytest.raises(ConfigError, match=f"pip install -e '.\\[{option}\\]'"):
            validate(cfg)
        return
    validate(cfg)
    if group == "model":
        assert cfg.model.name == option
    if group == "stochastic_depth":
        assert cfg.stochastic_depth.rule == option


def test_defaults_are_the_paper() -> None:
    cfg = compose_config()
    assert cfg.stochastic_depth.rule == "linear"
    assert cfg.stochastic_depth.final_survival == 0.5
    assert cfg.stochastic_depth.mode == "batch"
    assert cfg.stochastic_depth.scaling == "test_time"
    opt = cfg.optimizer
    assert (opt.lr, opt.momentum, opt.nesterov, opt.dampening) == (0.1, 0.9, True, 0.0)
    assert opt.weight_decay == 1e-4
    assert list(opt.milestones) == [0.5, 0.75] and opt.gamma == 0.1
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (500, 128)
    assert cfg.dataset.name == "cifar10" and cfg.dataset.val_size == 5000 and cfg.dataset.augment


def test_required_root_is_named() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.root must be given"):
        validate(compose_config(["dataset=imagefolder"]))


def test_a_null_root_is_named_with_where_it_comes_from() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.root is null: set it \(or SDEXP_DATA\)"):
        validate(compose_config(["dataset.root=null"]))


def test_data_root_comes_from_sdexp_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDEXP_DATA", "/somewhere/data")
    assert compose_config().dataset.root == "/somewhere/data"
    monkeypatch.delenv("SDEXP_DATA")
    assert compose_config().dataset.root == "~/.cache/sdexp/data"


def test_quickstart_preset() -> None:
    cfg = compose_config(["experiment=quickstart"])
    assert cfg.model.name == "resnet20"
    assert cfg.dataset.name == "synthetic"
    assert cfg.stochastic_depth.rule == "linear"


def test_off_is_a_string_rule_not_a_yaml_boolean() -> None:
    cfg = compose_config(["stochastic_depth=off"])
    assert cfg.stochastic_depth.rule == "off"
    assert cfg.stochastic_depth.final_survival == 1.0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("stochastic_depth.final_survival=1.5", "stochastic_depth.final_survival"),
        ("stochastic_depth.final_survival=0", "stochastic_depth.final_survival"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.batch_size=-1", "trainer.batch_size"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=inf", "optimizer.lr"),
        ("optimizer.weight_decay=inf", "optimizer.weight_decay"),
        ("optimizer.milestones=[0.75,0.5]", "optimizer.milestones"),
        ("trainer.device=gpu", "trainer.device"),
        ("model.widths=[16,32]", "model.widths"),
        ("seed=-3", "seed"),
        ("dataset.split_seed=-1", "dataset.split_seed"),
        ("dataset.root=''", "dataset.root"),
        ("logger.project=a/b", "logger.project"),
    ],
)
def test_out_of_range_values_name_their_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config([override]))


@pytest.mark.parametrize(
    "overrides",
    [
        ["logger.mode=online"],
        ["logger=tensorboard", "logger.project=p"],
        ["logger.entity=me"],
        ["logger=wandb", "logger.mode=null"],
    ],
)
def test_wandb_settings_are_for_wandb_only_and_it_needs_a_mode(overrides: list[str]) -> None:
    """Set with another logger they would be ignored without a word; W&B without a mode would go online."""
    key, value = overrides[-1].split("=")
    with pytest.raises(
        ConfigError,
        match=rf"^{key}={value} is (a W&B setting, unused by the \w+ logger \(logger.name=|not allowed)",
    ):
        validate(compose_config(overrides))


@pytest.mark.parametrize(("mean", "std"), [("[0.5,nan,0.5]", "[1,1,1]"), ("[0.5,0.5,0.5]", "[1,inf,1]")])
def test_normalization_takes_finite_numbers(mean: str, std: str) -> None:
    with pytest.raises(ConfigError, match=r"is not allowed: (null|null \(.*\)) or 3 finite numbers"):
        validate(compose_config([f"dataset.mean={mean}", f"dataset.std={std}"]))


def test_added_unknown_key_fails_validation() -> None:
    cfg = compose_config(["+trainer.epoch=3"])  # "+" bypasses the schema while composing
    with pytest.raises(ConfigError, match=r"trainer\.epoch is not a config key; trainer has epochs, "):
        validate(cfg)


@pytest.mark.parametrize("override", ["trainer.device=cuda", "trainer.cuda_graphs=true"])
def test_a_missing_gpu_is_refused_only_where_the_jobs_run(
    override: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = compose_config([override])
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        validate(cfg)
    validate(cfg, this_host=False)  # a SLURM sweep from a login node: each job checks its node


@pytest.mark.parametrize(
    ("launcher", "here"),
    [
        ("hydra_plugins.sdexp_launcher.slurm_launcher.SlurmLauncher", False),
        ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", False),
        ("hydra_plugins.sdexp_launcher.local_launcher.LocalLauncher", True),
        ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", True),
    ],
)
def test_only_slurm_launchers_run_jobs_elsewhere(launcher: str, here: bool) -> None:
    assert jobs_run_here(OmegaConf.create({"hydra": {"launcher": {"_target_": launcher}}})) is here


def test_nesterov_needs_momentum() -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.nesterov"):
        validate(compose_config(["optimizer.momentum=0"]))


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("trainer.epoch=3", ConfigAttributeError),
        ("trainer.epochs=three", ValidationError),
        ("stochastic_depth.mode=layer", ValidationError),
        ("stochastic_depth.rule=exponential", ValidationError),
    ],
)
def test_typos_and_wrong_types_fail_on_compose(override: str, error: type) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_config([override])
    cause = info.value.__cause__
    assert isinstance(cause, error)
    assert override.lstrip("+").split("=")[0] in str(cause)


def test_unknown_option_fails_on_compose() -> None:
    with pytest.raises(ConfigCompositionException, match="resnet111"):
        compose_config(["model=resnet111"])
