"""The pipeline's stages, one module each, read top to bottom in three parts:

- ``prepare(project, ...) -> JobSpec``   owner side: resolve rows, check inputs, build params
- ``run(params, folder, progress, cancel) -> dict``   worker side: no database, files only
- ``ingest(project, params, result) -> str``   owner side: write the rows, return the new id

plus ``on_failure`` / ``on_retry`` hooks that keep the rows of a failed job consistent
(and an optional ``on_start``). ``JobManager`` adds the job's id to the params as ``job_id``:
every run row a job writes records it. Curation (``curate``) is fast enough to run in the
owner and has no job.

Work that decodes or copies many files (an import, a pixel cache) happens in ``run``, in the
worker: ``prepare`` only checks inputs and names paths. It creates no output folder (``run``
makes it): a ``prepare`` that fails, or a job that cannot be created, leaves nothing behind.
What a ``prepare`` must write (a generation's plan) it lists in ``JobSpec.made`` and removes
itself if it fails; ``JobManager.create`` removes it when the job cannot be created.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from engine.errors import JobError


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs: the stage ``kind`` and JSON-able ``params`` (``prepare`` returns one)."""

    kind: str
    title: str
    params: dict[str, Any]
    made: tuple[str, ...] = ()  # files / folders prepare wrote (removed if no job is created)


KINDS = ("import", "encode", "train", "adopt", "generate", "evaluate", "export", "map",
         "index", "zip")


def get(kind: str) -> ModuleType:
    """The stage module of a job kind."""
    if kind not in KINDS:
        raise JobError(f"unknown job kind {kind!r}; known kinds: {', '.join(KINDS)}")
    import importlib

    return importlib.import_module(f"engine.stages.{kind}_stage")
