"""The parallel, resumable part of an import (``engine.data.write_dataset_files`` drives it).

State of an import in progress, in ``WORK_ROOT/.import/``:

    plan.json    the folder, the options that shape the files, the classes, and every file
                 (path relative to the folder, label) listed when the import started
    done.jsonl   one line per finished chunk: the records ``engine.image_store.store_file``
                 returned for its files (a line is written once every file of the chunk is
                 in place, so a killed import loses at most the chunks it was working on)

``run`` hands the chunks not yet in the journal to a pool of worker processes
(``import_workers``): a retry of a killed import goes on where it stopped. Files are first
named by their position in the plan; ``rename_by_idx`` gives them their final names (the
rank of the valid images) once every chunk is done, and can itself be run again.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pandas as pd

from engine.config import ImportConfig
from engine.errors import Cancelled, DatasetError
from engine.image_store import store_chunk, store_file
from engine.progress import CancelToken, ProgressEvent, ProgressFn

log = logging.getLogger(__name__)

STATE_DIR = ".import"
PLAN_FILE = "plan.json"
JOURNAL_FILE = "done.jsonl"
FILE_RECORD = "files.parquet"  # in the dataset's folder: what import did with each image
CHUNK_FILES = 64  # files per task of a worker process (and per journal line), at most
MIN_CHUNK_FILES = 8
AUTO_WORKERS_MAX = 8  # ImportConfig.workers = 0: one per available core, at most this many
_REPORT_EVERY_S = 0.1
# ImportConfig fields that shape the stored files: a plan made with other values is not resumed
_SHAPING = ("mode", "max_pixels", "max_side", "thumbnail_size")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def import_workers(config: ImportConfig, files: int) -> int:
    """Worker processes for ``files`` files: ``config.workers``, or (0) one per available
    core up to ``AUTO_WORKERS_MAX``; never more than there are chunks; 1 runs in-process."""
    wanted = config.workers or min(available_cores(), AUTO_WORKERS_MAX)
    return max(1, min(wanted, math.ceil(files / MIN_CHUNK_FILES)))


def chunk_size(files: int, workers: int) -> int:
    """Files per chunk: about four chunks per worker, between 8 and ``CHUNK_FILES``."""
    return int(min(CHUNK_FILES, max(MIN_CHUNK_FILES, math.ceil(files / (4 * workers)))))


# ---------------------------------------------------------------------------- the plan


def _shape(config: ImportConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in _SHAPING}


def load_plan(work_root: Path, folder: Path, config: ImportConfig
              ) -> tuple[list[str], list[str], list[int]] | None:
    """(classes, files, labels) of the import begun in ``work_root``, or None when there is
    none, or one of another folder or with other file-shaping options."""
    path = Path(work_root) / STATE_DIR / PLAN_FILE
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if plan.get("folder") != str(folder) or plan.get("shape") != _shape(config):
        log.info("the import state in %s is for another folder or options: starting over",
                 work_root)
        return None
    return plan["classes"], plan["files"], plan["labels"]


def save_plan(work_root: Path, folder: Path, config: ImportConfig, classes: list[str],
              files: list[str], labels: list[int]) -> None:
    """Write the plan (atomically) into a new ``work_root``."""
    state = Path(work_root) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    tmp = state / f"{PLAN_FILE}.tmp"
    tmp.write_text(json.dumps({"folder": str(folder), "shape": _shape(config),
                               "classes": classes, "files": files, "labels": labels}),
                   encoding="utf-8")
    os.replace(tmp, state / PLAN_FILE)


# ---------------------------------------------------------------------------- the journal


def read_journal(path: Path) -> dict[int, dict[str, Any]]:
    """Records of the chunks done, by position. A torn last line (the worker was killed
    while writing it) is dropped, and the journal rewritten without it."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    good, torn = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records = json.loads(line)
        except ValueError:
            torn = True
            continue
        good.append(line)
        for r in records:
            done[int(r["pos"])] = r
    if torn:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
        os.replace(tmp, path)
    return done


def _child_init() -> None:
    """In each worker process: Ctrl-C is the parent's to handle; SIGTERM (a cancel sent to
    the job's process group) ends the child at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _context() -> Any:
    """fork on Linux: the children only run Pillow (no torch, faiss or DuckDB call) and start
    in milliseconds, where spawn would import the whole job runtime again in each."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def run(folder: Path, work_root: Path, files: list[str], labels: list[int],
        config: ImportConfig, progress: ProgressFn,
        cancel: CancelToken | None) -> list[dict[str, Any]]:
    """Store every file of the plan not done yet; returns the records of all files, by
    position (``engine.image_store.store_file``)."""
    total = len(files)
    journal = Path(work_root) / STATE_DIR / JOURNAL_FILE
    done = read_journal(journal)
    for label in sorted(set(labels)):
        for kind in ("images", "thumbs"):
            (Path(work_root) / kind / f"{label:04d}").mkdir(parents=True, exist_ok=True)
    todo = [p for p in range(total) if p not in done]
    workers = import_workers(config, len(todo))
    size = chunk_size(len(todo), workers)
    chunks = [[(p, str(folder / files[p]), int(labels[p])) for p in todo[i:i + size]]
              for i in range(0, len(todo), size)]
    job = {"root": str(work_root), "mode": config.mode, "config": config,
           "reference_root": os.path.realpath(folder) if config.mode == "reference" else ""}
    resumed = len(done)
    message = (f"resuming: {resumed} of {total} files already done" if resumed else
               f"importing {total} files from {folder} ({workers} worker process"
               f"{'' if workers == 1 else 'es'})")
    progress(ProgressEvent(stage="import", step=resumed, total=total, message=message))
    counts = {"images": sum(r["status"] != "skipped" for r in done.values())}
    counts["skipped"] = len(done) - counts["images"]
    last = 0.0

    with open(journal, "a", encoding="utf-8") as out:
        def finished(records: list[dict[str, Any]]) -> None:
            nonlocal last
            out.write(json.dumps(records, separators=(",", ":")) + "\n")
            out.flush()
            for r in records:
                done[int(r["pos"])] = r
                counts["images" if r["status"] != "skipped" else "skipped"] += 1
            now = time.monotonic()
            if now - last >= _REPORT_EVERY_S or len(done) == total:
                last = now
                progress(ProgressEvent(stage="import", step=len(done), total=total,
                                       metrics={k: float(v) for k, v in counts.items()}))

        if workers <= 1:
            for chunk in chunks:
                records = []
                for pos, src, label in chunk:
                    if cancel is not None:
                        cancel.raise_if_cancelled()
                    records.append(store_file(pos, src, label, job))
                finished(records)
        else:
            _run_pool(chunks, job, workers, finished, cancel)
    return [done[p] for p in range(total)]


def _run_pool(chunks: list[list[tuple[int, str, int]]], job: dict[str, Any], workers: int,
              finished: Any, cancel: CancelToken | None) -> None:
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(),
                               initializer=_child_init)
    try:
        pending = {pool.submit(store_chunk, chunk, job) for chunk in chunks}
        while pending:
            if cancel is not None:
                cancel.raise_if_cancelled()
            ready, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            for future in ready:
                finished(future.result())
    except BrokenProcessPool as exc:
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled by the user") from exc
        raise DatasetError("an import worker process stopped (killed, or out of memory); "
                           "retry the import") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------- the end


def rename_by_idx(work_root: Path, records: list[dict[str, Any]],
                  labels: list[int]) -> list[dict[str, Any]]:
    """Rename the stored files of the valid images from their plan position to their idx
    (their rank among the valid images); returns the valid records in idx order.

    Idempotent: a file already renamed is skipped. Files only move to smaller numbers, in
    increasing order, so no rename overwrites a file still to be renamed.
    """
    valid = [r for r in records if r["status"] != "skipped"]
    root = Path(work_root)
    for idx, r in enumerate(valid):
        if r["pos"] == idx:
            continue
        label = int(labels[r["pos"]])
        moves = ([("thumbs", r["thumb_ext"])] if r["thumb_ext"] else []) + \
            ([] if r["path"] else [("images", r["ext"])])
        for kind, ext in moves:
            try:
                os.replace(root / kind / f"{label:04d}/{r['pos']:06d}{ext}",
                           root / kind / f"{label:04d}/{idx:06d}{ext}")
            except FileNotFoundError:
                pass  # renamed by an attempt that was killed afterwards
    return valid


def write_file_record(work_root: Path, valid: list[dict[str, Any]]) -> Path:
    """``files.parquet``: per image (idx order) how it was stored (``kept`` or
    ``converted``; ``linked`` / ``copied`` / ``referenced`` / ``written``), the source's
    format, and the stored file's size, modification time (ns) and BLAKE2b-128 digest at
    import (``engine.check`` compares them)."""
    frame = pd.DataFrame({
        "idx": range(len(valid)),
        "stored": [r["status"] for r in valid],
        "how": [r["how"] for r in valid],
        "format": [r["format"] for r in valid],
        "size": [int(r["size"]) for r in valid],
        "mtime_ns": [int(r["mtime_ns"]) for r in valid],
        "digest": [r["digest"] for r in valid],
    })
    path = Path(work_root) / FILE_RECORD
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path
