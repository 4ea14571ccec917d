"""Turn SIGUSR2 (sent by SLURM/submitit before a time limit or preemption), SIGTERM and Ctrl-C (SIGINT)
into a request to stop training after the current step; a second Ctrl-C stops at once."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

from sdexp.environment import slurm_job_id
from sdexp.errors import Terminated

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
LAUNCHER_PID = "SDEXP_LAUNCHER_PID"  # set by sdexp's launchers in each job they start
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_the_launcher() -> None:
    """In a job that sdexp's local or packed launcher started (:data:`LAUNCHER_PID`), have Linux send
    SIGTERM when the launcher ends, however it ends (``kill -9`` too): the run then checkpoints and
    stops as for any stop signal, instead of training on out of reach and holding its folder. Nothing
    elsewhere (another system, or a run started by hand).

    Linux sends it when the launcher's *thread* that started the job ends: the launchers start each
    job from a thread that waits for it."""
    launcher = os.environ.pop(LAUNCHER_PID, "")  # not passed on to this run's own children
    if not launcher.isdigit() or not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: this run goes on if its launcher is killed")
    elif os.getppid() != int(launcher):  # it ended before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def reported_if_default(*signums: int) -> Iterator[None]:
    """While inside, each of ``signums`` whose handler is Python's default, which ends the process without
    a word, raises :class:`~sdexp.errors.Terminated` instead: the command then says in one line (and in
    a run's log) that it stopped, and what becomes of its work. A handler someone else installed
    (submitit's, which leaves SIGTERM to SLURM) is kept; so is any handler outside the main thread."""
    default = [
        signum
        for signum in signums
        if threading.current_thread() is threading.main_thread()
        and signal.getsignal(signum) is signal.SIG_DFL
    ]
    for signum in default:
        signal.signal(signum, _terminated)
    try:
        yield
    finally:
        for signum in default:
            signal.signal(signum, signal.SIG_DFL)


class StopSignals:
    """Context manager: while active, a stop signal only sets :attr:`received`; on exit the previous
    handlers are back. :meth:`forward` then logs the signal and delivers it to them (submitit's handler
    requeues the job; the default handler ends the process)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        # Nothing else here: a handler that logs can interrupt another log call mid-write (submitit logs
        # the SIGCONT that SLURM sends with SIGUSR2), and that write then fails and loses the message.
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait for the step
        self.received = signum

    def __exit__(self, _type: type | None, _value: BaseException | None, _tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def forward(self, ended: str | None = None) -> None:
        """Re-raise the received signal for the previous handler; exit with 128 + signal if it returns.
        ``ended``: the run's status where the signal came as it ended (completed, diverged), so there is
        nothing to resume; the signal is passed on all the same, so that what sent it stops (a sweep
        running its jobs in this process).

        Ctrl-C is not passed on (Python's handler would raise KeyboardInterrupt): the process exits."""
        if self.received is None:
            return
        name = signal.Signals(self.received).name  # the command's last line, on stderr (README)
        then = "run the same command again to resume"
        if self.received == signal.SIGUSR2 and slurm_job_id():  # a time limit or preemption: requeued
            then = "SLURM requeues the job, which resumes from it"
        done = f"the run had {ended}: nothing to resume"
        print(f"stopped ({name}): {done if ended else f'checkpoint written; {then}'}", file=sys.stderr)
        if self.received != signal.SIGINT:
            log.warning("passing %s on", name)
            signal.raise_signal(self.received)
        raise SystemExit(128 + self.received)
