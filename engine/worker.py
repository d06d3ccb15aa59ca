"""Entry point of a job process: ``python -m engine.worker JOB_FOLDER``.

SIGTERM (sent to the whole process group by cancel) sets the cancel token; the engine loop
stops at its next step, saves what it can, and the worker exits with ``status.json`` saying
``cancelled``.

Fault injection (tests only): with ``RCDM_STUDIO_FAULT_HOLD=N`` in its environment, the
worker pauses at the first progress event with ``N <= step < total`` — in the middle of its
work, with part of its outputs written — creates ``JOB_FOLDER/fault-hold`` and sleeps until
it is cancelled or killed, or the file is deleted (then it goes on with its work). The fault
tests (``tests/faults``) kill it there, or release it after its owner is gone.

Priority: a worker lowers its own CPU priority by ``RCDM_STUDIO_WORKER_NICE`` (default 10;
``0`` keeps it) before it imports anything heavy, so that a job using every core never
makes the studio's page slow to answer. GPU work is unaffected.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from engine.jobs import execute
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress

FAULT_HOLD_ENV = "RCDM_STUDIO_FAULT_HOLD"
FAULT_HOLD_FILE = "fault-hold"
NICE_ENV = "RCDM_STUDIO_WORKER_NICE"
DEFAULT_NICE = 10


def lower_priority() -> int:
    """Raise this process's niceness by ``$RCDM_STUDIO_WORKER_NICE`` (default 10); returns
    the niceness now in force. Threads started afterwards (torch's) inherit it."""
    value = os.environ.get(NICE_ENV, str(DEFAULT_NICE)).strip() or "0"
    try:
        step = max(0, int(value))
    except ValueError:
        logging.getLogger(__name__).warning("%s=%r is not an integer; priority kept",
                                            NICE_ENV, value)
        step = 0
    if not hasattr(os, "nice"):  # not POSIX
        return 0
    return os.nice(step)


def _fault_hold(folder: Path, cancel: CancelToken) -> ProgressFn:
    """The progress hook that pauses the worker mid-job when ``FAULT_HOLD_ENV`` is set."""
    value = os.environ.get(FAULT_HOLD_ENV, "")
    if not value:
        return no_progress
    at = int(value)
    held = False

    def hold(event: ProgressEvent) -> None:
        nonlocal held
        if held or not (at <= event.step < event.total):
            return
        held = True
        logging.getLogger(__name__).warning("fault hold at %s step %d/%d", event.stage,
                                            event.step, event.total)
        mark = folder / FAULT_HOLD_FILE
        mark.write_text(f"{event.stage} {event.step} {os.getpid()}\n")
        while not cancel.cancelled and mark.exists():
            time.sleep(0.05)

    return hold


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m engine.worker JOB_FOLDER\n")
        return 2
    folder = Path(argv[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    niceness = lower_priority()
    logging.getLogger(__name__).info("worker pid %d at niceness %d", os.getpid(), niceness)
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    outcome = execute(folder, progress=_fault_hold(folder, cancel), cancel=cancel)
    return 0 if outcome["status"] == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
