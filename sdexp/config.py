"""The config schema (dataclasses in Hydra's ConfigStore) and the value checks run before training.

The schema fixes keys and types, so a typo or a wrong type fails while Hydra composes; the values
themselves live in the YAML files under ``conf/``. :func:`validate` then checks ranges.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from sdexp.conv import ConvWeightGrad
from sdexp.data import DatasetName, LoaderKind
from sdexp.environment import Precision, resolve_device
from sdexp.errors import SdexpError, not_a_key
from sdexp.loggers import LoggerName, WandbMode, missing_package
from sdexp.models import Block, Shortcut
from sdexp.optim import OptimizerName, Schedule
from sdexp.overrides import run_name
from sdexp.runs import RESUMABLE_CHANGES, flatten
from sdexp.step import StepKind
from sdexp.stochastic_depth import Mode, Rule, Scaling


@dataclass
class ModelConfig:
    name: str = MISSING
    blocks_per_stage: list[int] = MISSING
    widths: list[int] = MISSING
    stem_width: int = MISSING
    block: Block = MISSING
    shortcut: Shortcut = MISSING


@dataclass
class DatasetConfig:
    name: DatasetName = MISSING
    root: str | None = MISSING
    cache_dir: str = MISSING
    download: bool = MISSING
    extra: bool = False  # SVHN's extra split (conf/dataset/svhn.yaml)
    train_size: int | None = MISSING
    val_size: int = MISSING
    test_size: int | None = MISSING
    split_seed: int = MISSING
    augment: bool = MISSING
    mean: list[float] | None = MISSING
    std: list[float] | None = MISSING
    loader: LoaderKind = MISSING
    num_workers: int = MISSING


@dataclass
class OptimizerConfig:
    name: OptimizerName = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    dampening: float = MISSING
    weight_decay: float = MISSING
    schedule: Schedule = MISSING
    milestones: list[float] = MISSING
    gamma: float = 1.0  # the rate's factor at each milestone (schedule=multistep)


@dataclass
class StochasticDepthConfig:
    rule: Rule = MISSING
    final_survival: float = MISSING
    mode: Mode = MISSING
    scaling: Scaling = MISSING


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    eval_every: int = MISSING
    deterministic: bool = MISSING
    detect_anomaly: bool = MISSING
    progress: bool = MISSING
    precision: Precision = MISSING
    channels_last: bool | None = None
    step: StepKind = MISSING
    cuda_graphs: bool = MISSING
    compile: bool = MISSING
    conv_weight_grad: ConvWeightGrad = MISSING
    num_threads: int | None = None


@dataclass
class LoggerConfig:
    name: LoggerName = MISSING
    # W&B's settings (conf/logger/wandb.yaml); null for the other loggers, which refuse them
    project: str | None = None
    entity: str | None = None
    mode: WandbMode | None = None


@dataclass
class Config:
    seed: int = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    stochastic_depth: StochasticDepthConfig = field(default_factory=StochasticDepthConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore as ``config_schema`` (named first in ``conf/config.yaml``)
    and register the resolvers that name the output folders (``run_name``, ``resumable_changes``)."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("resumable_changes", lambda: list(RESUMABLE_CHANGES), replace=True)


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``run.py`` would get for these command-line overrides (without the ``hydra`` node),
    for scripts, notebooks and tests."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def group_options(group: str) -> list[str]:
    """The options of the config group ``group`` (its YAML files under ``conf/``); none if it is no
    group."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml")) if group else []


class ConfigError(SdexpError):
    """A config value outside its allowed range; the message names the key."""


def _positive_ints(v: Any) -> bool:
    return len(v) > 0 and all(n >= 1 for n in v)


def _milestones(v: Any) -> bool:
    return all(0 < m <= 1 for m in v) and all(a < b for a, b in itertools.pairwise(v))


DEVICES = r"auto|cpu|cuda(:\d+)?|mps"  # trainer.device (and the benchmarks' --device)
# key -> (check, what is allowed)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "model.blocks_per_stage": (_positive_ints, "a non-empty list of integers >= 1"),
    "model.widths": (_positive_ints, "a non-empty list of integers >= 1"),
    "model.stem_width": (lambda v: v >= 1, "an integer >= 1"),
    "dataset.train_size": (lambda v: v is None or v >= 1, "null (all) or an integer >= 1"),
    "dataset.val_size": (lambda v: v >= 1, "an integer >= 1"),
    "dataset.test_size": (lambda v: v is None or v >= 1, "null (all) or an integer >= 1"),
    "dataset.mean": (
        lambda v: v is None or (len(v) == 3 and all(map(math.isfinite, v))),
        "null (from the training images) or 3 finite numbers",
    ),
    "dataset.std": (
        lambda v: v is None or (len(v) == 3 and all(0 < x < math.inf for x in v)),
        "null or 3 finite numbers > 0",
    ),
    "dataset.split_seed": (lambda v: v >= 0, "an integer >= 0"),
    "dataset.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "optimizer.lr": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "optimizer.momentum": (lambda v: 0 <= v < 1, "0 <= momentum < 1"),
    "optimizer.dampening": (lambda v: 0 <= v < 1, "0 <= dampening < 1"),
    "optimizer.weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "optimizer.milestones": (_milestones, "increasing fractions of the epochs in (0, 1]"),
    "optimizer.gamma": (lambda v: 0 < v <= 1, "0 < gamma <= 1"),
    "stochastic_depth.final_survival": (lambda v: 0 < v <= 1, "0 < final_survival <= 1"),
    "trainer.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "trainer.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "trainer.eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "trainer.eval_every": (lambda v: v >= 1, "an integer >= 1"),
    "trainer.device": (
        lambda v: re.fullmatch(DEVICES, v) is not None,
        "auto, cpu, cuda, cuda:N or mps",
    ),
    "trainer.num_threads": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "logger.project": (  # W&B's rule for project names, checked before the data is read
        lambda v: v is None or (0 < len(v) <= 128 and not set(v) & set("/\\#?%:")),
        "null or a name of 1 to 128 characters without / \\ # ? % :",
    ),
}


_HYDRA_VALUE = re.compile(r"\$\{hydra:([^}]*)\}")


def _check_hydra_values(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a ``${hydra:key}`` that is null where the job runs. Hydra's resolver
    gives null for a key its config lacks, and for the job's number outside a sweep, which would
    otherwise surface later as a null value far from its cause."""
    if not HydraConfig.initialized():  # composed outside a run (scripts, notebooks): nothing to look up
        return
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=False)).items():
        for path in (p.strip().strip("'\"") for p in _HYDRA_VALUE.findall(str(value))):
            if "$" not in path and OmegaConf.select(HydraConfig.get(), path) is None:  # nested: not read
                sweeps_only = path in ("job.num", "job.id")
                why = "set in sweeps (-m) only" if sweeps_only else "null, or not in Hydra's config"
                raise ConfigError(f"{key}={value}: hydra.{path} is {why}")


def validate(cfg: DictConfig, this_host: bool = True) -> None:
    """Raise :class:`ConfigError` naming the first key that the schema lacks (added with ``+key=``)
    or whose value is outside its allowed range. ``this_host=False`` leaves out whether this machine
    has the device asked for: for sweeps whose jobs run on other machines (a SLURM sweep submitted from
    a login node without a GPU), where each job checks its own node as it starts."""
    removed = [f.name for f in fields(Config) if f.name not in cfg]  # ~seed
    missing = sorted(OmegaConf.missing_keys(cfg)) or removed
    if missing:
        group = missing[0].split(".")[0]
        options = group_options(group)
        required = OmegaConf.missing_keys(OmegaConf.structured(Config)[group]) if options else set()
        if required and required <= set(missing):  # what every option sets: no option chosen (~group)
            raise ConfigError(
                f"no {group} chosen: add {group}=... to the command ({group} is one of {', '.join(options)})"
            )
        raise ConfigError(f"{missing[0]} must be given: add {missing[0]}=... to the command")
    _check_hydra_values(cfg)
    try:
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg, resolve=True))
    except ConfigKeyError as exc:
        raise ConfigError(not_a_key(exc)) from None
    for key, (ok, allowed) in _CHECKS.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={value} is not allowed: {allowed}")
    if len(cfg.model.widths) != len(cfg.model.blocks_per_stage):
        raise ConfigError(
            f"model.widths has {len(cfg.model.widths)} entries but model.blocks_per_stage has "
            f"{len(cfg.model.blocks_per_stage)}: give one width per stage"
        )
    data = cfg.dataset
    if data.name == "synthetic" and (data.train_size is None or data.test_size is None):
        raise ConfigError("dataset.train_size and dataset.test_size must be set for dataset=synthetic")
    if data.name != "synthetic" and not str(data.root or "").strip():
        shown = "null" if data.root is None else repr(data.root)  # '' from an empty SDEXP_DATA, say
        raise ConfigError(f"dataset.root is {shown}: set it (or SDEXP_DATA) to the folder with {data.name}")
    if (data.mean is None) != (data.std is None):
        raise ConfigError("dataset.mean and dataset.std must be both null or both set")
    no_cuda = this_host and not torch.cuda.is_available()
    if str(cfg.trainer.device).startswith("cuda") and no_cuda:
        raise ConfigError(
            f"trainer.device={cfg.trainer.device} but CUDA is not available here: use auto or cpu"
        )
    if str(cfg.trainer.device).startswith("mps") and this_host and not torch.backends.mps.is_available():
        raise ConfigError(
            f"trainer.device={cfg.trainer.device} but MPS is not available here: use auto or cpu"
        )
    _check_logger(cfg.logger)
    package = missing_package(cfg.logger.name)
    if package:
        raise ConfigError(
            f"logger={cfg.logger.name} needs the {package} package: pip install -e '.[{package}]'"
        )
    if cfg.trainer.cuda_graphs and cfg.trainer.compile:
        raise ConfigError("trainer.cuda_graphs=true and trainer.compile=true: choose one of the two")
    if cfg.trainer.cuda_graphs and (cfg.trainer.device == "cpu" or no_cuda):
        raise ConfigError("trainer.cuda_graphs=true needs a CUDA device: set trainer.cuda_graphs=false")
    if cfg.trainer.step in (StepKind.segments, StepKind.graph):
        _check_segments(cfg, no_cuda)
    opt = cfg.optimizer
    if opt.schedule == Schedule.multistep and opt.milestones and opt.gamma == 1:
        raise ConfigError(
            f"optimizer.schedule=multistep with optimizer.gamma=1 leaves the rate as it is at the milestones "
            f"{list(opt.milestones)}: set optimizer.gamma (the paper's: 0.1)"
        )
    if opt.nesterov and (opt.momentum == 0 or opt.dampening != 0):
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0")


def _check_logger(logger: DictConfig) -> None:
    """W&B's settings with another logger would be ignored without a word; W&B needs its mode."""
    if logger.name != LoggerName.wandb:
        for key in ("project", "entity", "mode"):
            if logger[key] is not None:
                raise ConfigError(
                    f"logger.{key}={logger[key]} is a W&B setting, unused by the {logger.name} logger "
                    f"(logger.name={logger.name}): drop it, or choose W&B with logger=wandb"
                )
    elif logger.mode is None:
        raise ConfigError(
            f"logger.mode=null is not allowed: give one of {', '.join(WandbMode)} (logger=wandb sets offline)"
        )


def _check_segments(cfg: DictConfig, no_cuda: bool) -> None:
    """The segment-wise and the one-graph step replace what ``cuda_graphs`` and ``compile`` do to the
    branches, and capture branches without random numbers in them; the one graph needs CUDA (``no_cuda``:
    this machine, which runs the job, has none)."""
    step = cfg.trainer.step
    for key in ("cuda_graphs", "compile"):
        if cfg.trainer[key]:
            raise ConfigError(f"trainer.step={step} and trainer.{key}=true: choose one of the two")
    if cfg.trainer.detect_anomaly and resolve_device(cfg.trainer.device).type == "cuda":
        raise ConfigError(
            "trainer.detect_anomaly=true cannot check inside CUDA graphs: add trainer.step=autograd to debug"
        )
    if cfg.stochastic_depth.mode != "batch":
        raise ConfigError(
            f"trainer.step={step} needs stochastic_depth.mode=batch (it is {cfg.stochastic_depth.mode}): "
            "per-sample masks draw random numbers inside the branch"
        )
    device = str(cfg.trainer.device)
    on_cuda = device.startswith("cuda") or (device == "auto" and not no_cuda)  # the GPU's checks: build_step
    if step == StepKind.graph and not on_cuda:
        here = ", and this machine has no GPU" if device == "auto" else ""
        raise ConfigError(
            f"trainer.step=graph needs a CUDA device (trainer.device={device}{here}): "
            "use trainer.step=segments"
        )
