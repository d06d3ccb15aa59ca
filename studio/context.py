"""The studio's per-app state: the open project, its job manager, and the band cache.

One ``StudioContext`` is created by ``build_app`` and captured by the handlers of that app
(never module-level: two apps in one process stay separate). The project is the only writer
of its file; every job-manager call goes through one lock so that two browser tabs polling
at once never start the same queued job twice.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from engine.jobs import JobManager, JobSpec
from engine.project import Dataset, Job, Project

log = logging.getLogger(__name__)

_BAND_CACHE_SIZE = 8


class StudioContext:
    """What the handlers of one app share.

    Args:
        project_path: ``NAME`` or ``NAME.duckdb`` (created when missing).
        max_running: worker processes allowed at once.

    Raises:
        ProjectLockedError: another process holds the project file.
    """

    def __init__(self, project_path: str | Path, max_running: int = 1) -> None:
        self.project = Project(project_path, create=True)
        self.jobs = JobManager(self.project, max_running=max_running)
        self._jobs_lock = threading.RLock()
        self._band_lock = threading.Lock()
        self._bands: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        with self._jobs_lock:
            self.jobs.reconcile()

    # ------------------------------------------------------------------ jobs

    def poll(self) -> list[Job]:
        with self._jobs_lock:
            return self.jobs.poll()

    def submit(self, spec: JobSpec) -> Job:
        with self._jobs_lock:
            job = self.jobs.submit(spec)
        log.info("submitted job %s: %s", job.id, job.title)
        return job

    def cancel(self, job_id: str) -> Job:
        with self._jobs_lock:
            return self.jobs.cancel(job_id)

    def retry(self, job_id: str) -> Job:
        with self._jobs_lock:
            return self.jobs.retry(job_id)

    def job_folder(self, job: Job) -> Path:
        return self.jobs.folder(job)

    # ------------------------------------------------------------------ curation cache

    def band_data(self, generation_id: str, centroid: str, metric: str) -> Any:
        """``curate.band_data`` cached per (generation, its latest encoding, centroid, metric)."""
        from engine.project import Encoding
        from engine.stages import curate

        encs = self.project.list(Encoding, target="generation", target_id=generation_id)
        key = (generation_id, encs[-1].id if encs else "", centroid, metric)
        with self._band_lock:
            if key in self._bands:
                self._bands.move_to_end(key)
                return self._bands[key]
        bd = curate.band_data(self.project, generation_id, centroid=centroid, metric=metric)
        with self._band_lock:
            self._bands[key] = bd
            while len(self._bands) > _BAND_CACHE_SIZE:
                self._bands.popitem(last=False)
        return bd

    # ------------------------------------------------------------------ change detection

    def revision(self) -> str:
        """A short signature of the project's rows; it changes when anything is added or a
        job / model / evaluation changes status (the UI refreshes its lists then)."""
        row = self.project.query(
            "SELECT (SELECT count(*) FROM dataset), (SELECT count(*) FROM encoding), "
            "(SELECT string_agg(id || status, ',' ORDER BY id) FROM model), "
            "(SELECT count(*) FROM generation), (SELECT count(*) FROM selection), "
            "(SELECT string_agg(id || status, ',' ORDER BY id) FROM evaluation), "
            "(SELECT count(*) FROM export), "
            "(SELECT string_agg(id || status, ',' ORDER BY id) FROM job)").iloc[0].tolist()
        return json.dumps([str(v) for v in row])

    def latest_dataset(self) -> Dataset | None:
        rows = self.project.list(Dataset)
        return rows[-1] if rows else None

    def close(self) -> None:
        self.project.close()
