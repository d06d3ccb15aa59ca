"""``rcdm-studio check``: is the project file consistent with its assets folder?

The project has no foreign keys (see ``engine.project.schema``) and its bulk data lives in
files, so a crash, a killed worker or a hand-edited assets folder can leave

- rows that point at missing or broken files (``missing_file``, ``broken_file``), images
  whose file changed after the import (``changed_file``: size or modification time, or with
  ``hashes`` the digest, against the dataset's ``files.parquet``; what a source edited in
  place does to a linked or referenced image; a referenced source deleted is missing),
- rows that point at rows that are gone (``dangling_reference``), experiments whose member
  evaluations or jobs are gone included,
- jobs marked running whose process is gone (``stale_job``),
- temp files of interrupted writes (``temp_file``),
- top-level asset folders that no row and no job knows (``orphan_folder``): what a crash
  between writing a folder and its row leaves.

``check_project(project, repair=True)`` fixes only what is safe to fix: it reconciles the
job table (``JobManager.reconcile``), then, while no job is running, deletes temp files and
orphan folders. An orphan folder is deleted only when its name is one the studio makes (an
id); a folder of a job not done (queued, running, or failed and retryable) is no orphan.
Symbolic links are never followed (a link is removed, not its target). It never deletes
rows, nor user data.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from engine.jobs import JobManager, pid_alive
from engine.project import (
    Dataset,
    Encoding,
    Evaluation,
    Experiment,
    Export,
    Generation,
    HandOverride,
    Job,
    MapLayout,
    Model,
    Project,
    Selection,
)

log = logging.getLogger(__name__)

# How many files of each dataset / generation are opened to check they decode (the first
# and the last ``PNG_SAMPLE`` rows; PNG, WebP or JPEG alike); existence is checked for every
# file.
PNG_SAMPLE = 50
# Problems of one kind for one dataset / generation listed one by one before summarising.
MAX_LISTED = 50

ASSET_KINDS = ("datasets", "encodings", "models", "generations")
# the top-level asset folders whose entries belong to a row or a job (orphans otherwise)
ORPHAN_KINDS = (*ASSET_KINDS, "evaluations", "experiments", "exports", "jobs", "uploads",
                "maps")
_RESERVED = {("exports", "zips")}  # the Export tab's downloads
_ID_RE = re.compile(r"(^|-)[a-z]+_[0-9a-f]{8}$")  # engine.project.new_id, maybe after NAME-
_TEMP_RE = re.compile(r"(\.tmp|\.tmp-\d+)$")


@dataclass
class CheckReport:
    """The problems found. Each is ``{"kind", "row" or "path", "message", "repaired"}``."""

    project: str
    problems: list[dict[str, Any]] = field(default_factory=list)
    repair: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing is left to fix (no problem, or every problem repaired)."""
        return all(p["repaired"] for p in self.problems)

    def add(self, kind: str, message: str, *, row: str | None = None,
            path: str | None = None, repaired: bool = False) -> dict[str, Any]:
        problem: dict[str, Any] = {"kind": kind}
        if row is not None:
            problem["row"] = row
        if path is not None:
            problem["path"] = path
        problem.update(message=message, repaired=repaired)
        self.problems.append(problem)
        return problem

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p["kind"]] = counts.get(p["kind"], 0) + 1
        return {"project": self.project, "ok": self.ok, "repair": self.repair,
                "counts": counts, "repaired": sum(p["repaired"] for p in self.problems),
                "problems": self.problems}


def check_project(project: Project, repair: bool = False, hashes: bool = False) -> CheckReport:
    """Check rows, files, references, jobs and leftovers of ``project``.

    Args:
        project: an open, writable project (this process is its owner).
        repair: reconcile stale jobs, delete temp files and orphan folders (never rows
            nor user data).
        hashes: also read every imported image and compare its BLAKE2b digest with the one
            recorded at import (size and modification time are always compared).
    Returns:
        the report; ``report.ok`` is True when nothing is left to fix.
    """
    report = CheckReport(project=str(project.path), repair=repair)
    # 1. jobs first: reconciling may ingest finished work and so add rows and files
    _check_jobs(project, report, repair)
    # 2. rows -> rows
    _check_references(project, report)
    _check_experiments(project, report)
    # 3. rows -> files (existence, then a bounded decode)
    _check_images(project, report, hashes)
    _check_encodings(project, report)
    _check_models(project, report)
    _check_generations(project, report)
    _check_selections(project, report)
    # 4. files -> rows: temp files and folders nobody knows
    _check_temp_files(project, report, repair)
    _check_orphan_folders(project, report, repair)
    log.info("check of %s: %d problem(s), %d repaired", project.path, len(report.problems),
             sum(p["repaired"] for p in report.problems))
    return report


# --------------------------------------------------------------------------- jobs


def _check_jobs(project: Project, report: CheckReport, repair: bool) -> None:
    stale = [j for j in project.list(Job)
             if j.status in ("running", "ingesting") and not pid_alive(j.pid)]
    if not stale:
        return
    if repair:
        JobManager(project).reconcile()
    for job in stale:
        now = project.get(Job, job.id).status if repair else job.status
        fixed = repair and now not in ("running", "ingesting")
        message = f"job {job.id} ({job.kind}) is {job.status} but its process {job.pid} is gone"
        if fixed:
            message += f"; reconciled to {now}"
        report.add("stale_job", message, row=f"job:{job.id}", repaired=fixed)


# --------------------------------------------------------------------------- references


def _ids(project: Project, table: str) -> set[str]:
    return set(project.query(f"SELECT id FROM {table}")["id"].tolist())


def _check_references(project: Project, report: CheckReport) -> None:
    datasets, generations = _ids(project, "dataset"), _ids(project, "generation")
    encodings, models = _ids(project, "encoding"), _ids(project, "model")
    selections = _ids(project, "selection")

    # bulk tables: one problem per missing parent, with the count of rows pointing at it
    for table, column, parents, parent_name in [("image", "dataset_id", datasets, "dataset"),
                                                ("sample", "generation_id", generations,
                                                 "generation")]:
        counts = project.query(f"SELECT {column} AS ref, count(*) AS n FROM {table} "
                               f"GROUP BY {column}")
        for ref, n in zip(counts["ref"], counts["n"]):
            if ref not in parents:
                report.add("dangling_reference",
                           f"{int(n)} {table} row(s) point at {parent_name} {ref!r}, which "
                           f"does not exist", row=f"{table}:*{column}={ref}")

    def need(row: str, what: str, ref: str, parents: set[str], optional: bool = True) -> None:
        if (ref or not optional) and ref not in parents:
            report.add("dangling_reference", f"{row} points at {what} {ref!r}, which does not "
                                             f"exist", row=row)

    for e in project.list(Encoding):
        need(f"encoding:{e.id}", "dataset", e.dataset_id, datasets, optional=False)
        if e.target == "generation":
            need(f"encoding:{e.id}", "generation", e.target_id, generations)
    for m in project.list(Model):
        need(f"model:{m.id}", "dataset", m.dataset_id, datasets)
        need(f"model:{m.id}", "encoding", m.encoding_id, encodings)
    for g in project.list(Generation):
        need(f"generation:{g.id}", "model", g.model_id, models)
        need(f"generation:{g.id}", "dataset", g.dataset_id, datasets)
    for s in project.list(Selection):
        need(f"selection:{s.id}", "generation", s.generation_id, generations, optional=False)
        need(f"selection:{s.id}", "encoding", s.encoding_id, encodings)
    for ev in project.list(Evaluation):
        need(f"evaluation:{ev.id}", "selection", ev.selection_id, selections)
        need(f"evaluation:{ev.id}", "generation", ev.generation_id, generations)
        need(f"evaluation:{ev.id}", "dataset", ev.dataset_id, datasets)
    for x in project.list(Export):
        need(f"export:{x.id}", "selection", x.selection_id, selections, optional=False)


def _check_experiments(project: Project, report: CheckReport) -> None:
    """The dataset and the members (evaluations, their jobs) of every experiment exist.
    Nothing to repair: rows are never deleted, and a missing member shows as ``missing`` in
    the experiment's table."""
    evaluations, jobs = _ids(project, "evaluation"), _ids(project, "job")
    datasets = _ids(project, "dataset")
    for exp in project.list(Experiment):
        row = f"experiment:{exp.id}"
        if exp.dataset_id and exp.dataset_id not in datasets:
            report.add("dangling_reference", f"{row} points at dataset {exp.dataset_id!r}, "
                                             f"which does not exist", row=row)
        for m in exp.members:
            ev, job = m.get("evaluation_id", ""), m.get("job_id", "")
            if ev not in evaluations:
                report.add("dangling_reference", f"{row} ({exp.name}) lists evaluation {ev!r}, "
                                                 f"which does not exist", row=row)
            if job and job not in jobs:
                report.add("dangling_reference", f"{row} ({exp.name}) lists job {job!r} of "
                                                 f"evaluation {ev!r}, which does not exist",
                           row=row)


# --------------------------------------------------------------------------- files


def _exists(project: Project, rel: str) -> bool:
    return bool(rel) and (project.assets / rel).exists()


def _report_missing(report: CheckReport, owner: str, missing: list[tuple[str, str]]) -> None:
    """``missing``: (row, rel path) pairs of one dataset / generation."""
    for row, rel in missing[:MAX_LISTED]:
        report.add("missing_file", f"{row} names {rel!r}, which is missing", row=row, path=rel)
    if len(missing) > MAX_LISTED:
        report.add("missing_file", f"{len(missing) - MAX_LISTED} more missing file(s) of "
                                   f"{owner}", row=owner)


def _report_changed(report: CheckReport, owner: str,
                    changed: list[tuple[str, str, str]]) -> None:
    """(row, path, how) of images whose file differs from the one imported: a linked or
    referenced source edited in place, a file replaced by hand."""
    for row, rel, how in changed[:MAX_LISTED]:
        report.add("changed_file", f"{row}: {rel!r} changed after the import ({how}); "
                                   f"re-import the dataset if the change is wanted",
                   row=row, path=rel)
    if len(changed) > MAX_LISTED:
        report.add("changed_file", f"{len(changed) - MAX_LISTED} more changed file(s) of "
                                   f"{owner}", row=owner)


def _bounded(paths: list[Any]) -> Iterable[Any]:
    """The first and the last ``PNG_SAMPLE`` items (each once)."""
    if len(paths) <= 2 * PNG_SAMPLE:
        return paths
    return paths[:PNG_SAMPLE] + paths[-PNG_SAMPLE:]


def _check_pngs(project: Project, report: CheckReport, rows: list[tuple[str, str]]) -> None:
    """Open and verify a bounded sample of the image files that exist (any format Pillow
    reads: a generation's PNG, WebP or JPEG files, a dataset's kept or converted ones)."""
    from PIL import Image as PILImage

    for row, rel in _bounded(rows):
        path = project.assets / rel
        if not path.exists():
            continue
        try:
            with PILImage.open(path) as img:
                img.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
            report.add("broken_file", f"{row}: {rel!r} does not decode ({exc})", row=row,
                       path=rel)


def _check_images(project: Project, report: CheckReport, hashes: bool = False) -> None:
    from engine.data import file_record
    from engine.image_store import file_digest

    for ds in project.list(Dataset):
        frame = project.images(ds.id)
        record = file_record(project, ds)
        if record is not None and len(record) != len(frame):
            report.add("broken_file", f"dataset {ds.name}: its file record lists "
                                      f"{len(record)} images, the rows {len(frame)}",
                       row=f"dataset:{ds.id}")
            record = None
        missing: list[tuple[str, str]] = []
        changed: list[tuple[str, str, str]] = []
        pngs: list[tuple[str, str]] = []
        for i, (img_id, path, thumb) in enumerate(zip(frame["id"], frame["path"],
                                                      frame["thumb"])):
            row = f"image:{img_id}"
            pngs.append((row, path))
            try:
                st = os.stat(project.assets / path)  # a referenced image: its absolute path
            except OSError:
                missing.append((row, path))
                st = None
            if not _exists(project, thumb):
                missing.append((row, thumb))
            if st is None or record is None:
                continue
            size, mtime = int(record["size"].iat[i]), int(record["mtime_ns"].iat[i])
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                changed.append((row, path, f"{size:,} bytes at import, {st.st_size:,} now"
                                if st.st_size != size else "modified since the import"))
            elif hashes and file_digest(project.assets / path) != record["digest"].iat[i]:
                changed.append((row, path, "same size and time, other content"))
        _report_missing(report, f"dataset:{ds.id}", missing)
        _report_changed(report, f"dataset:{ds.id}", changed)
        _check_pngs(project, report, pngs)
        if len(frame) != ds.num_images:
            report.add("broken_file", f"dataset {ds.name} has {len(frame)} image rows but "
                                      f"records {ds.num_images}", row=f"dataset:{ds.id}")


def _check_npy(project: Project, report: CheckReport, row: str, rel: str,
               shape: tuple[int, ...]) -> None:
    """The array exists, its header parses, and its data fits the file and ``shape``."""
    if not _exists(project, rel):
        report.add("missing_file", f"{row} names {rel!r}, which is missing", row=row, path=rel)
        return
    try:
        arr = np.load(project.assets / rel, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - truncated files raise ValueError or OSError
        report.add("broken_file", f"{row}: {rel!r} does not load ({exc})", row=row, path=rel)
        return
    if tuple(arr.shape) != shape:
        report.add("broken_file", f"{row}: {rel!r} has shape {tuple(arr.shape)}, the row "
                                  f"says {shape}", row=row, path=rel)


def _check_encodings(project: Project, report: CheckReport) -> None:
    for e in project.list(Encoding):
        _check_npy(project, report, f"encoding:{e.id}", e.array_path, (e.count, e.dim))
        if e.state_path and not _exists(project, e.state_path):
            report.add("missing_file", f"encoding:{e.id} names encoder state {e.state_path!r},"
                                       f" which is missing", row=f"encoding:{e.id}",
                       path=e.state_path)


def _check_models(project: Project, report: CheckReport) -> None:
    trained = [m for m in project.list(Model) if m.status == "trained"]
    if not trained:
        return  # spare the import of diffusers
    from engine.rcdm.model import META_FILE, UNET_DIR

    for m in trained:
        row = f"model:{m.id}"
        if not _exists(project, m.checkpoint):
            report.add("missing_file", f"{row} is trained but its checkpoint "
                                       f"{m.checkpoint!r} is missing", row=row,
                       path=m.checkpoint)
            continue
        folder = project.assets / m.checkpoint
        for part in (META_FILE, UNET_DIR):
            if not (folder / part).exists():
                report.add("broken_file", f"{row}: checkpoint {m.checkpoint!r} has no {part}",
                           row=row, path=f"{m.checkpoint}/{part}")


def _check_generations(project: Project, report: CheckReport) -> None:
    for g in project.list(Generation):
        row = f"generation:{g.id}"
        if not _exists(project, g.folder):
            report.add("missing_file", f"{row} names folder {g.folder!r}, which is missing",
                       row=row, path=g.folder)
        frame = project.samples(g.id)
        rows = [(f"sample:{i}", p) for i, p in zip(frame["id"], frame["path"])]
        _report_missing(report, row, [(r, p) for r, p in rows if not _exists(project, p)])
        _check_pngs(project, report, rows)
        if len(frame) != g.count:
            report.add("broken_file", f"generation {g.name} has {len(frame)} sample rows but "
                                      f"records {g.count}", row=row)


def _check_selections(project: Project, report: CheckReport) -> None:
    for s in project.list(Selection):
        _check_npy(project, report, f"selection:{s.id}", s.members_path, (s.count,))
    generations = _ids(project, "generation")
    for h in project.list(HandOverride):  # hand decisions: their members and generation
        row = f"hand_override:{h.id}"
        _check_npy(project, report, row, h.members_path, (h.count,))
        if h.generation_id not in generations:
            report.add("dangling_reference", f"{row} names generation {h.generation_id!r}, "
                                             f"which does not exist", row=row)


# --------------------------------------------------------------------------- leftovers


def _is_temp(path: Path, parent_kind: str | None) -> bool:
    name = path.name
    if _TEMP_RE.search(name):
        return True
    return parent_kind == "datasets" and name.startswith(".") and name.endswith(".partial")


def _temp_paths(assets: Path) -> list[Path]:
    """Temp files and folders anywhere in the assets (not descending into temp folders)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(assets):
        here = Path(root)
        kind = here.name if here.parent == assets else None
        for d in list(dirs):
            if _is_temp(here / d, kind):
                found.append(here / d)
                dirs.remove(d)
        found.extend(here / f for f in files if _is_temp(here / f, kind))
    return sorted(found)


def _check_temp_files(project: Project, report: CheckReport, repair: bool) -> None:
    temps = _temp_paths(project.assets)
    if not temps:
        return
    # A live worker may be writing one of these right now: only delete when none runs.
    busy = [j.id for j in project.list(Job)
            if j.status in ("running", "ingesting") and pid_alive(j.pid)]
    for path in temps:
        rel = project.rel(path)
        message = f"leftover temp {'folder' if path.is_dir() else 'file'} {rel!r}"
        fixed = False
        if repair and not busy:
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                fixed = True
                message += "; deleted"
            except OSError as exc:
                message += f"; cannot delete it ({exc})"
        elif repair:
            message += f"; kept while job(s) {', '.join(busy)} run"
        report.add("temp_file", message, path=rel, repaired=fixed)


def _known_folder_names(project: Project) -> set[str]:
    """Top-level asset folder names (``kind/NAME``) referenced by a row."""
    names: set[str] = set()
    for table, columns in [(Dataset, ["root"]), (Encoding, ["array_path", "state_path"]),
                           (Model, ["checkpoint"]), (Generation, ["folder"]),
                           (Evaluation, []), (Experiment, []), (Job, ["folder"]),
                           (MapLayout, ["folder"])]:
        for row in project.list(table):
            names.add(row.id)
            for c in columns:
                parts = Path(getattr(row, c) or "").parts
                if len(parts) >= 2 and parts[0] in ORPHAN_KINDS:
                    names.add(parts[1])
    exports = project.assets / "exports"
    for x in project.list(Export):  # absolute folders, maybe elsewhere
        folder = Path(x.folder or "")
        if folder.parent == exports or folder.absolute().parent == exports.absolute():
            names.add(folder.name)
    return names


def _job_specs(project: Project) -> list[str]:
    """spec.json texts of jobs not done: their folders belong to work that may come back
    (a queued or running job writes there; a failed one resumes there when retried)."""
    texts = []
    for job in project.list(Job):
        if job.status == "done":
            continue
        spec = project.assets / job.folder / "spec.json"
        try:
            texts.append(spec.read_text(encoding="utf-8"))
        except OSError:
            continue
    return texts


def _made_by_the_studio(kind: str, name: str) -> bool:
    """The folder's name is one the studio makes (an id, an export's ``NAME-ID``, an upload's
    ``zip-*``, ``unzip-*`` before): only such folders are deleted; anything else is the
    user's and is kept."""
    if kind == "uploads":
        return name.startswith(("zip-", "unzip-"))
    return _ID_RE.search(name) is not None


def _orphan_folders(project: Project) -> list[tuple[str, Path]]:
    """(kind, folder) of every top-level asset folder no row and no pending job knows."""
    known = _known_folder_names(project)
    specs = None
    found = []
    for kind in ORPHAN_KINDS:
        top = project.assets / kind
        if top.is_symlink() or not top.is_dir():
            continue  # never walk a link out of the assets
        for entry in sorted(top.iterdir()):
            if not entry.is_dir() or entry.name in known or _is_temp(entry, kind):
                continue
            if entry.name.startswith((".", "_")) or (kind, entry.name) in _RESERVED:
                continue
            if specs is None:
                specs = _job_specs(project)
            if any(json.dumps(entry.name)[1:-1] in s for s in specs):
                continue
            found.append((kind, entry))
    return found


def _check_orphan_folders(project: Project, report: CheckReport, repair: bool) -> None:
    orphans = _orphan_folders(project)
    if not orphans:
        return
    # belt and braces: every running job's folders are in its spec, but a live worker may
    # still create one; delete only while none runs (as for temp files)
    busy = [j.id for j in project.list(Job)
            if j.status in ("running", "ingesting") and pid_alive(j.pid)]
    for kind, entry in orphans:
        rel = f"{kind}/{entry.name}"
        message = f"{rel} belongs to no row and no pending job"
        fixed = False
        if not _made_by_the_studio(kind, entry.name):
            message += " and was not made by the studio (kept: delete it by hand if unused)"
        elif not repair:
            message += " (check --repair deletes it)"
        elif busy:
            message += f"; kept while job(s) {', '.join(busy)} run"
        else:
            try:
                if entry.is_symlink():
                    entry.unlink()  # the link only, never what it points at
                else:
                    shutil.rmtree(entry)  # removes links inside, never follows them
                fixed = True
                message += "; deleted"
            except OSError as exc:
                message += f"; cannot delete it ({exc})"
        report.add("orphan_folder", message, path=rel, repaired=fixed)
