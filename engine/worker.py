"""Entry point of a job process: ``python -m engine.worker JOB_FOLDER``.

SIGTERM (sent to the whole process group by cancel) sets the cancel token; the engine loop
stops at its next step, saves what it can, and the worker exits with ``status.json`` saying
``cancelled``.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from engine.jobs import execute
from engine.progress import CancelToken


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine.worker JOB_FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    signal.signal(signal.SIGINT, lambda *_: cancel.cancel())
    outcome = execute(folder, cancel=cancel)
    return 0 if outcome["status"] == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
