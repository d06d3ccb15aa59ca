"""The read model the studio pages through: one ``LIMIT`` query per page, never a whole table.

The studio issues no SQL; every read it needs beyond ``Project.get`` / ``Project.list`` is a
function here, taking the open ``Project``:

- ``image_page``: a page of a dataset's images (filtered by class and split, classes
  interleaved) and the filtered total;
- ``sample_page``: a page of a generation's samples and their total;
- ``sample_plan``: the plan row of one sample (how its representation was made), the
  provenance the sample's detail view shows;
- ``revision``: a signature of the project's rows that changes when a row is added or a run
  changes status (the studio refreshes its lists then).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from engine.project.schema import Generation
    from engine.project.store import Project

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    """One page of rows.

    Attributes:
        rows: the page's rows (columns depend on the read), at most ``page_size`` of them.
        page: the page shown, 1-based, clamped to ``1..pages``.
        pages: number of pages (at least 1, also when there are no rows).
        total: number of rows over all pages.
    """

    rows: pd.DataFrame
    page: int
    pages: int
    total: int


def _clamp(page: int | None, total: int, page_size: int) -> tuple[int, int]:
    pages = max(1, -(-total // page_size))
    return min(max(int(page or 1), 1), pages), pages


def image_page(project: Project, dataset_id: str, class_name: str | None = None,
               split: str | None = None, page: int = 1, page_size: int = 60) -> Page:
    """A page of a dataset's images: columns ``id, path, thumb, class_name``.

    All classes are interleaved (rank within the class first, then the label) so that every
    page shows all of them.

    Args:
        class_name: only this class (None: every class).
        split: ``train`` / ``test`` / ... (None: every split).
        page: 1-based page number, clamped to the pages there are.
    """
    where, params = ["dataset_id = ?"], [dataset_id]
    if split is not None:
        where.append("split = ?")
        params.append(split)
    if class_name is not None:
        where.append("class_name = ?")
        params.append(class_name)
    cond = " AND ".join(where)
    with project.duck() as con:
        total = int(con.execute(f"SELECT count(*) AS n FROM image WHERE {cond}",
                                params).fetchone()[0])
        page, pages = _clamp(page, total, page_size)
        rows = con.execute(
            f"SELECT id, path, thumb, class_name FROM (SELECT id, path, thumb, class_name, "
            f"label, row_number() OVER (PARTITION BY label ORDER BY idx) AS r FROM image "
            f"WHERE {cond}) ORDER BY r, label LIMIT ? OFFSET ?",
            params + [page_size, (page - 1) * page_size]).df()
    return Page(rows, page, pages, total)


def sample_page(project: Project, generation_id: str, page: int = 1,
                page_size: int = 48) -> Page:
    """A page of a generation's samples in ``idx`` order: columns ``id, path, class_name,
    seed``."""
    with project.duck() as con:
        total = int(con.execute("SELECT count(*) FROM sample WHERE generation_id = ?",
                                [generation_id]).fetchone()[0])
        page, pages = _clamp(page, total, page_size)
        rows = con.execute(
            "SELECT id, path, class_name, seed FROM sample WHERE generation_id = ? ORDER BY idx "
            "LIMIT ? OFFSET ?", [generation_id, page_size, (page - 1) * page_size]).df()
    return Page(rows, page, pages, total)


def sample_plan(project: Project, generation: Generation, idx: int) -> dict[str, Any]:
    """The plan columns (``mode, cond_index, partner_image_id, weight``, and since
    perturbation ``perturb`` (λ), ``noise_seed`` (-1: none), ``perturb_distance``) of sample
    ``idx``, read from the generation's ``samples.parquet``; {} for generations written
    before plans or when the file cannot be read (provenance is a courtesy: the rest still
    shows). Older files lack the perturbation columns: read them with ``.get``."""
    path = project.abs(generation.folder) / "samples.parquet"
    if not path.exists():
        return {}
    try:
        with project.duck() as con:
            rows = con.execute("SELECT * FROM read_parquet(?) WHERE idx = ? LIMIT 1",
                               [str(path), int(idx)]).df()
    except Exception:  # noqa: BLE001 - provenance is a courtesy; the rest still shows
        log.exception("cannot read %s", path)
        return {}
    return rows.iloc[0].to_dict() if len(rows) else {}


def revision(project: Project) -> list[str]:
    """A short signature of the project's rows: counts of datasets, encodings, generations,
    selections and exports, and ``id || status`` of every model, evaluation and job. It
    changes when anything is added or a run changes status."""
    with project.duck() as con:
        row = con.execute(
            "SELECT (SELECT count(*) FROM dataset), (SELECT count(*) FROM encoding), "
            "(SELECT string_agg(id || status, ',' ORDER BY id) FROM model), "
            "(SELECT count(*) FROM generation), (SELECT count(*) FROM selection), "
            "(SELECT string_agg(id || status, ',' ORDER BY id) FROM evaluation), "
            "(SELECT count(*) FROM export), "
            "(SELECT string_agg(id || status, ',' ORDER BY id) FROM job)").fetchone()
    return [str(v) for v in row]
