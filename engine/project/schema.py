"""Tables of the project file (DuckDB through SQLModel).

Keys are short text ids (``ds_1a2b3c4d``): duckdb_engine has no SERIAL, and text keys move
with the project. There are no foreign-key constraints: DuckDB turns an UPDATE of a row into
delete + insert, which makes foreign keys into often-updated rows (jobs, models) raise false
errors. References are plain id columns checked by ``rcdm-studio check``.

Bulk rows (images, samples) are written with DuckDB's DataFrame insert, not row by row.
Embeddings and selections' members are ``.npy`` files in the assets folder, referenced here.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1


def new_id(prefix: str) -> str:
    """A short random id with a readable prefix, e.g. ``new_id("ds") -> "ds_9f3a1c2b"``."""
    return f"{prefix}_{secrets.token_hex(4)}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
    classes_json: str = "[]"  # class names in label order
    skipped_json: str = "[]"  # [{"path": ..., "reason": ...}] files refused at import
    config_json: str = "{}"
    created_at: datetime = Field(default_factory=utcnow)


class Image(SQLModel, table=True):
    """A real image of a dataset. ``idx`` is its row in the dataset's arrays."""

    id: str = Field(primary_key=True)
    dataset_id: str = Field(index=True)
    idx: int = 0
    path: str = ""  # assets-relative PNG
    thumb: str = ""  # assets-relative thumbnail
    label: int = 0
    class_name: str = ""
    split: str = "train"  # "train" or "test"
    width: int = 0
    height: int = 0
    source_path: str = ""  # file it was imported from, relative to the imported folder


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
    created_at: datetime = Field(default_factory=utcnow)


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
    created_at: datetime = Field(default_factory=utcnow)


class Generation(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str = Field(index=True)
    model_id: str = ""
    dataset_id: str = ""
    encoder: str = ""
    folder: str = ""  # assets-relative folder of the PNGs
    count: int = 0
    config_json: str = "{}"
    job_id: str = ""
    created_at: datetime = Field(default_factory=utcnow)


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
    created_at: datetime = Field(default_factory=utcnow)


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
    num_test: int = 0
    config_json: str = "{}"
    results_json: str = "{}"  # per-class accuracy, curves
    job_id: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Export(SQLModel, table=True):
    id: str = Field(primary_key=True)
    selection_id: str = ""
    folder: str = ""  # absolute path: exports may live outside the project
    count: int = 0
    manifest: str = ""
    config_json: str = "{}"
    created_at: datetime = Field(default_factory=utcnow)


class Job(SQLModel, table=True):
    """A background process. Never referenced by foreign keys (its status changes often)."""

    id: str = Field(primary_key=True)
    kind: str = ""  # "encode", "train", "generate", "evaluate", "export"
    title: str = ""
    status: str = "queued"  # queued, running, ingesting, done, failed, cancelled, interrupted
    folder: str = ""  # assets-relative job folder
    pid: int | None = None
    error: str = ""
    result_id: str = ""  # row the job produced once ingested
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
