"""The studio's per-app state: the open project, its job manager, and the band cache.

One ``StudioContext`` is created by ``build_app`` and captured by the handlers of that app
(never module-level: two apps in one process stay separate). The project is the only writer
of its file; every job-manager call goes through one lock so that two browser tabs polling
at once never start the same queued job twice.

``switch(path)`` replaces the open project in place (the handlers read ``ctx.project`` at
call time, so every handler follows); the revision then changes and every view refreshes.

``poll`` also drives the project's recipe searches (``engine.recipe``): when a job has
finished since the previous poll, every search still queued or running is advanced (its
finished jobs fed back, its next jobs queued), so a search runs to its end while a studio is
open on the project, and resumes when one is opened again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from engine.errors import StudioError
from engine.jobs import FINISHED, JobManager
from engine.project import Experiment, Job, Project, reads
from engine.stages import JobSpec

log = logging.getLogger(__name__)

_BAND_CACHE_SIZE = 8
POLL_REUSE_S = 0.5  # polls closer than this share one job-manager poll


class StudioContext:
    """What the handlers of one app share.

    Args:
        project_path: ``NAME`` or ``NAME.duckdb`` (created when missing).
        max_running: worker processes allowed at once (None: one per GPU, one on a CPU).

    Raises:
        ProjectLockedError: another process holds the project file.
    """

    def __init__(self, project_path: str | Path, max_running: int | None = None) -> None:
        self.project = Project(project_path, create=True)
        self.max_running = max_running
        self.jobs = JobManager(self.project, max_running=max_running)
        self.epoch = 0  # bumped by switch(): the revision differs even between twin projects
        self.restrict = False  # reachable from the network: server paths only in the projects folder
        self.on_switch: list[Callable[["StudioContext"], None]] = []
        self._jobs_lock = threading.RLock()
        self._band_lock = threading.Lock()
        self._bands: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._last_poll: tuple[float, Any, list[Job]] | None = None
        self._finished_seen: frozenset[str] | None = None  # None: advance at the first poll
        self.recipe_errors: dict[str, str] = {}  # experiment id -> its last advance's error
        with self._jobs_lock:
            self.jobs.reconcile()

    # ------------------------------------------------------------------ project switch

    def switch(self, project_path: str | Path, create: bool = True) -> Project:
        """Close the open project and open ``project_path`` in its place.

        The new project is opened first: when it cannot be (locked, newer schema, missing
        and ``create`` false) the error propagates and the old project stays open. Jobs of
        the old project keep running in their own processes; reopening it reconnects them.

        Raises:
            ProjectLockedError, ProjectNotFoundError, SchemaVersionError.
        """
        from engine.project import project_paths

        db, _ = project_paths(project_path)
        if db.resolve() == self.project.path.resolve():
            return self.project
        with self._jobs_lock:
            new = Project(project_path, create=create)
            old = self.project
            self.project = new
            self.jobs = JobManager(new, max_running=self.max_running)
            self.epoch += 1
            self._finished_seen = None
            self.recipe_errors.clear()
            try:
                self.jobs.reconcile()
            finally:
                old.close()
        with self._band_lock:
            self._bands.clear()
        log.info("switched project: %s -> %s", old.path, new.path)
        for fn in self.on_switch:
            fn(self)
        return new

    # ------------------------------------------------------------------ jobs

    def poll(self) -> list[Job]:
        """Poll the job manager; several browser tabs polling within ``POLL_REUSE_S`` share
        one poll (the jobs panel's timer fires in every open tab). When a job has finished
        since the previous poll, the running recipe searches are advanced."""
        with self._jobs_lock:
            now = time.monotonic()
            last = self._last_poll
            if last is not None and now - last[0] < POLL_REUSE_S and last[1] == self.epoch:
                return list(last[2])
            jobs = self.jobs.poll()
            if self._advance_searches(jobs):
                jobs = self.project.list(Job)
            self._last_poll = (now, self.epoch, jobs)
            return jobs

    def _advance_searches(self, jobs: list[Job]) -> bool:
        """Advance every queued / running recipe search when the set of finished jobs changed
        since the last call (the first call after start-up or a switch always does: a search
        resumes). An error is logged and kept in ``recipe_errors`` (the experiment's view shows
        it), never raised: the jobs panel keeps working. Returns whether a search advanced."""
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
        """``engine.recipe.advance`` of one search with this studio's ``submit``, under the
        jobs lock (the poll and a button never advance a search twice at once). Its error,
        if any, is recorded in ``recipe_errors`` and raised; success clears it."""
        from engine import recipe

        with self._jobs_lock:
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
        with self._jobs_lock:
            self._last_poll = None
            job = self.jobs.submit(spec)
        log.info("submitted job %s: %s", job.id, job.title)
        return job

    def cancel(self, job_id: str) -> Job:
        with self._jobs_lock:
            self._last_poll = None
            return self.jobs.cancel(job_id)

    def retry(self, job_id: str) -> Job:
        with self._jobs_lock:
            self._last_poll = None
            return self.jobs.retry(job_id)

    def job_folder(self, job: Job) -> Path:
        return self.jobs.folder(job)

    # ------------------------------------------------------------------ curation cache

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

    # ------------------------------------------------------------------ change detection

    def revision(self) -> str:
        """A short signature of the project's rows; it changes when anything is added or a
        job / model / evaluation changes status (the UI refreshes its lists then)."""
        return json.dumps([self.project_key()] + reads.revision(self.project))

    def project_key(self) -> str:
        """Which project is open and with which settings (form defaults reload on change)."""
        return f"{self.project.path}#{self.epoch}#{self.project.get_meta('settings', '{}')}"

    def close(self) -> None:
        self.project.close()
