"""Index: the faiss indexes "more like this" and the per-sample scores search, built in a job.

Up to ``knn.EXACT_MAX`` vectors an index is exact and built on the spot; above, it is an
IVF index trained by k-means (about two minutes for 520,000 x 768 on two cores), which the
studio must not build inside a request. This job builds the missing ones of a generation's
view (the real training images and the samples, in the view's encodings and metric) and
saves them where ``curate_stage.index_path`` looks (atomically, ``knn.save_index``); the
next "more like this" loads them. Nothing is recorded as a row: the files are the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.progress import CancelToken, ProgressEvent, ProgressFn
from engine.project import Project
from engine.stages import JobSpec


def title(bd: Any) -> str:
    """The job's title (also how the studio finds one already queued for this view)."""
    return (f"Index the neighbours of {bd.generation.name} ({bd.encoding.encoder}, "
            f"encoding {bd.encoding.id}, {bd.metric})")


def prepare(project: Project, bd: Any, parts: list[str]) -> JobSpec:
    """Queue the indexes of ``parts`` ("real", "synthetic") of the view ``bd``
    (``curate_stage.BandData``)."""
    from engine.stages import curate_stage

    todo = []
    for part in parts:
        enc = bd.real_encoding if part == "real" else bd.encoding
        todo.append({"part": part, "array": str(project.abs(enc.array_path)),
                     "rows": bd.train_idx.astype(np.int64).tolist() if part == "real" else None,
                     "path": str(curate_stage.index_path(project, bd, part))})
    return JobSpec(kind="index", title=title(bd),
                   params={"metric": bd.metric, "parts": todo,
                           "generation_id": bd.generation.id})


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine.curation import knn

    done = {}
    parts = params["parts"]
    for step, part in enumerate(parts):
        cancel.raise_if_cancelled()
        progress(ProgressEvent(stage="index", step=step, total=len(parts),
                               message=f"the {part['part']} images"))
        arr = np.load(part["array"], mmap_mode="r", allow_pickle=False)
        rows = None if part["rows"] is None else np.asarray(part["rows"], dtype=np.int64)
        start = time.perf_counter()
        index = knn.build_index(arr, params["metric"], rows=rows)
        knn.save_index(index, part["path"])
        done[part["part"]] = {"vectors": int(index.ntotal),
                              "seconds": round(time.perf_counter() - start, 2)}
    progress(ProgressEvent(stage="index", step=len(parts), total=len(parts)))
    return {"indexes": done}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    return params["generation_id"]


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    pass  # knn.save_index writes atomically: a failed job leaves no half index


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass
