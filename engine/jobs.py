"""Background jobs: spec -> worker process -> progress/result files -> ingest by the owner.

A job has a folder ``ASSETS/jobs/<id>/`` holding

- ``spec.json``      kind, title, params (everything the worker needs; it never opens the DB)
- ``progress.jsonl`` one ProgressEvent per line, appended by the worker
- ``log.txt``        the worker's log (stdout and stderr)
- ``result.json``    written atomically by the worker when its work is complete
- ``status.json``    written atomically last: {"status": done|failed|cancelled, "error": ...}

The owner of the project (the studio, or a CLI command) is the only one that writes rows:
``JobManager.poll()`` starts queued jobs within the concurrency limit, notices finished
processes and ingests their results. Workers run in their own process group
(``start_new_session``) so that cancel can signal the whole group. A job whose process is
gone without a ``status.json`` becomes ``interrupted`` and can be retried; training and
evaluation resume from their last checkpoint because the retry reuses the job folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from engine.errors import Cancelled, JobError, StudioError, describe_os_error
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.project import Job, Project, new_id, utcnow, write_json_atomic
from engine.settings import visible_gpus
from engine.stages import JobSpec

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "ingesting")
FINISHED = ("done", "failed", "cancelled", "interrupted")


# ---------------------------------------------------------------------- files of a job


def read_progress(folder: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The progress events of a job (the ``last`` ones when given). Torn lines are skipped."""
    path = folder / "progress.jsonl"
    if not path.exists():
        return []
    with open(path, "rb") as f:
        if last is not None:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 4096 * max(1, last)))
        lines = f.read().decode("utf-8", "replace").splitlines()
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events[-last:] if last is not None else events


def read_log_tail(folder: Path, max_chars: int = 4000) -> str:
    path = folder / "log.txt"
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - max_chars))
        return f.read().decode("utf-8", "replace")


def read_status(folder: Path) -> dict[str, Any] | None:
    path = folder / "status.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


class ProgressWriter:
    """A ProgressFn that appends events to ``progress.jsonl`` (at most ~5 lines a second)."""

    def __init__(self, folder: Path, also: ProgressFn = no_progress, min_interval: float = 0.2):
        self._path = folder / "progress.jsonl"
        self._also = also
        self._min_interval = min_interval
        self._last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        self._also(event)
        now = time.time()
        final = event.step >= event.total
        if not final and event.preview is None and now - self._last < self._min_interval:
            return
        self._last = now
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event.to_dict()) + "\n")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return True


# ---------------------------------------------------------------------- the manager


WORKER_SECRETS = ("RCDM_STUDIO_AUTH",)  # owner-side settings a worker never receives


def default_max_running() -> int:
    """One worker per GPU; one on a machine without a GPU."""
    return max(1, len(visible_gpus()))


class JobManager:
    """Queue, start, watch, cancel and ingest jobs of one project (owner side).

    Jobs wait in the project as ``queued`` rows; every ``poll()`` starts the oldest ones while
    fewer than ``max_running`` workers run, so a queue left by a previous owner (a studio
    restart) starts with the next owner's first poll.

    Args:
        project: the open project (this process is its writer).
        max_running: how many worker processes may run at once; None = one per GPU, one on
            a CPU machine (``default_max_running``).
        gpus: with two or more, each worker is pinned to a GPU no other running worker of
            this manager holds (``CUDA_VISIBLE_DEVICES``), so its "cuda" is that GPU. None =
            the GPUs this process sees, unless ``CUDA_VISIBLE_DEVICES`` is already set.
        busy: worker slots held elsewhere that count against ``max_running`` (the studio
            holds several projects open, one manager each, and one limit for all).
    """

    def __init__(self, project: Project, max_running: int | None = None,
                 gpus: list[int] | None = None, busy: Callable[[], int] | None = None) -> None:
        self.project = project
        self.max_running = default_max_running() if max_running is None else max_running
        if self.max_running < 1:
            raise JobError(f"max_running must be >= 1, got {self.max_running}")
        if gpus is None:
            gpus = [] if "CUDA_VISIBLE_DEVICES" in os.environ else visible_gpus()
        self.gpus = list(gpus) if len(gpus) > 1 else []
        self._procs: dict[str, subprocess.Popen] = {}
        self._gpu_of: dict[str, list[int]] = {}  # running job id -> the GPUs it was pinned to
        self.busy = busy
        self._width: dict[str, int] = {}  # started job id -> its slots

    # -- submission

    def folder(self, job: Job) -> Path:
        return self.project.abs(job.folder)

    def create(self, spec: JobSpec) -> Job:
        """Write the job folder and its row (status ``queued``).

        The stage's hooks and its ingest find the job's id in their params as ``job_id``, so
        the rows they write record the job that made them. When the job cannot be created
        (a full disk, a permission refused), nothing is left behind: its folder and what
        ``prepare`` wrote (``spec.made``) are removed, and the stage's ``on_failure`` hook
        settles the rows ``prepare`` added.
        """
        from engine import stages

        stage = stages.get(spec.kind)  # unknown kinds fail here, not in the worker
        job_id = new_id("job")
        params = {**spec.params, "job_id": job_id}
        folder = self.project.assets / "jobs" / job_id
        try:
            folder = self.project.new_folder("jobs", job_id)
            write_json_atomic(folder / "spec.json",
                              {"kind": spec.kind, "title": spec.title, "params": params,
                               "job_id": job_id, "project": str(self.project.path)})
            return self.project.add(Job(id=job_id, kind=spec.kind, title=spec.title,
                                        status="queued", folder=self.project.rel(folder)))
        except BaseException as exc:
            for path in (folder, *(Path(p) for p in spec.made)):
                remove_path(path)
            try:
                stage.on_failure(self.project, {"kind": spec.kind, "params": params}, "failed",
                                 error_sentence(exc))
            except Exception:  # noqa: BLE001 - the job's own error is the one to raise
                log.exception("on_failure hook of a job that could not be created failed")
            raise

    def submit(self, spec: JobSpec) -> Job:
        """Queue a job; it starts at the next ``poll()`` when a slot is free."""
        job = self.create(spec)
        self.poll()
        return self.project.get(Job, job.id)

    # -- the loop the owner calls (gr.Timer in the studio)

    def poll(self) -> list[Job]:
        """Notice finished workers, ingest their results, start queued jobs. Returns all jobs."""
        jobs = self.project.list(Job)
        running = 0  # slots in use: a job of several processes holds one slot per process
        for job in jobs:
            if job.status == "running":
                if self._alive(job):
                    running += self._slots(job)
                else:
                    self._finish(job)
            elif job.status == "ingesting":
                self._finish(job)
        running += self.busy() if self.busy is not None else 0
        for job in self.project.list(Job, status="queued"):
            slots = self._slots(job)
            # a job wider than the limit still runs, alone, rather than waiting forever
            if running > 0 and running + slots > self.max_running:
                break
            self._start(job)
            running += slots
        return self.project.list(Job)

    def running_slots(self) -> int:
        """Slots held by the workers this manager started and that still run."""
        return sum(self._width.get(job_id, 1) for job_id, proc in list(self._procs.items())
                   if proc.poll() is None)

    def _slots(self, job: Job) -> int:
        """How many processes (GPUs) the job runs: its ``processes`` parameter, else 1."""
        try:
            return max(1, int(self._spec(job)["params"].get("processes", 1) or 1))
        except (OSError, ValueError, KeyError, TypeError):
            return 1

    def reconcile(self) -> list[Job]:
        """At start-up: settle jobs left by a previous owner (crash, restart, kill)."""
        changed = []
        for job in self.project.list(Job):
            if job.status in ("running", "ingesting") and not self._alive(job):
                self._finish(job)
                changed.append(self.project.get(Job, job.id))
        return changed

    def _free_gpus(self, n: int = 1) -> list[int]:
        """``n`` GPUs, those no running worker of this manager holds first ([]: no pinning)."""
        if not self.gpus:
            return []
        held = [g for j, gs in self._gpu_of.items() if j in self._procs for g in gs]
        free = [g for g in self.gpus if g not in held]
        busy = sorted(set(self.gpus) - set(free), key=held.count)
        return (free + busy)[:max(1, min(n, len(self.gpus)))]

    def _alive(self, job: Job) -> bool:
        proc = self._procs.get(job.id)
        if proc is not None:
            return proc.poll() is None
        return pid_alive(job.pid)

    def _start(self, job: Job) -> None:
        folder = self.folder(job)
        for name in ("status.json",):
            (folder / name).unlink(missing_ok=True)
        logf = open(folder / "log.txt", "ab")
        from engine.settings import worker_environment

        # the owner's environment less its secrets (a worker needs no login), plus the
        # project's own settings
        env = {k: v for k, v in os.environ.items() if k not in WORKER_SECRETS}
        env.update(worker_environment(self.project))
        env.setdefault("PYTHONUNBUFFERED", "1")
        gpus = self._free_gpus(self._slots(job))
        if gpus:
            pin = ",".join(str(g) for g in gpus)
            env["CUDA_VISIBLE_DEVICES"] = pin
            logf.write(f"pinned to GPU {pin} (CUDA_VISIBLE_DEVICES={pin})\n".encode())
            logf.flush()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "engine.worker", str(folder)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=str(folder))
        except OSError as exc:
            logf.close()
            self.project.update(Job, job.id, status="failed", error=f"cannot start worker: {exc}",
                                finished_at=utcnow())
            return
        logf.close()
        self._procs[job.id] = proc
        self._width[job.id] = self._slots(job)
        if gpus:
            self._gpu_of[job.id] = gpus
        self.project.update(Job, job.id, status="running", pid=proc.pid, started_at=utcnow(),
                            error="")
        self._on_start(job)
        log.info("job %s (%s) started as pid %d", job.id, job.kind, proc.pid)

    def _on_start(self, job: Job) -> None:
        from engine import stages

        hook = getattr(stages.get(job.kind), "on_start", None)
        if hook is not None:
            hook(self.project, self._spec(job)["params"])

    def _finish(self, job: Job) -> None:
        """The worker is gone: read its status and ingest, or mark the job."""
        self._procs.pop(job.id, None)
        self._gpu_of.pop(job.id, None)
        self._width.pop(job.id, None)
        folder = self.folder(job)
        status = read_status(folder)
        if status is None:
            self._mark(job, "interrupted", "the worker stopped without finishing "
                       "(killed or crashed); retry resumes from its last checkpoint")
            return
        if status.get("status") == "done":
            self.ingest(job)
        elif status.get("status") == "cancelled":
            self._mark(job, "cancelled", "cancelled by the user")
        else:
            self._mark(job, "failed", status.get("error") or "the worker failed; see its log")

    def _mark(self, job: Job, status: str, error: str) -> None:
        from engine import stages

        self.project.update(Job, job.id, status=status, error=error, finished_at=utcnow())
        try:
            stages.get(job.kind).on_failure(self.project, self._spec(job), status, error)
        except Exception:  # noqa: BLE001 - a failing hook must not hide the job's state
            log.exception("on_failure hook of job %s failed", job.id)

    def _spec(self, job: Job) -> dict[str, Any]:
        return json.loads((self.folder(job) / "spec.json").read_text())

    def ingest(self, job: Job) -> Job:
        """Turn a finished worker's outputs into project rows (idempotent)."""
        from engine import stages

        folder = self.folder(job)
        spec = self._spec(job)
        result = json.loads((folder / "result.json").read_text())
        self.project.update(Job, job.id, status="ingesting")
        try:
            result_id = stages.get(job.kind).ingest(self.project, spec["params"], result)
        except StudioError as exc:
            log.exception("ingest of job %s failed", job.id)
            return self.project.update(Job, job.id, status="failed", error=str(exc),
                                       finished_at=utcnow())
        return self.project.update(Job, job.id, status="done", result_id=result_id or "",
                                   finished_at=utcnow(), error="")

    # -- user actions

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job, or signal a running worker's process group (SIGTERM)."""
        job = self.project.get(Job, job_id)
        if job.status == "queued":
            self._mark(job, "cancelled", "cancelled before it started")
        elif job.status == "running" and job.pid:
            try:
                os.killpg(job.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        else:
            raise JobError(f"job {job_id} is {job.status}; only queued or running jobs cancel")
        return self.project.get(Job, job_id)

    def kill(self, job_id: str) -> None:
        """SIGKILL a running worker's process group (when cancel is not enough)."""
        job = self.project.get(Job, job_id)
        if job.pid:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def retry(self, job_id: str) -> Job:
        """Queue a failed, cancelled or interrupted job again in the same folder (resumes)."""
        job = self.project.get(Job, job_id)
        if job.status not in ("failed", "cancelled", "interrupted"):
            raise JobError(f"job {job_id} is {job.status}; only finished jobs without "
                           f"success can be retried")
        from engine import stages

        stages.get(job.kind).on_retry(self.project, self._spec(job)["params"])
        self.project.update(Job, job.id, status="queued", error="", pid=None,
                            finished_at=None)
        self.poll()
        return self.project.get(Job, job_id)

    def wait(self, job_id: str, timeout: float | None = None, interval: float = 0.5) -> Job:
        """Poll until the job is finished (tests and scripts)."""
        start = time.time()
        while True:
            self.poll()
            job = self.project.get(Job, job_id)
            if job.status in FINISHED:
                return job
            if timeout is not None and time.time() - start > timeout:
                raise JobError(f"job {job_id} still {job.status} after {timeout:.0f} s")
            time.sleep(interval)

    # -- in-process execution (the command line)

    def run_inline(self, spec: JobSpec, progress: ProgressFn = no_progress,
                   cancel: CancelToken | None = None) -> Job:
        """Run a job in this process (same files, same ingest) and return the finished job.

        Raises the worker's error (Cancelled, StudioError, ...) after recording it.
        """
        job = self.create(spec)
        folder = self.folder(job)
        self.project.update(Job, job.id, status="running", pid=os.getpid(),
                            started_at=utcnow())
        try:
            self._on_start(job)
            execute(folder, progress=progress, cancel=cancel or CancelToken())
        except BaseException as exc:  # execute could not even record the outcome (full disk)
            self._mark(job, "failed" if isinstance(exc, Exception) else "interrupted",
                       error_sentence(exc))
            raise
        job = self.project.get(Job, job.id)
        self._finish(job)
        job = self.project.get(Job, job.id)
        if job.status != "done":
            status = read_status(folder) or {}
            if status.get("status") == "cancelled":
                raise Cancelled(f"{spec.title}: cancelled")
            raise JobError(f"{spec.title} failed: {job.error}")
        return job


# ---------------------------------------------------------------------- the worker side


def execute(folder: Path, progress: ProgressFn = no_progress,
            cancel: CancelToken | None = None) -> dict[str, Any]:
    """Run the job of ``folder`` to completion: the body of a worker process.

    Writes ``result.json`` then ``status.json``; never raises for the job's own failure
    (the status file carries it), so the caller can always read the outcome.
    """
    from engine import stages

    cancel = cancel or CancelToken()
    spec = json.loads((folder / "spec.json").read_text())
    writer = ProgressWriter(folder, also=progress)
    try:
        stage = stages.get(spec["kind"])
        result = stage.run(spec["params"], folder, writer, cancel)
        write_json_atomic(folder / "result.json", result)
        write_json_atomic(folder / "status.json", {"status": "done"})
        return {"status": "done"}
    except Cancelled:
        log.info("job cancelled")
        write_json_atomic(folder / "status.json", {"status": "cancelled"})
        return {"status": "cancelled"}
    except StudioError as exc:
        log.error("job failed: %s", exc)
        write_json_atomic(folder / "status.json", {"status": "failed", "error": str(exc)})
        return {"status": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the worker reports every failure
        if describe_os_error(exc) is None:
            log.exception("job crashed")
        else:  # the input or the machine (a full disk...): one sentence, the trace in the log
            log.error("job failed: %s", describe_os_error(exc), exc_info=True)
        error = error_sentence(exc)
        write_json_atomic(folder / "status.json", {"status": "failed", "error": error})
        return {"status": "failed", "error": error}


def error_sentence(exc: BaseException) -> str:
    """What a failed job's row says: the engine's own sentence, the OS's refusal in plain
    words (``describe_os_error``), else the exception's type and message."""
    if isinstance(exc, StudioError):
        return str(exc)
    return describe_os_error(exc) or f"{type(exc).__name__}: {exc}"


def remove_path(path: Path) -> None:
    """Remove a file, a link (never what it points at) or a folder; quietly when gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
