"""Run an engine module under torchrun from inside a job.

Training (``engine.rcdm.launch``) and evaluation (``engine.evaluate.launch``) both run their
job on several processes the same way: torchrun starts ``processes`` ranks in the job's
process group (a job's cancel signals the whole group), rank 0 appends its ProgressEvents as
JSON lines to a file that is forwarded to the job's progress, and a cancel sends SIGTERM to
torchrun, which passes it to the ranks. ``run_module`` does that and returns torchrun's exit
code; the caller reads its module's result files.
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

from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress

log = logging.getLogger(__name__)

LOG = "log.txt"
PROGRESS = "progress.jsonl"


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
    root = str(Path(__file__).resolve().parents[1])  # the folder holding the engine package
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


def log_tail(work: Path, chars: int = 2000) -> str:
    """The end of the run's ``log.txt``."""
    path = work / LOG
    if not path.exists():
        return ""
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]
