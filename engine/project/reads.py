"""The read model the studio pages through: one ``LIMIT`` query per page, never a whole table.

The studio issues no SQL; every read it needs beyond ``Project.get`` / ``Project.list`` is a
function here, taking the open ``Project``:

- ``image_page``: a page of a dataset's images (filtered by class and split, classes
  interleaved) and the filtered total;
- ``sample_page``: a page of a generation's samples and their total;
- ``sample_plan``: the plan row of one sample (how its representation was made), the
  provenance the sample's detail view shows;
- ``revision``: a signature of the project's rows that changes when a row is added or a run
  changes status (the studio refreshes its lists then);
- ``evaluation_report``: what an evaluation's page shows (per-class accuracy, confusion
  matrix, per-epoch curves) and ``top_confusions``, its largest off-diagonal cells;
- ``evaluation_settings`` / ``model_settings`` and ``config_table``: runs' configs side by
  side, the fields that differ first; ``model_losses``: a model's saved loss curve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from engine.errors import NotFoundError

if TYPE_CHECKING:
    from engine.project.schema import Evaluation, Generation, Model
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


ORDER_CACHE = 8  # interleaved orders kept (one int64 column each: 1 MB per 130,000 images)
_orders: dict[tuple[Any, ...], np.ndarray] = {}


def _interleaved(con: Any, key: tuple[Any, ...], cond: str, params: list[Any]) -> np.ndarray:
    """The ``idx`` of every image matching ``cond`` in page order (rank within the class
    first, then the label): one window query, then cached per filter and row count, so
    later pages read only their own rows (a 130,000-image dataset: ~130 ms once, then a few
    ms per page)."""
    if key not in _orders:
        while len(_orders) >= ORDER_CACHE:
            _orders.pop(next(iter(_orders)))
        _orders[key] = con.execute(
            f"SELECT idx FROM (SELECT idx, label, row_number() OVER (PARTITION BY label "
            f"ORDER BY idx) AS r FROM image WHERE {cond}) ORDER BY r, label",
            params).fetchnumpy()["idx"].astype(np.int64)
    return _orders[key]


def image_page(project: Project, dataset_id: str, class_name: str | None = None,
               split: str | None = None, page: int = 1, page_size: int = 60) -> Page:
    """A page of a dataset's images: columns ``id, path, thumb, class_name``.

    All classes are interleaved (rank within the class first, then the label) so that every
    page shows all of them. The order is computed once per filter and cached (its ``idx``
    column only, see ``_interleaved``); a page then reads its own rows by ``idx``.

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
        total, top = con.execute(f"SELECT count(*), max(idx) FROM image WHERE {cond}",
                                 params).fetchone()
        total = int(total)
        page, pages = _clamp(page, total, page_size)
        if class_name is not None:  # one class: its rows in idx order, a plain LIMIT
            rows = con.execute(
                f"SELECT id, path, thumb, class_name FROM image WHERE {cond} ORDER BY idx "
                f"LIMIT ? OFFSET ?", params + [page_size, (page - 1) * page_size]).df()
            return Page(rows, page, pages, total)
        key = (str(project.path), dataset_id, split, total, top)
        want = _interleaved(con, key, cond, params)[(page - 1) * page_size:page * page_size]
        rows = con.execute(
            "SELECT idx, id, path, thumb, class_name FROM image WHERE dataset_id = ? "
            "AND idx IN (SELECT UNNEST(?::BIGINT[]))", [dataset_id, want.tolist()]).df()
    rows = rows.set_index("idx").reindex(want).reset_index(drop=True)
    return Page(rows[["id", "path", "thumb", "class_name"]], page, pages, total)


def sample_page(project: Project, generation_id: str, page: int = 1,
                page_size: int = 48) -> Page:
    """A page of a generation's samples in ``idx`` order: columns ``id, idx, path,
    class_name, seed``. Samples are numbered 0..N-1, so a page is an ``idx`` range (a
    zone-map skip, a few ms at 500,000 samples) rather than an ``OFFSET`` scan; a generation
    whose numbering has gaps falls back to the ``OFFSET``."""
    with project.duck() as con:
        total, top = con.execute("SELECT count(*), max(idx) FROM sample "
                                 "WHERE generation_id = ?", [generation_id]).fetchone()
        total = int(total)
        page, pages = _clamp(page, total, page_size)
        start = (page - 1) * page_size
        if total and top == total - 1:
            rows = con.execute(
                "SELECT id, idx, path, class_name, seed FROM sample WHERE generation_id = ? "
                "AND idx >= ? AND idx < ? ORDER BY idx",
                [generation_id, start, start + page_size]).df()
        else:
            rows = con.execute(
                "SELECT id, idx, path, class_name, seed FROM sample WHERE generation_id = ? "
                "ORDER BY idx LIMIT ? OFFSET ?", [generation_id, page_size, start]).df()
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


def plan_weights(project: Project, generation: Generation, idxs: list[int]) -> dict[int, float]:
    """Sample idx -> the plan's weight column (an edit's λ, an interpolation's t) for
    ``idxs``, from the generation's ``samples.parquet``; {} when it cannot be read."""
    path = project.abs(generation.folder) / "samples.parquet"
    if not idxs or not path.exists():
        return {}
    try:
        with project.duck() as con:
            rows = con.execute("SELECT idx, weight FROM read_parquet(?) WHERE list_contains(?, idx)",
                               [str(path), [int(i) for i in idxs]]).fetchall()
    except Exception:  # noqa: BLE001 - captions are a courtesy; the images still show
        log.exception("cannot read %s", path)
        return {}
    return {int(i): float(w) for i, w in rows}


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


# ---------------------------------------------------------------------- runs: details, compare

CURVE_COLUMNS = ("epoch", "train_loss", "test_loss", "test_top1")


@dataclass(frozen=True)
class EvaluationReport:
    """What an evaluation's page shows, read from its row (``Evaluation.results``).

    Every held-out number (``per_class``, ``confusion``, ``test_loss``, ``test_top1``) comes
    from the real split the evaluation was scored on, ``evaluation.eval_split`` ("test" or
    "val"), as its top-1 / top-5 do.

    Attributes:
        evaluation: the row.
        classes: C class names in label order (``class 0``, ... when the dataset is gone).
        per_class: columns ``class, accuracy, images``: accuracy % on the scored split (NaN
            for a class without an image there) and that class's images in it; no rows when
            not recorded.
        confusion: (C, C) ints, row = true class, column = predicted; None when not recorded.
        curves: columns ``epoch, train_loss, test_loss, test_top1`` (test_* on the scored
            split), one row per epoch; no rows when not recorded.
        missing: what the row lacks (``"per-class accuracy"``, ``"confusion matrix"``,
            ``"curves"``): an evaluation not finished yet, or one made before they were kept.
    """

    evaluation: Evaluation
    classes: list[str]
    per_class: pd.DataFrame
    confusion: np.ndarray | None
    curves: pd.DataFrame
    missing: tuple[str, ...] = field(default=())


def evaluation_report(project: Project, evaluation_id: str) -> EvaluationReport:
    """The per-class accuracy, confusion matrix and per-epoch curves of an evaluation.

    Raises:
        NotFoundError: no such evaluation.
    """
    from engine.project.schema import Dataset, Evaluation

    ev = project.get(Evaluation, evaluation_id)
    res = ev.results
    try:
        classes = project.get(Dataset, ev.dataset_id).classes
    except NotFoundError:  # a dataset deleted since: numbered classes still read
        classes = []
    missing = []
    confusion = None
    raw = res.get("confusion")
    if isinstance(raw, list) and raw and all(isinstance(r, list) and len(r) == len(raw)
                                             for r in raw):
        confusion = np.asarray(raw, dtype=np.int64)  # (C, C)
    else:
        missing.append("confusion matrix")
    accuracy = res.get("per_class")
    if not isinstance(accuracy, list) or not accuracy:
        accuracy = None
        missing.append("per-class accuracy")
    num_classes = (len(confusion) if confusion is not None
                   else len(accuracy) if accuracy is not None else len(classes))
    if len(classes) != num_classes:
        classes = [f"class {i}" for i in range(num_classes)]
    per_class = pd.DataFrame(columns=["class", "accuracy", "images"])
    if accuracy is not None:
        images = (confusion.sum(axis=1) if confusion is not None
                  else np.full(len(accuracy), np.nan))
        per_class = pd.DataFrame({
            "class": classes[:len(accuracy)],
            "accuracy": [float("nan") if v is None else float(v) for v in accuracy],
            "images": images[:len(accuracy)]})
    curves = res.get("curves") if isinstance(res.get("curves"), dict) else {}
    epochs = curves.get("epoch") or []
    table = {c: list(curves.get(c) or [])[:len(epochs)] for c in CURVE_COLUMNS}
    table = {c: v + [float("nan")] * (len(epochs) - len(v)) for c, v in table.items()}
    if not epochs:
        missing.append("curves")
    return EvaluationReport(ev, classes, per_class, confusion,
                            pd.DataFrame(table, columns=list(CURVE_COLUMNS)), tuple(missing))


def top_confusions(confusion: np.ndarray, classes: Sequence[str], k: int = 10) -> pd.DataFrame:
    """The ``k`` largest off-diagonal cells of a confusion matrix, largest first.

    Args:
        confusion: (C, C) counts, row = true class.
        classes: C names.

    Returns:
        columns ``true class, predicted as, images, % of the class`` (only cells > 0).
    """
    cm = np.asarray(confusion, dtype=np.int64)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    rows = []
    totals = cm.sum(axis=1)
    for i, j in zip(*np.unravel_index(flat, off.shape)):
        if off[i, j] <= 0:
            break
        rows.append([str(classes[i]), str(classes[j]), int(off[i, j]),
                     round(100.0 * off[i, j] / max(int(totals[i]), 1), 1)])
    return pd.DataFrame(rows, columns=["true class", "predicted as", "images",
                                       "% of the class"])


def row_name(project: Project, table: Any, row_id: str) -> str:
    """The name of row ``row_id`` of ``table``; "" without an id, the id when it is gone."""
    if not row_id:
        return ""
    try:
        return project.get(table, row_id).name
    except NotFoundError:  # a deleted input still shows its id
        return row_id


def evaluation_settings(project: Project, evaluation: Evaluation) -> dict[str, Any]:
    """An evaluation's results and settings as one flat dict, for ``config_table``: top-1 /
    top-5 and the split they come from, the training mix and its inputs, then every field of
    its ``EvalConfig``."""
    from engine.project.schema import Dataset, Generation, Selection

    ev = evaluation
    def pct(v: float | None) -> float | None:
        return None if v is None else round(float(v), 2)

    return {"top-1 %": pct(ev.top1), "top-5 %": pct(ev.top5), "scored on (split)": ev.eval_split,
            "status": ev.status, "mix": ev.mix,
            "dataset": row_name(project, Dataset, ev.dataset_id),
            "selection": row_name(project, Selection, ev.selection_id),
            "generation": row_name(project, Generation, ev.generation_id),
            "training images": ev.num_train, "scored images": ev.num_test,
            **ev.config, "code version": ev.code_version}


def model_settings(project: Project, model: Model) -> dict[str, Any]:
    """A model's results and settings as one flat dict, for ``config_table``: final loss,
    steps, encoder and dataset, then every field of its ``TrainConfig``."""
    from engine.project.schema import Dataset

    return {"final loss": model.final_loss, "steps done": model.steps_done,
            "status": model.status, "encoder": model.encoder,
            "dataset": row_name(project, Dataset, model.dataset_id),
            **model.config, "code version": model.code_version}


def _cell(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        import json

        return json.dumps(value)
    return str(value)


def config_table(runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Runs' settings side by side: columns ``field``, ``differs`` ("≠" where the runs'
    values differ), then one per run; one row per field. Fields that differ come first (in
    their order of appearance); a field a run lacks shows "—".

    Args:
        runs: run name -> flat settings (``evaluation_settings`` / ``model_settings``).
    """
    names = list(runs)
    fields = list(dict.fromkeys(k for settings in runs.values() for k in settings))
    rows = []
    for f in fields:
        cells = [_cell(runs[n][f]) if f in runs[n] else "—" for n in names]
        rows.append([f, "≠" if len(set(cells)) > 1 else "", *cells])
    rows.sort(key=lambda r: r[1] != "≠")  # stable: the differing fields first
    return pd.DataFrame(rows, columns=["field", "differs", *names])


def model_losses(model: Model) -> list[tuple[float, float]]:
    """A model's saved training loss as (step, loss) points (``Model.metrics["losses"]``:
    pairs, or plain values one per step); [] while it trains."""
    points = []
    for i, item in enumerate(model.metrics.get("losses") or []):
        if isinstance(item, (list, tuple)) and len(item) >= 2:
            points.append((float(item[0]), float(item[1])))
        elif isinstance(item, (int, float)):
            points.append((float(i + 1), float(item)))
    return points
