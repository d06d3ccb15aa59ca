"""Tables of the project file (DuckDB through SQLModel).

Keys are short text ids (``ds_1a2b3c4d``): duckdb_engine has no SERIAL, and text keys move
with the project. There are no foreign-key constraints: DuckDB turns an UPDATE of a row into
delete + insert, which makes foreign keys into often-updated rows (jobs, models) raise false
errors. References are plain id columns checked by ``rcdm-studio check``.

Bulk rows (images, samples) are written with DuckDB's DataFrame insert, not row by row.
Embeddings and selections' members are ``.npy`` files in the assets folder, referenced here.

Every run table (dataset, encoding, model, generation, selection, evaluation, export, job,
experiment) records the ``code_version`` that created the row (``engine.version``); the runs
made by a job record its ``job_id``. JSON columns (``*_json``) are read through typed
properties (``Dataset.classes``, ``Model.config``, ``Evaluation.results``, ...) and written
with ``dumps``.

Schema versions: 1 the first; 2 adds ``code_version`` to every run table, ``job_id`` to
datasets, encodings and exports, and the ``experiment`` table (experiments were JSON records
in ``meta`` before); 3 adds the validation split (``num_val``, ``eval_split``); 4 adds the
``hand_override`` table (keep / drop decisions by hand, on top of a band); 5 adds the
``map_layout`` table (2-D layouts computed by map jobs); 6 adds ``image.channels`` (1 for a
greyscale image, 3 for a colour one, 0 when not recorded: imported before). ``engine.project.store``
migrates older project files on open.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import Any

from sqlmodel import Field, SQLModel

from engine.version import code_version

SCHEMA_VERSION = 6


def new_id(prefix: str) -> str:
    """A short random id with a readable prefix, e.g. ``new_id("ds") -> "ds_9f3a1c2b"``."""
    return f"{prefix}_{secrets.token_hex(4)}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def dumps(value: Any) -> str:
    """The text of a ``*_json`` column."""
    return json.dumps(value)


def _dict(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


def _list(text: str | None) -> list[Any]:
    value = json.loads(text) if text else []
    return value if isinstance(value, list) else []


class Meta(SQLModel, table=True):
    """Key/value pairs: ``schema_version``, studio settings, last opened tab."""

    key: str = Field(primary_key=True)
    value: str = ""


class Dataset(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    source: str = ""  # the folder it was imported from
    root: str = ""  # assets-relative folder holding its images
    num_classes: int = 0
    num_images: int = 0
    num_train: int = 0
    num_test: int = 0
    num_val: int = 0  # validation images (schema 3); images of split "unused" count in none
    classes_json: str = "[]"  # class names in label order
    skipped_json: str = "[]"  # [{"path": ..., "reason": ...}] files refused at import
    config_json: str = "{}"
    job_id: str = ""  # the import job that made it ("" when imported in the caller's thread)
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def classes(self) -> list[str]:
        """Class names in label order."""
        return [str(c) for c in _list(self.classes_json)]

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Files refused at import: ``[{"path": ..., "reason": ...}]``."""
        return _list(self.skipped_json)

    @property
    def config(self) -> dict[str, Any]:
        """The ImportConfig it was imported with (as a dict)."""
        return _dict(self.config_json)


class Image(SQLModel, table=True):
    """A real image of a dataset. ``idx`` is its row in the dataset's arrays."""

    id: str = Field(primary_key=True)
    dataset_id: str = Field(index=True)
    idx: int = 0
    path: str = ""  # assets-relative PNG
    thumb: str = ""  # assets-relative thumbnail
    label: int = 0
    class_name: str = ""
    split: str = "train"  # "train", "val", "test" or "unused" (engine.data.split_images)
    width: int = 0
    height: int = 0
    source_path: str = ""  # file it was imported from, relative to the imported folder
    # 1: greyscale (R == G == B as imported, engine.image_store.content_channels), 3: colour,
    # 0: not recorded (imported before schema 6)
    channels: int = 0


class Encoding(SQLModel, table=True):
    """Embeddings of a dataset's images or a generation's samples by one encoder."""

    id: str = Field(primary_key=True)
    dataset_id: str = Field(index=True)
    target: str = "dataset"  # "dataset" or "generation"
    target_id: str = ""  # the dataset's or the generation's id
    encoder: str = ""
    offline: bool = True
    dim: int = 0
    count: int = 0
    array_path: str = ""  # assets-relative .npy, shape (count, dim) float32, row = idx
    state_path: str = ""  # assets-relative folder of the fitted encoder (offline encoders)
    config_json: str = "{}"
    job_id: str = ""
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def config(self) -> dict[str, Any]:
        """The EncodeConfig (as a dict); a re-encoding adds ``source_encoding_id``."""
        return _dict(self.config_json)

    @property
    def source_encoding_id(self) -> str:
        """The dataset encoding whose fitted encoder re-encoded a generation ("" if none)."""
        return str(self.config.get("source_encoding_id", "") or "")


class Model(SQLModel, table=True):
    """A training run of an RCDM (or of the class-conditioned baseline)."""

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    dataset_id: str = ""
    encoding_id: str = ""
    encoder: str = ""
    status: str = "training"  # "training", "trained", "failed", "cancelled"
    steps_done: int = 0
    checkpoint: str = ""  # assets-relative folder (save_pretrained layout)
    final_loss: float | None = None
    config_json: str = "{}"
    metrics_json: str = "{}"  # loss curve etc.
    job_id: str = ""
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def config(self) -> dict[str, Any]:
        """The TrainConfig (as a dict)."""
        return _dict(self.config_json)

    @property
    def metrics(self) -> dict[str, Any]:
        """``{"losses": [...]}`` once trained."""
        return _dict(self.metrics_json)


class Generation(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    model_id: str = ""
    dataset_id: str = ""
    encoder: str = ""
    folder: str = ""  # assets-relative folder of the images (PNG, WebP or JPEG)
    count: int = 0
    config_json: str = "{}"
    job_id: str = ""
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def config(self) -> dict[str, Any]:
        """The GenerateConfig (as a dict) plus ``conditions`` (where the plan came from)."""
        return _dict(self.config_json)

    @property
    def variations(self) -> int:
        """Images per representation (``GenerateConfig.variations``; 1 when not recorded)."""
        return int(self.config.get("variations", 1))


class Sample(SQLModel, table=True):
    """A generated image. ``idx`` is its row in the generation's arrays."""

    id: str = Field(primary_key=True)
    generation_id: str = Field(index=True)
    idx: int = 0
    path: str = ""
    source_image_id: str = ""
    label: int = 0
    class_name: str = ""
    seed: int = 0
    sampler: str = ""
    steps: int = 0
    guidance: float = 1.0


class Selection(SQLModel, table=True):
    """A named subset of a generation's samples (their idx in ``members_path``)."""

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    generation_id: str = ""
    encoding_id: str = ""
    count: int = 0
    members_path: str = ""  # assets-relative .npy of int64 sample idx, sorted
    config_json: str = "{}"  # band, how it was made
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def config(self) -> dict[str, Any]:
        """How it was made: ``{"kind": "band", "band": {...}, ...}``, ``{"kind": "all"}``..."""
        return _dict(self.config_json)


class HandOverride(SQLModel, table=True):
    """Samples of a generation kept or dropped by hand, on top of any band (schema 4).

    An append-only log: one row per decision (a click, a lasso, a command), its samples' idx
    in ``members_path`` (an int64 ``.npy`` under ``selections/overrides/``). A sample's hand
    state is the latest decision naming it (``created_at``, then ``seq``): ``"keep"``,
    ``"drop"``, or ``"clear"`` (back to what the band says). Rows are never updated or
    deleted, so the log is also the history of who decided what, and when; a selection records
    the last row it applied (``engine.stages.curate_stage``).
    """

    __tablename__ = "hand_override"

    id: str = Field(primary_key=True)
    generation_id: str = Field(index=True)
    decision: str = "drop"  # "keep", "drop" or "clear"
    count: int = 0
    members_path: str = ""  # assets-relative .npy of int64 sample idx, sorted, unique
    decided_by: str = ""  # who: "cli:alice", "studio:bob", "studio:visitor"
    decided_via: str = ""  # with what: "cli", "lasso", "gallery", "neighbours of img_1a2b"
    note: str = ""
    seq: int = 0  # order of rows made in the same microsecond (1 + the latest row's)
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)


class MapLayout(SQLModel, table=True):
    """A 2-D layout of a generation's real and generated representations (schema 5), made
    by a map job (``engine.stages.map_stage``) and reused: one per (encoding, method, seed,
    max_points).

    ``folder`` (assets-relative) holds ``layout.npz`` (``xy`` (P, 2) float32, ``kind`` (P,)
    uint8 0 real / 1 synthetic, ``label`` (P,) int32, ``index`` (P,) int64: the row in the
    dataset's training images or in the generation's samples) and ``points.bin``: the same
    points for the browser, little-endian: ``xy`` float32 (P x 2) scaled to [-1, 1], ``label``
    uint16 (P), ``kind`` uint8 (P).
    """

    __tablename__ = "map_layout"

    id: str = Field(primary_key=True)
    generation_id: str = Field(index=True)
    encoding_id: str = ""
    method: str = "pca"
    seed: int = 0
    max_points: int = 0
    count: int = 0  # points in the layout (P)
    n_real: int = 0
    n_syn: int = 0
    folder: str = ""
    config_json: str = "{}"  # the MapConfig, plus seconds (time to lay out)
    job_id: str = ""
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def config(self) -> dict[str, Any]:
        return _dict(self.config_json)


class Evaluation(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    dataset_id: str = ""
    mix: str = "real"  # "real", "synthetic", "real+synthetic"
    selection_id: str = ""  # synthetic part, when the mix has one
    generation_id: str = ""  # synthetic part when a whole generation is used
    status: str = "queued"
    top1: float | None = None
    top5: float | None = None
    num_train: int = 0
    num_test: int = 0  # images of the split it was scored on (eval_split)
    eval_split: str = "test"  # the real split top-1 / top-5 come from: "test" or "val" (schema 3)
    config_json: str = "{}"
    results_json: str = "{}"  # per-class accuracy, curves
    job_id: str = ""
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def config(self) -> dict[str, Any]:
        """The EvalConfig (as a dict)."""
        return _dict(self.config_json)

    @property
    def results(self) -> dict[str, Any]:
        """Per-class accuracy, curves, ... (everything but top-1 / top-5)."""
        return _dict(self.results_json)


class Export(SQLModel, table=True):
    id: str = Field(primary_key=True)
    selection_id: str = ""
    folder: str = ""  # absolute path: exports may live outside the project
    count: int = 0
    manifest: str = ""
    config_json: str = "{}"
    job_id: str = ""
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def config(self) -> dict[str, Any]:
        """The ExportConfig (as a dict), plus ``image_size``: the side every image was
        written at."""
        return _dict(self.config_json)


class Job(SQLModel, table=True):
    """A background process. Never referenced by foreign keys (its status changes often)."""

    id: str = Field(primary_key=True)
    kind: str = ""  # "import", "encode", "train", "generate", "evaluate", "export"
    title: str = ""
    status: str = "queued"  # queued, running, ingesting, done, failed, cancelled, interrupted
    folder: str = ""  # assets-relative job folder
    pid: int | None = None
    error: str = ""
    result_id: str = ""  # row the job produced once ingested
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Experiment(SQLModel, table=True):
    """A set of evaluations run together (``engine.experiments``): the paper's scaling,
    augmentation and filtering comparisons.

    ``config_json`` holds the plan: the recipe (``recipe``: an EvalConfig dict), the
    ``generations``, ``seeds``, plan ``options`` and the ``runs`` (one per configuration).
    ``members_json`` lists its evaluations: ``[{"evaluation_id", "job_id", "run", "seed"}]``.
    ``status`` and ``results_json`` (the table: mean and spread per configuration) are
    refreshed from the member rows by ``engine.experiments.status``.
    """

    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    kind: str = ""  # "scaling", "augmentation", "filtering"
    dataset_id: str = ""
    status: str = "queued"  # queued, running, done, incomplete
    config_json: str = "{}"
    members_json: str = "[]"
    results_json: str = "[]"
    code_version: str = Field(default_factory=code_version)  # engine.version at creation
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None

    @property
    def config(self) -> dict[str, Any]:
        return _dict(self.config_json)

    @property
    def members(self) -> list[dict[str, Any]]:
        return _list(self.members_json)

    @property
    def results(self) -> list[dict[str, Any]]:
        return _list(self.results_json)
