"""Checks Hydra runs before it creates or writes any folder (``hydra.callbacks`` in conf/config.yaml).

A bad value or an unwritable output folder then ends the command with one line and exit status 2,
before anything is created. A sweep's jobs are each composed and checked before the first one starts,
whatever the launcher, so a bad swept value cannot stop a sweep half-way.
A sweep folder named by the time (the default, ``multirun/<date>/<time>``) is made new for each
command, so two sweeps started in the same second do not share it. Once every check has passed, a
sweep's command holds its folder (:func:`hold_sweep_folder`): a second launch of it is refused.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import get_overrides_dirname  # Hydra's own folder naming
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from hydra_plugins.sdexp_launcher import slurm_config
from sdexp import runs
from sdexp.config import CONF_DIR, ConfigError, group_options, register_configs, validate
from sdexp.errors import SdexpError, first_line, reported
from sdexp.files import describe, file_in_the_way, why_unwritable
from sdexp.overrides import quote_override

log = logging.getLogger(__name__)


def parse_overrides(overrides: list[str]) -> list[Override]:
    """Hydra's reading of command-line overrides, with a config loader (the app's where Hydra runs, else
    one of ``conf/``): a sweep over a group's options by pattern (``-m 'model=glob(resnet2*)'``) lists
    them through it."""
    hydra = GlobalHydra.instance()
    if hydra.is_initialized():
        return OverridesParser.create(config_loader=hydra.config_loader()).parse_overrides(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return parse_overrides(overrides)


def _validate(config: DictConfig, this_host: bool = True) -> None:
    validate(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]), this_host)


@contextlib.contextmanager
def hydra_config_of(job: DictConfig, num: int | None = None) -> Iterator[None]:
    """Set Hydra's config as the started job will have it (its output folder; for a sweep's job, its
    number), so that ``${hydra:...}`` in the job's config resolves while it is checked
    (``dataset.root=${hydra:runtime.cwd}/data``): Hydra sets it only as the job starts. ``job``'s
    ``hydra`` node is changed (the number, read-only): pass a copy of a config Hydra goes on with."""
    with read_write(job.hydra), open_dict(job.hydra):
        if num is not None:
            job.hydra.job.num = job.hydra.job.id = num
    hydra, previous = HydraConfig.instance(), HydraConfig.instance().cfg
    hydra.set_config(job)  # keeps a copy of job's hydra node
    try:
        with read_write(hydra.cfg.hydra):  # the folder's name may hold ${hydra:...} too
            sweep = hydra.cfg.hydra.sweep
            try:
                where = Path(sweep.dir, sweep.subdir) if num is not None else hydra.cfg.hydra.run.dir
            except OmegaConfBaseException as exc:
                raise _as_the_override(job, exc) from None
            hydra.cfg.hydra.runtime.output_dir = os.path.abspath(where)
        yield
    finally:
        hydra.cfg = previous


def _as_the_override(job: DictConfig, exc: OmegaConfBaseException) -> Exception:
    """``exc``, raised while naming the run folder, as an error of the override that caused it: the
    folder is named from the overrides, and resolving the name resolves a ``${...}`` in them
    (``seed=${nowhere}``), so the error would otherwise name ``hydra.run.dir``."""
    for override in parse_overrides(typed(job)):
        if "${" in override.input_line:
            try:
                OmegaConf.select(job, override.key_or_group, throw_on_resolution_failure=True)
            except OmegaConfBaseException as own:
                return ConfigError(f"{override.input_line}: {first_line(own)}")
    return exc


def jobs_run_here(config: DictConfig) -> bool:
    """Whether the sweep's launcher runs its jobs on this machine: all but the SLURM launchers, whose
    jobs run on the cluster's nodes."""
    return not str(config.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher")


def _unwritable(folder: Path, why: str, folder_key: str) -> ConfigError:
    blocking = file_in_the_way(folder)
    why = f"{blocking} is a file" if blocking is not None else why
    return ConfigError(f"cannot write the output folder {folder} ({why}): set {folder_key}=...")


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that holds nothing."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _check_writable(config: DictConfig, folder_key: str) -> None:
    if not str(OmegaConf.select(config, folder_key) or "").strip():
        raise ConfigError(f"{folder_key} is empty: give a folder, e.g. {folder_key}=outputs/mine")
    folder = Path(OmegaConf.select(config, folder_key))
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        why = why_unwritable(folder)
    except OSError as exc:
        why = describe(exc)
    finally:  # Hydra creates the folder when it writes there; a command refused later leaves none
        _remove_if_empty(created)
    if why is not None:
        raise _unwritable(folder, why, folder_key)


def typed(config: DictConfig, which: str = "task") -> list[str]:
    """The command line's overrides for the job (``task``) or for Hydra (``hydra``), as typed: reading
    them one by one would resolve a ``${...}`` in them (``seed=${hydra:job.num}``), which only a
    started job can."""
    return OmegaConf.to_container(config.hydra.overrides, resolve=False)[which]


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Each job's overrides, expanded from ``hydra.sweeper.params`` and the command line as Hydra's
    basic sweeper expands them."""
    params = config.hydra.sweeper.get("params") or {}  # resolved, as Hydra's sweeper reads them
    arguments = [f"{key}={value}" for key, value in params.items()] + typed(config)
    overrides = parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def job_folders(config: DictConfig, jobs: list[list[str]]) -> list[str]:
    """Each job's run folder name under the sweep folder: ``hydra.sweep.subdir`` resolved as for the
    started job, with its number and its ``override_dirname`` (its overrides less
    ``override_dirname.exclude_keys``), as Hydra's launchers set them."""
    register_configs()  # the run_name resolver of conf/config.yaml's subdir
    exclude = list(config.hydra.job.config.override_dirname.exclude_keys)
    job, names = copy.deepcopy(config), []
    with read_write(job.hydra), open_dict(job.hydra):
        for idx, overrides in enumerate(jobs):
            job.hydra.job.num = job.hydra.job.id = idx
            job.hydra.job.override_dirname = get_overrides_dirname(
                parse_overrides(overrides), exclude, item_sep=",", kv_sep="="
            )
            names.append(str(job.hydra.sweep.subdir))
    return names


def _check_folders_differ(config: DictConfig, jobs: list[list[str]], shown: list[str]) -> None:
    """Refuse two jobs that would train in one folder: a ``hydra.sweep.subdir`` without a ``${...}``
    names one folder for all, and the default one leaves some keys out of its name; the second job
    would find the first's run there and skip or resume it. Other subdirs are the user's."""
    subdir = str(OmegaConf.to_container(config.hydra.sweep)["subdir"])
    if "${" not in subdir and len(jobs) > 1:
        raise ConfigError(
            f"hydra.sweep.subdir={subdir} names one folder for all {len(jobs)} jobs of the sweep: "
            "put ${hydra.job.num} in it"
        )
    if subdir != "${run_name:${hydra.job.override_dirname}}":  # conf/config.yaml's
        return
    first: dict[str, int] = {}
    for idx, folder in enumerate(job_folders(config, jobs)):
        if folder in first and jobs[first[folder]] == jobs[idx]:
            same = shown[idx] or "all the jobs are alike"
            raise ConfigError(
                f"jobs #{first[folder]} and #{idx} are one job ({same}): the sweep lists a value twice"
            )
        if folder in first:
            raise ConfigError(
                f"jobs #{first[folder]} ({shown[first[folder]]}) and #{idx} ({shown[idx]}) would train in "
                f"the same run folder {folder}: they differ only in keys that do not name run folders "
                "(e.g. trainer.step); sweep those in separate sweep folders (hydra.sweep.dir)"
            )
        first[folder] = idx


def warn_of_keys_given_twice(overrides: list[str]) -> None:
    """Say so where a key or group is given twice (``seed=1 seed=2``): Hydra takes the last (which lets a
    script's own overrides follow a shared list), but a typo looks the same, and a single run's folder is
    named by both."""
    given: dict[str, str] = {}
    for override in parse_overrides(overrides):
        key, line = override.key_or_group, override.input_line
        if key in given:
            log.warning("%s is given twice (%s, then %s): the last counts", key, given[key], line)
        given[key] = line


def check_hydra_groups(config: DictConfig) -> None:
    """Refuse ``hydra.launcher=local`` (a dot for the slash of ``hydra/launcher=local``), which puts a
    word where Hydra keeps the launcher's (or sweeper's) settings; and the slurm preset's schema chosen
    as a launcher, whose defaults are submitit's (no GPU, an hour, no requeue)."""
    for group in ("launcher", "sweeper"):
        value = config.hydra.get(group)
        if not isinstance(value, DictConfig):
            raise ConfigError(f"hydra.{group}={value}: choose the {group} with hydra/{group}={value}")
    if config.hydra.runtime.choices.get("hydra/launcher") == slurm_config.SCHEMA:
        raise ConfigError(
            f"hydra/launcher={slurm_config.SCHEMA} is the schema of the slurm preset, with submitit's "
            "defaults (no GPU, 60 minutes, no requeue): choose hydra/launcher=slurm"
        )


def record_folder_naming(config: DictConfig) -> None:
    """Write the keys left out of run-folder names into the sweep's config as a list, not the resolver
    that gives them (conf/config.yaml), so that the sweep's ``multirun.yaml`` records the names its jobs
    got (status.py reads them there) whatever a later sdexp leaves out."""
    naming = config.hydra.job.config.override_dirname
    with read_write(naming):
        naming.exclude_keys = list(naming.exclude_keys)


def check_one_option_per_group(overrides: list[str]) -> None:
    """Refuse a list of options for a config group (``model=[resnet20,resnet32]``): Hydra would merge
    them all into one config, the last one's values winning, and train that one run."""
    for override in parse_overrides(overrides):
        group, value = override.key_or_group, override.value()
        options = group_options(group)
        if isinstance(value, list) and options:
            names = ",".join(map(str, value))
            fix = {0: f"{group} is one of {', '.join(options)}", 1: f"write {group}={names}"}
            raise ConfigError(
                f"{override.input_line}: {group} takes one option; "
                + fix.get(len(value), f"to train each, sweep them: -m {group}={names}")
            )


def check_sweep_jobs(config: DictConfig, config_name: str | None) -> None:
    """Compose and validate every job of the sweep (for this machine if it runs them,
    :func:`jobs_run_here`), and check that no two share a run folder; the first bad one raises, naming
    the job."""
    here = jobs_run_here(config)
    jobs = sweep_jobs(config)
    presets = list(dict.fromkeys(o for job in jobs for o in job if o.lstrip("+").startswith("sweep=")))
    if len(presets) > 1:
        raise ConfigError(
            f"{', '.join(presets)}: each sweep preset is a grid of its own, which a sweep over presets does "
            f"not expand (its jobs would train the default seed and rule only): run one per command, "
            f"-m {presets[0]}, then -m {presets[1]}"
        )
    if len(jobs) > 1:
        log.info("checking the configs of %d jobs", len(jobs))
    swept = {o.split("=")[0] for o in itertools.chain(*jobs) if sum(o in job for job in jobs) < len(jobs)}
    shown = [" ".join(o for o in overrides if o.split("=")[0] in swept) for overrides in jobs]
    _check_folders_differ(config, jobs, shown)
    for idx, overrides in enumerate(jobs):
        try:
            check_one_option_per_group(overrides)
            job = compose(config_name, typed(config, "hydra") + overrides, return_hydra_config=True)
            with hydra_config_of(job, idx):
                _validate(job, here)
        except (SdexpError, HydraException, OmegaConfBaseException) as exc:
            exc.add_note(f"in job #{idx}{f' ({shown[idx]})' if shown[idx] else ''}; no job was started")
            raise


def claim_timed_sweep_folder(config: DictConfig) -> None:
    """If ``hydra.sweep.dir`` is named with ``${now:...}``, create it, or ``<name>-2``, ``-3``, ... when
    another sweep already has it, and pass the name on to the jobs as an override.

    Folders named otherwise are the user's: a rerun uses the same folder and resumes the runs there.
    """
    if "${now:" not in str(OmegaConf.to_container(config.hydra.sweep, resolve=False)["dir"]):
        return
    base = folder = Path(str(config.hydra.sweep.dir))
    made = [path.absolute() for path in base.parents if not path.exists()]  # deepest first
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(2):
            try:
                folder.mkdir(parents=True)  # parents again: another command may have just removed one
                break
            except FileExistsError:
                folder = base.with_name(f"{base.name}-{n}")
    except OSError as exc:
        raise _unwritable(folder, describe(exc), "hydra.sweep.dir") from None
    # A command refused after this (a launcher setting) leaves no empty folder; a sweep writes in it.
    atexit.register(_remove_if_empty, [folder.absolute(), *made])
    with read_write(config.hydra):
        config.hydra.sweep.dir = str(folder)
        config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quote_override(str(folder))}")


def hold_sweep_folder(config: DictConfig) -> None:
    """Hold the sweep folder (its ``.launch.lock``) until this command ends, whatever the launcher: a
    second launch of the sweep meanwhile would rewrite its ``multirun.yaml`` (by which status.py lists
    the jobs) and start, or submit, every run it has not finished a second time; it is refused here
    (:class:`~sdexp.runs.SweepInUse`), before it writes anything."""
    folder = Path(str(config.hydra.sweep.dir)).absolute()
    made = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    lock = contextlib.ExitStack()
    held = lock.enter_context(
        runs.holding(
            folder / runs.LAUNCH_LOCK, runs.SweepInUse, "a second launch of the sweep could run beside it"
        )
    )
    atexit.register(_let_go, lock, held, made)  # after claim_timed_sweep_folder's: it runs before that


def _let_go(lock: contextlib.ExitStack, held: IO[str], made: list[Path]) -> None:
    """At the command's end, where nothing was launched (a launcher refused its settings after
    preflight: the folder holds only the lock file, as Hydra writes ``multirun.yaml`` before any job),
    remove the lock file while still holding it, if it is this command's, then the folders it made."""
    path = Path(held.name)
    with contextlib.suppress(OSError):
        if [entry.name for entry in path.parent.iterdir()] == [path.name] and runs.is_at(held, path):
            path.unlink()
    with contextlib.suppress(OSError):  # a file system's late error: the command's own line stands
        lock.close()
    _remove_if_empty(made)


def check_not_a_lone_sweep(config: DictConfig) -> None:
    """Refuse a single run whose config sets ``hydra.sweeper.params`` (a ``+sweep=`` preset) without
    giving its swept keys: it would train one run with default values instead of the grid. (A sweep's
    job run by the local launcher gives them all.)"""
    params = config.hydra.sweeper.get("params") or {}
    given = {o.key_or_group for o in parse_overrides(typed(config))}
    unset = [key for key in params if key not in given]
    if unset:
        raise ConfigError(
            f"this config is a sweep over {', '.join(unset)} (hydra.sweeper.params, e.g. from +sweep=): "
            "run it with -m to train the whole grid"
        )


def check_debug_after_sweep(config: DictConfig) -> None:
    """Refuse ``+debug=`` before ``+sweep=`` on the command line unless it names ``hydra.sweep.dir``:
    the later preset's folder wins, so the sweep's own folder would hold the debug runs, and aggregate
    would count them."""
    if "hydra.sweep.dir" in {o.key_or_group for o in parse_overrides(typed(config, "hydra"))}:
        return  # the user's folder
    given = {o.key_or_group: o.input_line for o in parse_overrides(typed(config))}
    order = list(given)
    if "debug" in given and "sweep" in given and order.index("debug") < order.index("sweep"):
        raise ConfigError(
            f"{given['debug']} comes before {given['sweep']} on the command line, so the sweep's folder "
            f"{config.hydra.sweep.dir} would hold the debug runs: put {given['debug']} last"
        )


class Preflight(Callback):
    """Validate the config and check the run (or sweep) folder is writable."""

    # Hydra turns a callback's exception into a warning and goes on, so each check ends the command here
    # (also with SDEXP_TRACEBACK=1, after the traceback).

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with reported(in_callback=True):
            warn_of_keys_given_twice(typed(config))
            check_one_option_per_group(typed(config))
            check_not_a_lone_sweep(config)
            with hydra_config_of(copy.deepcopy(config)):  # the folder's name may read ${hydra:...}
                _validate(config)
                _check_writable(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with reported(in_callback=True):
            check_hydra_groups(config)
            record_folder_naming(config)
            warn_of_keys_given_twice(typed(config))
            check_debug_after_sweep(config)
            with hydra_config_of(copy.deepcopy(config), 0):
                _validate(config, jobs_run_here(config))
            check_sweep_jobs(config, kwargs.get("config_name"))
            claim_timed_sweep_folder(config)
            _check_writable(config, "hydra.sweep.dir")
            hold_sweep_folder(config)
