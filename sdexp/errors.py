"""What every sdexp command prints when it fails: one line, a non-zero exit, and no traceback.

Errors a user can fix (a config value, a file, a folder) are :class:`SdexpError` and end the command
with exit status 2; a failure of the machine (a full disk), of sweep jobs or of the code ends it with 1,
the last saying where its traceback is; Ctrl-C with 130, SIGTERM with 143. ``SDEXP_TRACEBACK=1`` (or
Hydra's own ``HYDRA_FULL_ERROR=1``) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import traceback
import typing
from collections.abc import Iterator
from enum import EnumMeta
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from sdexp.overrides import quote_override

TRACEBACK_VARIABLE = "SDEXP_TRACEBACK"
BAD_INPUT = 2
FAILED = 1
INTERRUPTED = 128 + signal.SIGINT
BROKEN_PIPE = 128 + signal.SIGPIPE


# The failure line (and the traceback of an unexpected error) goes to this logger: conf/config.yaml sends
# it to the run's train.log only, since the console gets the line from reported().
failure_log = logging.getLogger("sdexp.failure")
failure_log.addHandler(logging.NullHandler())
failure_log.propagate = False


class SdexpError(Exception):
    """An error whose message says it all, printed as one line. By default bad input (exit status 2):
    the message names the key, file or folder and says what is allowed or what to do."""

    exit_code = BAD_INPUT
    in_run_log = True  # also written to the run folder's train.log (not where the folder is another's)

    def _render_traceback_(self) -> list[str]:
        """What IPython (the notebook) shows for it: the line a command prints, or the traceback with
        ``SDEXP_TRACEBACK=1``, as for a command (``%env SDEXP_TRACEBACK=1`` in the notebook)."""
        if tracebacks_wanted():
            return "".join(traceback.format_exception(self)).rstrip().splitlines()
        return [f"error: {self}"]


class WriteError(SdexpError):
    """A file that could not be written (full disk, no permission); what was there before is intact."""

    exit_code = FAILED


class SweepFailed(SdexpError):
    """Jobs of a sweep failed; the launcher's summary above names them."""

    exit_code = FAILED


class Terminated(BaseException):
    """SIGTERM (or ``signum``: SIGHUP) reached a command that has something to say or do first: raised,
    like Python's KeyboardInterrupt for Ctrl-C, so that its cleanup runs and it says so; exit status
    128 + the signal."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Exceptions whose message explains them; any other is unexpected (a bug) and gets its traceback logged.
EXPLAINED = (SdexpError, KeyboardInterrupt, Terminated, HydraException, OmegaConfBaseException)


def tracebacks_wanted() -> bool:
    return os.environ.get(TRACEBACK_VARIABLE, "0") not in ("", "0")


def let_hydra_raise() -> None:
    """Make Hydra raise its errors to :func:`reported` instead of printing them (``HYDRA_FULL_ERROR=1``).

    The user's own ``HYDRA_FULL_ERROR`` is kept as ``SDEXP_TRACEBACK``, set either way, so that child
    processes (which inherit both) do not take the forced value for the user's.
    """
    if TRACEBACK_VARIABLE not in os.environ:
        os.environ[TRACEBACK_VARIABLE] = "1" if os.environ.get("HYDRA_FULL_ERROR", "0") != "0" else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"


def first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _hydra_check(exc: BaseException) -> str | None:
    """If Hydra's own code raised ``exc`` (it checks the command line with plain ValueErrors), its line,
    led by the override it was checking where its frame holds one (``model=null: ...``); else None."""
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    if not frames or not str(frames[-1].f_globals.get("__name__", "")).startswith("hydra."):
        return None
    override = frames[-1].f_locals.get("override")
    line = getattr(override, "input_line", None)
    if line is None:
        return first_line(exc)
    from sdexp.config import group_options  # here: sdexp.config imports this module

    options = group_options(str(getattr(override, "key_or_group", "")))
    if options:  # e.g. model=null
        group = override.key_or_group
        return f"{line}: {group} needs one of its options: {', '.join(options)}"
    return f"{line}: {first_line(exc)}"


def not_a_key(exc: ConfigKeyError | ConfigAttributeError) -> str:
    """The line for a key the schema lacks, with the keys its parent has."""
    key, parent = exc.full_key, getattr(exc, "parent_node", None)
    keys = [name for name in parent or () if not str(name).startswith("_")]  # not _target_
    where = key.rpartition(".")[0] or "the config"
    if keys:
        return f"{key} is not a config key; {where} has {', '.join(keys)}"
    if parent is not None and len(parent) == 0:  # e.g. hydra.launcher.additional_parameters
        return f"{key} is not a config key; {where} has no keys yet: add one with a +, +{key}=..."
    return f"{key} is not a config key"


_A_VALUE_OF = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}


def _parses(override: str) -> bool:
    """Whether Hydra parses ``override``: advice to rewrite an override is given only if it would."""
    try:
        OverridesParser.create().parse_override(override)
    except HydraException:
        return False
    return True


def _config_message(exc: Exception) -> str:
    """One line from a Hydra or OmegaConf composition error: what was wrong and what is allowed."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options is not None:
        from hydra_plugins.sdexp_launcher.slurm_config import SCHEMA  # on this error path only

        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        options = sorted(set(exc.options) - {SCHEMA})  # the slurm preset's schema, refused if chosen
        return f"{group}={option}: no such option; {group} is one of {', '.join(options)}"
    if isinstance(exc, OverrideParseException):
        line = f"cannot parse the override {exc.override!r} ({first_line(exc.message)})"
        key, equals, value = str(exc.override).partition("=")
        quoted = f"{key}={quote_override(value)}"
        if equals and "${" not in value and value[:1] not in "[{('\"" and _parses(quoted):  # e.g. a path
            line += f"; put the value in quotes (within the shell's): {quoted}"
        return line
    override = _override_being_applied(exc)
    if isinstance(exc, ConfigCompositionException) and override and str(exc).startswith("Could not append"):
        return f"{override}: {override[1:].partition('=')[0]} is in the config already: set it without the +"
    added = _group_added_twice(exc)
    group = added[0][1:].partition("=")[0] if added else ""
    if len(added) > 1 and not _in_primary_defaults(group):  # +sweep=a +sweep=b
        twice = "is given twice: give it once" if len(set(added)) == 1 else "takes one option: give one"
        return f"{' and '.join(dict.fromkeys(added))}: {group} {twice}"
    if added:  # +model=resnet56, where model has its default option
        return f"{added[0]}: {group} has an option already: write {added[0][1:]}, without the +"
    ambiguous = _AMBIGUOUS.match(str(exc))
    if ambiguous:  # Hydra's own advice follows on lines of its own, with "--multirun"
        line = ambiguous.group(1)
        from sdexp.config import group_options  # here: sdexp.config imports this module

        if group_options(line.partition("=")[0]):
            return f"{line}: options separated by commas are a sweep, which only run.py -m runs: give one"
        return (
            f"{line}: values separated by commas are a sweep, which only run.py -m runs: give one value "
            "(or, where the key takes a list, a list in brackets)"
        )
    if isinstance(exc, InstantiationException):  # "Error in call to target 'X':", the reason below it
        return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    key = getattr(cause, "full_key", None)
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and key:
        return not_a_key(cause)
    detail = first_line(getattr(cause, "msg", None) or cause)
    if key and detail.endswith("is not Optional"):  # null given for a key that needs a value
        kind = getattr(getattr(getattr(cause, "child_node", None), "_metadata", None), "ref_type", None)
        allowed = (
            f"one of {', '.join(m.value for m in kind)}"
            if isinstance(kind, EnumMeta)
            else _A_VALUE_OF.get(typing.get_origin(kind) or kind, "a value")
        )
        return f"{key}=null is not allowed: give {allowed}"
    return f"{key}: {detail}" if key else first_line(exc)


def _override_being_applied(exc: BaseException) -> str | None:
    """The override Hydra was applying to the config when ``exc`` was raised, or None."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_name == "_apply_overrides_to_config":
            return getattr(frame.f_locals.get("override"), "input_line", None)
    return None


_AMBIGUOUS = re.compile(r"Ambiguous value for argument '(.*)'$", re.MULTILINE)
_GROUP_TWICE = re.compile(r"Multiple values for (\S+)\.|(\S+) appears more than once in the final defaults")


def _group_added_twice(exc: BaseException) -> list[str]:
    """Each ``+group=option`` of the command line where ``exc`` is Hydra's error for a group given twice
    (its advice, ``override group: ...``, is for a YAML defaults list): one where the group has its
    default option, two where the command adds it twice; else none."""
    found = _GROUP_TWICE.match(str(exc)) if isinstance(exc, ConfigCompositionException) else None
    group = found and (found.group(1) or found.group(2))
    return [arg for arg in sys.argv[1:] if group and arg.startswith(f"+{group}=")]


def _in_primary_defaults(group: str) -> bool:
    """Whether conf/config.yaml's defaults list names ``group`` (then ``+group=`` is refused as such)."""
    from sdexp.config import CONF_DIR  # here: sdexp.config imports this module

    defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text(encoding="utf-8"))["defaults"]
    return any(isinstance(entry, dict) and group in entry for entry in defaults)


def _a_file_in_the_way(exc: BaseException) -> bool:
    """Whether ``exc`` is ``mkdir``'s error for a path that is a file (the one way sdexp and Hydra meet
    FileExistsError: files are written by rename, which replaces)."""
    if not isinstance(exc, FileExistsError) or not exc.filename:
        return False
    path = Path(os.fsdecode(exc.filename))
    try:
        return path.exists() and not path.is_dir()
    except OSError:
        return False


def message(exc: BaseException) -> tuple[str, int]:
    """The line to print for ``exc`` and the exit status."""
    if isinstance(exc, HydraException) and isinstance(exc.__cause__, SdexpError):
        exc = exc.__cause__  # e.g. a launcher's own check, wrapped by Hydra's instantiate
    notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
    if isinstance(exc, SdexpError):
        return f"error: {exc}{notes}", exc.exit_code
    if isinstance(exc, HydraException | OmegaConfBaseException):
        return f"error: {_config_message(exc)}{notes}", BAD_INPUT
    if isinstance(exc, KeyboardInterrupt):
        return f"stopped (Ctrl-C){notes}", INTERRUPTED
    if isinstance(exc, Terminated):
        return f"stopped ({signal.Signals(exc.signum).name}){notes}", 128 + exc.signum
    if _a_file_in_the_way(exc):  # Hydra making a job's folder where a file is
        return f"error: cannot make the folder {os.fsdecode(exc.filename)}: it is a file{notes}", BAD_INPUT
    override = _override_being_applied(exc) if isinstance(exc, AssertionError) else None
    if override is not None:  # e.g. +dataset.mean.x=1, where dataset.mean is null: OmegaConf asserts
        return f"error: {override}: cannot apply it to the config ({first_line(exc)}){notes}", BAD_INPUT
    hydra_check = _hydra_check(exc) if isinstance(exc, ValueError) else None
    if hydra_check is not None:  # e.g. model=null, -m with --cfg
        return f"error: {hydra_check}{notes}", BAD_INPUT
    # not EXPLAINED: say where its traceback is
    logs = [h.baseFilename for h in failure_log.handlers if isinstance(h, logging.FileHandler)]
    where = f"the traceback is in {logs[0]}, or set" if logs else "set"
    hint = f" ({where} {TRACEBACK_VARIABLE}=1 to print it)"
    return f"error: {type(exc).__name__}: {first_line(exc)}{notes}{hint}", FAILED


@contextlib.contextmanager
def reported(prints_output: bool = False, in_callback: bool = False) -> Iterator[None]:
    """Turn any exception raised inside into one line on stderr and ``sys.exit`` with its status
    (see :func:`message`); with ``SDEXP_TRACEBACK=1`` the exception is raised as it is.
    ``prints_output``: the command's product is what it prints, so a broken pipe means its reader
    left early, and it ends quietly. ``in_callback``: inside a Hydra callback, which would turn the
    exception into a warning and go on, so the traceback is printed and the command ends all the same."""
    try:
        yield
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        if prints_output and isinstance(exc, BrokenPipeError):  # its reader left (``... | head``)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(BROKEN_PIPE)  # quietly, as Unix tools do
        if tracebacks_wanted() and not in_callback:
            raise
        if tracebacks_wanted():
            traceback.print_exc()
        line, code = message(exc)
        if getattr(exc, "in_run_log", True):
            failure_log.error("%s", line, exc_info=None if isinstance(exc, EXPLAINED) else exc)
        print(line, file=sys.stderr, flush=True)
        sys.exit(code)
