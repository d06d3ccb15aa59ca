"""Run an engine module under torchrun from inside a job.

Training (``engine.rcdm.training_ranks``) and evaluation (``engine.evaluate.classifier_ranks``) both run their
job on several processes the same way: torchrun starts ``processes`` ranks in the job's
process group (a job's cancel signals the whole group), rank 0 appends its ProgressEvents as
JSON lines to a file that is forwarded to the job's progress, and a cancel sends SIGTERM to
torchrun, which passes it to the ranks. ``run_module`` does that and returns torchrun's exit
code; the caller reads its module's result files. Inside each rank, ``rank_setup``,
``progress_writer``, ``run_rank`` and ``write_json`` are the other half of that contract.
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
from typing import Any, Callable, TypeVar

from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress

log = logging.getLogger(__name__)
T = TypeVar("T")

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


# ---------------------------------------------------------------------- inside each rank


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (a temp sibling, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj), encoding="utf-8")
    os.replace(tmp, path)


def rank_setup() -> tuple[int, CancelToken]:
    """This process's rank (``RANK``, 0 alone), logging that names it (INFO on rank 0,
    warnings elsewhere; ``run_processes`` quotes the ERROR lines), and a cancel token set by
    SIGTERM (torchrun passes a job's cancel on as SIGTERM)."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    return rank, cancel


def progress_writer(path: str | None, rank: int) -> ProgressFn:
    """A ProgressFn appending rank 0's events as JSON lines to ``path`` (what ``run_module``
    forwards); other ranks, or no path, write nothing."""
    if not path or rank != 0:
        return no_progress
    target = Path(path)

    def write(event: ProgressEvent) -> None:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(event.to_dict()) + "\n")

    return write


def run_rank(body: Callable[[], T]) -> tuple[int, T | None]:
    """Run one rank's work: (0, result), or (3, None) when cancelled, (2, None) on a
    ``StudioError`` (logged); the process group is destroyed either way."""
    from engine.errors import Cancelled, StudioError

    try:
        return 0, body()
    except Cancelled as exc:
        log.warning("%s", exc)
        return 3, None
    except StudioError as exc:
        log.error("%s", exc)
        return 2, None
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
