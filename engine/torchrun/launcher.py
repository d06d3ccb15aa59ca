"""The owner's half of a torchrun run: start the ranks, forward progress, cancel, report.

``run_processes`` starts ``torchrun --standalone --nproc_per_node P -m MODULE ARGS`` in this
process group (a job's cancel signals the whole group), forwards the ProgressEvents that rank
0 appends to ``WORK/progress.jsonl``, sends SIGTERM to torchrun once on cancel (torchrun
passes it to the ranks, which save and stop), and reads the result file rank 0 wrote. Every
failure is one ``StudioError`` that quotes the ranks' ERROR lines and the tail of
``WORK/log.txt``. The rank's half is ``engine.torchrun.ranks``.

No torch here: the owner process only starts the ranks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import Cancelled, StudioError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress

log = logging.getLogger(__name__)

LOG = "log.txt"
PROGRESS = "progress.jsonl"
LAUNCH_DIR = "launch"  # OUT/launch/: inputs, progress and log of the torchrun run
RANKS_DIR = "ranks"  # OUT/ranks/rank_<r>.json: what each rank returned (weights digest, ...)


def forward_progress(path: Path, offset: int, progress: ProgressFn) -> int:
    """Send the complete lines of ``path`` after byte ``offset`` to ``progress``; new offset."""
    if not path.exists():
        return offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        d.pop("time", None)
        progress(ProgressEvent(**d))
    return offset + end


def log_tail(work: Path, chars: int = 2000) -> str:
    """The end of the run's ``log.txt``."""
    path = work / LOG
    if not path.exists():
        return ""
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]


def rank_errors(log_text: str) -> str:
    """The distinct error messages the ranks logged (``[rank r] ... ERROR name: message``),
    joined by "; " (torchrun's own report follows them and fills the log's end)."""
    said: list[str] = []
    for line in log_text.splitlines():
        head, sep, message = line.partition(": ")
        if sep and line.startswith("[rank ") and " ERROR " in head and message not in said:
            said.append(message)
    return "; ".join(said)


def run_module(module: str, args: list[str], processes: int, work: Path, cwd: Path,
               progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
               poll_seconds: float = 0.5) -> int:
    """``torchrun --standalone --nproc_per_node processes -m module *args --progress FILE``.

    Args:
        work: folder of the run's ``log.txt`` (all ranks' output, appended) and
            ``progress.jsonl`` (rank 0's events, forwarded to ``progress`` every
            ``poll_seconds``; emptied first).
        cwd: the processes' working folder.
        cancel: when set, torchrun gets SIGTERM once; the caller raises ``Cancelled``.

    Returns:
        torchrun's exit code.
    """
    work.mkdir(parents=True, exist_ok=True)
    progress_path = work / PROGRESS
    progress_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(processes), "-m", module, *args,
           "--progress", str(progress_path.resolve())]
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the engine package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    log.info("%s on %d processes: %s", module, processes, " ".join(cmd))
    with open(work / LOG, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(cwd))
        offset = 0
        signalled = False
        try:
            while proc.poll() is None:
                offset = forward_progress(progress_path, offset, progress)
                if cancel is not None and cancel.cancelled and not signalled:
                    proc.send_signal(signal.SIGTERM)  # torchrun passes it to the ranks
                    signalled = True
                time.sleep(poll_seconds)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    forward_progress(progress_path, offset, progress)
    return proc.returncode


def run_processes(module: str, args: list[str], processes: int, out_dir: Path, result: Path,
                  what: str, progress: ProgressFn = no_progress,
                  cancel: CancelToken | None = None, poll_seconds: float = 0.5,
                  kept: Path | None = None) -> dict[str, Any]:
    """Run ``module`` on ``processes`` ranks in ``out_dir`` and return rank 0's result.

    Args:
        module: the rank's entry point (``python -m module ARGS --progress FILE``).
        args: its arguments; inputs the caller wrote belong in ``out_dir/launch/``.
        out_dir: the run folder, shared by the ranks (their working folder too).
        result: the JSON file rank 0 writes when it is done (removed first, with every
            ``out_dir/ranks/rank_<r>.json``, so nothing stale is read).
        what: the run in a word, for messages ("training", "evaluation").
        progress: receives rank 0's events (forwarded every ``poll_seconds``).
        cancel: when set, the ranks get SIGTERM, save what they can after their current
            step and stop; ``Cancelled`` is raised, naming ``kept`` (what was saved).

    Returns:
        The contents of ``result``.

    Raises:
        Cancelled: when ``cancel`` is set.
        StudioError: the ranks failed or wrote no result; the message quotes their
            ERROR lines and ends with the tail of ``out_dir/launch/log.txt``.
    """
    work = out_dir / LAUNCH_DIR
    result.unlink(missing_ok=True)
    for old in (out_dir / RANKS_DIR).glob("rank_*.json"):
        old.unlink()
    # torchrun, in this process group (a job's cancel signals the whole group)
    code = run_module(module, args, processes, work, out_dir, progress, cancel, poll_seconds)
    if cancel is not None and cancel.cancelled:
        raise Cancelled(f"{what} on {processes} processes cancelled"
                        + (f"; its last checkpoint is in {kept}" if kept else ""))
    if code != 0 or not result.exists():
        said = rank_errors(log_tail(work, chars=10 ** 9))
        raise StudioError(f"the {what} on {processes} processes failed (torchrun exit code "
                          f"{code})" + (f": {said}" if said else "")
                          + f"; end of {work / LOG}:\n{log_tail(work)}")
    return json.loads(result.read_text(encoding="utf-8"))
