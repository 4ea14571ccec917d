"""Where is my sweep? One line per run of each sweep or run folder given: status, epoch/total, last
validation error, img/s, time left and SLURM job; totals at the bottom.

    python analysis/status.py multirun/paper_cifar10 [more folders] [--watch [SECONDS]]

It reads the run folders only (no SLURM calls), while runs write. Status ``stopped``: the run says
it is running, or took its folder, but no process holds the folder (killed, or its node lost): rerun
the sweep's command to resume it. ``interrupted``: stopped by a signal after a checkpoint (rerun to
resume); ``diverged``: its loss became non-finite. ``starting``: no result yet (loading its data);
``failed: ...``: it failed before training, with its error; ``queued``: submitted to SLURM, not
started; ``not started``: no folder yet.
"""

from __future__ import annotations

import argparse
import sys
import time

from sdexp import status
from sdexp.errors import reported

CLEAR = "\033[2J\033[H"  # clear the terminal, cursor to the top left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep folders (multirun/...) or run folders")
    parser.add_argument("--watch", type=_seconds, nargs="?", const=10.0, default=None, metavar="SECONDS",
                        help="refresh every SECONDS (default 10) until Ctrl-C")  # fmt: skip
    args = parser.parse_args()
    if args.watch is not None and not 0 < args.watch < 86400:  # NaN fails too
        parser.error(f"--watch {args.watch}: give a number of seconds > 0 and below a day")
    if args.watch is None:
        print(report(args.paths))
        return
    try:
        while True:
            header = f"{time.strftime('%H:%M:%S')}  (every {args.watch:g} s; Ctrl-C to stop)"
            clear = CLEAR if sys.stdout.isatty() else "\n"  # a file gets one report after another
            print(f"{clear}{header}\n{report(args.paths)}", flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:  # the way to leave --watch: not an error
        return


def _seconds(text: str) -> float:
    """``--watch``'s value; a folder there (``--watch multirun/x``) was meant as a path."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds (for the default 10 s, put --watch after the folders)"
        ) from None


def report(paths: list[str]) -> str:
    """The table, its totals line and any notes (a damaged multirun.yaml)."""
    table = status.sweep_status(paths)
    notes = "".join(f"\nnote: {note}" for note in table.attrs["notes"])
    return f"{status.render(table)}\n{status.totals(table)}{notes}"


if __name__ == "__main__":
    with reported(prints_output=True):  # one line and an exit status on failure, as every sdexp command
        main()
