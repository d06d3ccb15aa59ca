"""The studio's state: the projects the owner process holds open, and the browser sessions.

One ``StudioContext`` is created by ``build_app`` and captured by the handlers of that app
(never module-level: two apps in one process stay separate).

**Sessions.** Each browser session (Gradio's ``session_hash``) has its own open project:
switching in one tab never changes another. The handlers read ``ctx.project`` at call time;
it is the project of the session whose request is being handled (Gradio's request context),
so the handlers need no session argument. A session that never switched follows the studio's
**default** project (the one given at start-up; None: the studio opens on the Projects tab);
calls made outside a browser request (start-up, scripts, tests) act on that default. Idle
sessions are forgotten after ``SESSION_IDLE_S`` (or when their page closes).

**Projects.** The owner holds several projects open, each once (``OpenProject``: the only
writer of its file, its job manager, its locks and caches), shared by every session on it. A
project no session shows is closed once it has no job queued or running. Worker slots are
counted across all open projects (one worker at a time on a CPU machine, whoever asked).

``poll`` drives the jobs of every open project and its recipe searches (``engine.recipe``):
when a job has finished since the previous poll, every search still queued or running is
advanced (its finished jobs fed back, its next jobs queued), so a search runs to its end
while a studio is open on the project, and resumes when one is opened again.

**Access** (``studio.access``): in a public studio, a visitor's ``ctx.project`` refuses every
write but curation's, and ``submit`` refuses jobs a visitor may not start or that pass a quota.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.errors import StudioError
from engine.jobs import ACTIVE, FINISHED, JobManager
from engine.project import Experiment, Job, Project, project_paths, reads
from engine.stages import JobSpec
from studio.access import Access, VisitorProject
from studio.map_select import MapViews

log = logging.getLogger(__name__)

_BAND_CACHE_SIZE = 8
POLL_REUSE_S = 0.5  # polls closer than this share one job-manager poll
SESSION_IDLE_S = 3600.0  # a session not heard of for this long is forgotten
MAX_SESSIONS = 512  # beyond this, the least recently seen sessions are forgotten
NO_REQUEST = ""  # the session of calls made outside a browser request
_ACTING: ContextVar[str | None] = ContextVar("rcdm_acting_session", default=None)


class NoProjectError(StudioError):
    """The session has no open project (the studio started without one)."""


def request_session() -> tuple[str, Any]:
    """(session id, the gr.Request) of the browser request being handled; (NO_REQUEST, None)
    outside one. Gradio keeps the request in a context variable around every handler; a
    request the studio answers itself (the map's selection) names its session with
    ``acting_as``."""
    acting = _ACTING.get()
    if acting is not None:
        return acting, None
    try:
        from gradio.context import LocalContext
    except ImportError:  # pragma: no cover - the studio always has gradio
        return NO_REQUEST, None
    request = LocalContext.request.get(None)
    session = getattr(request, "session_hash", None) if request is not None else None
    return (session or NO_REQUEST), request


@contextlib.contextmanager
def acting_as(session_id: str):  # noqa: ANN201 - a context manager
    """Run the enclosed code as browser session ``session_id`` (for a route outside Gradio's
    events: ``studio.map_select``). The session must exist: its project and permissions are
    the ones it has now."""
    token = _ACTING.set(session_id)
    try:
        yield
    finally:
        _ACTING.reset(token)


@dataclass
class Session:
    """One browser session: its project (None: the studio's default), how many times it
    switched (part of its revision), who signed in, the jobs it started."""

    id: str
    path: Path | None = None
    epoch: int = 0
    editor: bool = False
    user: str = ""
    jobs: set[str] = field(default_factory=set)
    seen: float = field(default_factory=time.monotonic)


class OpenProject:
    """A project the owner holds open: the writer of its file, its job manager, its caches.

    Raises (constructor):
        ProjectLockedError, ProjectNotFoundError, SchemaVersionError.
    """

    def __init__(self, path: str | Path, create: bool, max_running: int | None,
                 busy_elsewhere: Callable[["OpenProject"], int]) -> None:
        self.project = Project(path, create=create)
        self.jobs = JobManager(self.project, max_running=max_running,
                               busy=lambda: busy_elsewhere(self))
        self.lock = threading.RLock()
        self.recipe_errors: dict[str, str] = {}  # experiment id -> its last advance's error
        self._band_lock = threading.Lock()
        self._bands: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._last_poll: tuple[float, list[Job]] | None = None
        self._finished_seen: frozenset[str] | None = None  # None: advance at the first poll
        try:
            with self.lock:
                self.jobs.reconcile()
        except BaseException:
            self.project.close()
            raise

    @property
    def path(self) -> Path:
        return self.project.path

    def poll(self) -> list[Job]:
        """Poll the job manager; polls within ``POLL_REUSE_S`` share one (the jobs panel's
        timer fires in every open tab). When a job has finished since the previous poll, the
        running recipe searches are advanced."""
        with self.lock:
            now = time.monotonic()
            last = self._last_poll
            if last is not None and now - last[0] < POLL_REUSE_S:
                return list(last[1])
            jobs = self.jobs.poll()
            if self._advance_searches(jobs):
                jobs = self.project.list(Job)
            self._last_poll = (now, jobs)
            return jobs

    def active(self) -> bool:
        """Whether a job of this project is queued, running or being ingested."""
        with self.lock:
            return any(j.status in ACTIVE or j.status == "ingesting"
                       for j in self.project.list(Job))

    def _advance_searches(self, jobs: list[Job]) -> bool:
        """Advance every queued / running recipe search when the set of finished jobs changed
        since the last call (the first call after opening always does: a search resumes). An
        error is kept in ``recipe_errors`` (the experiment's view shows it), never raised: the
        jobs panel keeps working. Returns whether a search advanced."""
        finished = frozenset(j.id for j in jobs if j.status in FINISHED)
        if finished == self._finished_seen:
            return False
        self._finished_seen = finished
        if self.project.read_only:
            return False
        searches = [row.id for row in self.project.list(Experiment, kind="recipe")
                    if row.status in ("queued", "running")]
        for exp_id in searches:
            try:
                self.advance_recipe(exp_id)
            except Exception:  # noqa: BLE001 - recorded for the view; the poll goes on
                continue
        return bool(searches)

    def advance_recipe(self, exp_id: str) -> dict[str, Any]:
        """``engine.recipe.advance`` of one search, under the jobs lock (the poll and a button
        never advance a search twice at once). Its error, if any, is recorded in
        ``recipe_errors`` and raised; success clears it."""
        from engine import recipe

        with self.lock:
            try:
                record = recipe.advance(self.project, exp_id, submit=self.submit)
            except Exception as exc:
                if isinstance(exc, StudioError):
                    log.info("recipe search %s: %s", exp_id, exc)
                    self.recipe_errors[exp_id] = str(exc)
                else:
                    log.exception("recipe search %s could not advance", exp_id)
                    self.recipe_errors[exp_id] = (f"unexpected {type(exc).__name__}: {exc} "
                                                  f"(details in the studio's log)")
                raise
            self.recipe_errors.pop(exp_id, None)
            return record

    def submit(self, spec: JobSpec) -> Job:
        with self.lock:
            self._last_poll = None
            job = self.jobs.submit(spec)
        log.info("submitted job %s: %s (%s)", job.id, job.title, self.path.name)
        return job

    def cancel(self, job_id: str) -> Job:
        with self.lock:
            self._last_poll = None
            return self.jobs.cancel(job_id)

    def retry(self, job_id: str) -> Job:
        with self.lock:
            self._last_poll = None
            return self.jobs.retry(job_id)

    def band_data(self, generation_id: str, centroid: str, metric: str,
                  encoding_id: str | None = None) -> Any:
        """``curate_stage.band_data`` cached per (generation, encoding, centroid, metric); the
        encoding is ``encoding_id`` (a second encoder) or the generation's latest."""
        from engine.project import Encoding
        from engine.stages import curate_stage

        if not encoding_id:
            encs = self.project.list(Encoding, target="generation", target_id=generation_id)
            encoding_id = encs[-1].id if encs else None
        key = (generation_id, encoding_id or "", centroid, metric)
        with self._band_lock:
            if key in self._bands:
                self._bands.move_to_end(key)
                return self._bands[key]
        bd = curate_stage.band_data(self.project, generation_id, encoding_id, centroid=centroid,
                                    metric=metric)
        with self._band_lock:
            self._bands[key] = bd
            while len(self._bands) > _BAND_CACHE_SIZE:
                self._bands.popitem(last=False)
        return bd

    def close(self) -> None:
        self.project.close()


class StudioContext:
    """What the handlers of one app share: the open projects and the sessions on them.

    Args:
        project_path: the default project, ``NAME`` or ``NAME.duckdb`` (created when missing);
            None: no default, every session starts on the Projects tab.
        max_running: worker processes allowed at once, over all open projects (None: one per
            GPU, one on a CPU machine).
        access: the share mode, sign-in and quotas (default: private, everyone may write).

    Raises:
        ProjectLockedError: another process holds the default project.
    """

    def __init__(self, project_path: str | Path | None = None, max_running: int | None = None,
                 access: Access | None = None) -> None:
        self.max_running = max_running
        self.access = access or Access()
        self.restrict = False  # reachable from the network: server paths only in the projects folder
        self.on_switch: list[Callable[["StudioContext"], None]] = []
        self._lock = threading.RLock()  # the pool and the sessions
        self._pool: dict[Path, OpenProject] = {}
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._default: Path | None = None
        self._default_epoch = 0
        self.map_views = MapViews()  # the map's tokens and selections (studio.map_select)
        if project_path is not None:
            self._default = self._open(project_path, create=True).path

    # ------------------------------------------------------------------ sessions

    def session(self) -> Session:
        """The session of the request being handled (created at its first request)."""
        sid, request = request_session()
        now = time.monotonic()
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                s = self._sessions[sid] = Session(sid)
                if request is not None and getattr(request, "username", None) \
                        and not self.access.public:
                    s.user = str(request.username)  # behind --auth's login page
                self._forget_idle(now)
            s.seen = now
            self._sessions.move_to_end(sid)
            return s

    def _forget_idle(self, now: float) -> None:
        stale = [sid for sid, s in self._sessions.items()
                 if sid != NO_REQUEST and now - s.seen > SESSION_IDLE_S]
        excess = len(self._sessions) - len(stale) - MAX_SESSIONS
        if excess > 0:
            stale += [sid for sid in self._sessions if sid != NO_REQUEST
                      and sid not in stale][:excess]
        for sid in stale:
            self._sessions.pop(sid, None)
        if stale:
            self._release()

    def end_session(self) -> None:
        """Forget the session of this request (its page closed); its project is closed when
        no other session shows it and no job of it is active."""
        sid, _ = request_session()
        if sid == NO_REQUEST:
            return
        with self._lock:
            if self._sessions.pop(sid, None) is not None:
                self._release()

    def knows(self, session_id: str) -> bool:
        """Whether ``session_id`` is a session the studio has not forgotten."""
        with self._lock:
            return session_id in self._sessions

    def sessions(self) -> int:
        """How many browser sessions the studio knows (the no-request one excluded)."""
        with self._lock:
            return sum(1 for sid in self._sessions if sid != NO_REQUEST)

    @property
    def editor(self) -> bool:
        """Whether this session may write (always, unless the studio is shared publicly)."""
        return not self.access.public or self.session().editor

    def sign_in(self, user: str, password: str) -> bool:
        """Make this session an editor when ``user:password`` is one of the credentials."""
        if not self.access.check_password(user, password):
            log.warning("failed sign-in for user %r", user)
            return False
        s = self.session()
        s.editor, s.user = True, user
        log.info("session signed in as %s", user)
        return True

    def sign_in_hf(self, hf_user: str | None) -> bool:
        """Make this session an editor when the Hugging Face user is one of the editors."""
        s = self.session()
        if hf_user and self.access.is_editor_account(hf_user):
            s.editor, s.user = True, hf_user
            return True
        return False

    def sign_out(self) -> None:
        s = self.session()
        s.editor, s.user = False, ""

    # ------------------------------------------------------------------ projects

    def _open(self, path: str | Path, create: bool) -> OpenProject:
        """The open project at ``path``, opened (and added to the pool) when it is not yet."""
        db = project_paths(path)[0].resolve()
        with self._lock:
            held = self._pool.get(db)
            if held is None:
                held = OpenProject(db, create, self.max_running, self._busy_elsewhere)
                self._pool[db] = held
            return held

    def _busy_elsewhere(self, me: OpenProject) -> int:
        """Worker slots held by the other open projects (the limit is the studio's)."""
        with self._lock:
            others = [p for p in self._pool.values() if p is not me]
        return sum(p.jobs.running_slots() for p in others)

    def _path_of(self, s: Session) -> Path | None:
        return s.path if s.path is not None else self._default

    def current(self) -> OpenProject:
        """The open project of this session.

        Raises:
            NoProjectError: the session has none (the studio started without a project).
        """
        s = self.session()
        path = self._path_of(s)
        if path is None:
            raise NoProjectError("no project is open: open the demo or create a project in "
                                 "the Projects tab")
        with self._lock:
            held = self._pool.get(path)
        return held if held is not None else self._open(path, create=False)

    def has_project(self) -> bool:
        return self._path_of(self.session()) is not None

    @property
    def project(self) -> Any:
        """This session's project; a visitor of a public studio gets a ``VisitorProject``."""
        project = self.current().project
        return project if self.editor else VisitorProject(project, self.access)

    @property
    def jobs(self) -> JobManager:
        return self.current().jobs

    @property
    def recipe_errors(self) -> dict[str, str]:
        return self.current().recipe_errors

    @property
    def epoch(self) -> int:
        s = self.session()
        return s.epoch if s.path is not None else self._default_epoch

    def running_jobs(self) -> list[Job]:
        """The running jobs of every open project (what a stopping studio leaves behind)."""
        with self._lock:
            held = list(self._pool.values())
        out: list[Job] = []
        for p in held:
            try:
                out += [j for j in p.project.list(Job) if j.status == "running"]
            except Exception:  # noqa: BLE001 - a failing read must not stop a close
                log.exception("cannot list the running jobs of %s", p.path)
        return out

    def open_paths(self) -> list[Path]:
        with self._lock:
            return list(self._pool)

    def switch(self, project_path: str | Path, create: bool = True) -> Any:
        """Open ``project_path`` for this session (the default project outside a request).

        The new project is opened first: when it cannot be (locked, newer schema, missing
        and ``create`` false) the error propagates and the session keeps its project. Other
        sessions keep theirs; a project no session shows any more is closed once its jobs are
        done (they keep running in their own processes; reopening it reconnects them).

        Raises:
            ProjectLockedError, ProjectNotFoundError, SchemaVersionError.
        """
        s = self.session()
        held = self._open(project_path, create=create)
        with self._lock:
            if s.id == NO_REQUEST:
                if held.path != self._default:
                    self._default = held.path
                    self._default_epoch += 1
            elif held.path != self._path_of(s) or s.path is None:
                s.path = held.path
                s.epoch += 1
            self._release()
        log.info("session %s: project %s", s.id or "(no request)", held.path)
        for fn in self.on_switch:
            fn(self)
        return self.project

    def _release(self) -> None:
        """Close the open projects no session shows and with no active job (under _lock)."""
        shown = {self._default} | {s.path for s in self._sessions.values()}
        for path, held in list(self._pool.items()):
            if path in shown:
                continue
            try:
                busy = held.active()
            except Exception:  # noqa: BLE001 - a project that cannot be read is closed
                busy = False
            if not busy:
                self._pool.pop(path)
                held.close()
                log.info("closed project %s (no session shows it)", path)

    # ------------------------------------------------------------------ jobs

    def poll(self) -> list[Job]:
        """Poll every open project's jobs (each at most every ``POLL_REUSE_S``); returns this
        session's project's jobs."""
        mine = self.current()
        with self._lock:
            others = [p for p in self._pool.values() if p is not mine]
        for held in others:
            try:
                held.poll()
            except Exception:  # noqa: BLE001 - another project's trouble never breaks this page
                log.exception("polling %s failed", held.path)
        with self._lock:
            self._release()
        return mine.poll()

    def advance_recipe(self, exp_id: str) -> dict[str, Any]:
        self.access.check_write(self.editor, "run a recipe search")
        return self.current().advance_recipe(exp_id)

    def submit(self, spec: JobSpec) -> Job:
        """Queue a job on this session's project, after the share mode's checks.

        Raises:
            SignInRequiredError: a visitor asked for a job only an editor may start.
            QuotaError: the visitor has too many jobs, or the projects folder is full.
        """
        s = self.session()
        held = self.current()
        if self.access.public:
            with held.lock:
                active = sum(1 for j in held.project.list(Job)
                             if j.id in s.jobs and j.status in ACTIVE)
            self.access.check_job(spec.kind, self.editor, active)
        job = held.submit(spec)
        s.jobs.add(job.id)
        return job

    def cancel(self, job_id: str) -> Job:
        if job_id not in self.session().jobs:
            self.access.check_write(self.editor, "cancel another visitor's job")
        return self.current().cancel(job_id)

    def retry(self, job_id: str) -> Job:
        self.access.check_write(self.editor, "retry a job")
        return self.current().retry(job_id)

    def job_folder(self, job: Job) -> Path:
        return self.current().jobs.folder(job)

    def band_data(self, generation_id: str, centroid: str, metric: str,
                  encoding_id: str | None = None) -> Any:
        return self.current().band_data(generation_id, centroid, metric, encoding_id)

    # ------------------------------------------------------------------ change detection

    def revision(self) -> str:
        """A short signature of this session's project rows; it changes when anything is added
        or a job / model / evaluation changes status (the UI refreshes its lists then)."""
        if not self.has_project():
            return json.dumps([self.project_key()])
        return json.dumps([self.project_key()] + reads.revision(self.current().project))

    def project_key(self) -> str:
        """Which project this session shows, with which settings, and who is signed in (form
        defaults and permissions reload on change)."""
        who = "editor" if self.editor else "visitor"
        if not self.has_project():
            return f"(none)#{who}"
        p = self.current().project
        return f"{p.path}#{self.epoch}#{who}#{p.get_meta('settings', '{}')}"

    def close(self) -> None:
        with self._lock:
            held, self._pool = list(self._pool.values()), {}
        for p in held:
            try:
                p.close()
            except Exception:  # noqa: BLE001 - close the others
                log.exception("closing %s failed", p.path)

