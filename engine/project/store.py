"""The project: ``NAME.duckdb`` plus the sibling folder ``NAME.assets/``.

``Project`` is the only writer of the file. All database access goes through one connection
guarded by a lock (Gradio handlers run in threads), so writes are serialised in one place.
Workers never open the database: they write into their job folder and the owner ingests.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, select

from engine.errors import (
    InvalidConfigError,
    NotFoundError,
    ProjectLockedError,
    ProjectNotFoundError,
    SchemaVersionError,
    StudioError,
)
from engine.paths import check_name
from engine.project.schema import (
    SCHEMA_VERSION,
    Dataset,
    Encoding,
    Evaluation,
    Experiment,
    Export,
    Generation,
    HandOverride,
    Image,
    Job,
    Meta,
    Model,
    Sample,
    Selection,
    dumps,
    utcnow,
)

log = logging.getLogger(__name__)

RowT = TypeVar("RowT", bound=SQLModel)

IMAGE_COLUMNS = [c.name for c in Image.__table__.columns]
SAMPLE_COLUMNS = [c.name for c in Sample.__table__.columns]


def project_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``foo`` or ``foo.duckdb`` -> (``foo.duckdb``, ``foo.assets``).

    Raises:
        InvalidConfigError: the path names no file (``/``, ``.``, ``..``, empty, a NUL byte).
    """
    text = os.fspath(path)
    p = Path(text).expanduser()
    if "\x00" in str(text) or p.name in ("", ".", ".."):
        raise InvalidConfigError(f"project path {str(text)!r} names a folder, not a project "
                                 f"file: give NAME or NAME.duckdb")
    if p.suffix != ".duckdb":
        p = p.with_name(p.name + ".duckdb")
    p = p.absolute()
    return p, p.with_name(p.stem + ".assets")


# Schema migrations: version -> the columns it adds to existing tables (table, column, type).
# New tables are created by ``create_all``; data moves are in ``Project._migrate``.
ADDED_COLUMNS: dict[int, list[tuple[str, str, str]]] = {
    2: [(table, "code_version", "VARCHAR") for table in
        ("dataset", "encoding", "model", "generation", "selection", "evaluation", "export",
         "job")]
       + [(table, "job_id", "VARCHAR") for table in ("dataset", "encoding", "export")],
    # a validation split and the split an evaluation was scored on (older ones: test)
    3: [("dataset", "num_val", "INTEGER DEFAULT 0"),
        ("evaluation", "eval_split", "VARCHAR DEFAULT 'test'")],
    # 4: the hand_override table only (made by create_all; nothing to move)
    # 5: the map_layout table only (made by create_all; nothing to move)
    # 6: whether each image is greyscale (0: not recorded, for the images imported before)
    6: [("image", "channels", "INTEGER DEFAULT 0")],
}
# Experiments were JSON records in the meta table under this key prefix (schema version 1).
LEGACY_EXPERIMENT_PREFIX = "experiment:"


def _locked_message(path: Path, exc: Exception) -> str:
    text = str(exc)
    m = re.search(r"held in (.+?) \(PID (\d+)\)", text)
    holder = f"{m.group(1)} (PID {m.group(2)})" if m else "another process"
    return (f"project {path} is open in {holder}; close that studio or command first "
            f"(DuckDB allows one writer per project file)")


def free_name(names: set[str], base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever is not in ``names``."""
    if base not in names:
        return base
    i = 2
    while f"{base}-{i}" in names:
        i += 1
    return f"{base}-{i}"


def _check_row_name(row: Any) -> None:
    """Every name stored in the project passes here (``Project.add``, ``add_dataset``,
    ``add_generation``, ``update``)."""
    name = getattr(row, "name", None)
    if name is not None:
        check_name(name, f"{type(row).__name__.lower()} name", nested=True)


class Project:
    """An open project. Use as a context manager or call ``close()``.

    Args:
        path: ``NAME`` or ``NAME.duckdb``; the assets folder is ``NAME.assets``.
        create: create the project when it does not exist (else ProjectNotFoundError).
        read_only: open without writing (fails while a writer holds the file).
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True,
                 read_only: bool = False) -> None:
        self.path, self.assets = project_paths(path)
        self.read_only = read_only
        if self.path.is_dir():
            raise StudioError(f"project file {self.path} is a folder; give the path of a "
                              f"NAME.duckdb file")
        if not self.path.exists():
            if not create or read_only:
                raise ProjectNotFoundError(f"no project at {self.path}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StudioError(f"cannot create project {self.path}: cannot make its folder "
                                  f"({exc.strerror or exc})") from exc
            if not os.access(self.path.parent, os.W_OK):
                raise StudioError(f"cannot create project {self.path}: its folder "
                                  f"{self.path.parent} is not writable")
        self._lock = threading.RLock()
        self._reference_roots: tuple[Path, ...] | None = None  # see reference_roots()
        try:
            self._engine = sa.create_engine(
                f"duckdb:///{self.path}",
                poolclass=StaticPool,
                connect_args={"read_only": read_only},
            )
            with self._engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:  # duckdb raises IOException subclasses of its own
            if "lock" in str(exc).lower():
                raise ProjectLockedError(_locked_message(self.path, exc)) from exc
            raise StudioError(f"cannot open project {self.path}: {exc}") from exc
        try:
            self.assets.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._engine.dispose()
            raise StudioError(f"cannot open project {self.path}: cannot make its assets folder "
                              f"{self.assets} ({exc.strerror or exc})") from exc
        if not read_only:
            self._init_schema()
        else:
            self._check_version()

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            self._engine.dispose()

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _init_schema(self) -> None:
        with self._lock:
            fresh = not self._has_table("meta")
            if not fresh:
                # an older file: check (and migrate) before create_all adds the new tables
                self._check_version()
            SQLModel.metadata.create_all(self._engine)
            with self.session() as s:
                meta = s.get(Meta, "schema_version")
                if meta is None:
                    s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                    s.commit()
                    return
            self._migrate()

    def _has_table(self, name: str) -> bool:
        with self._engine.connect() as conn:
            return bool(conn.exec_driver_sql(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", (name,)).scalar())

    def _version(self) -> int:
        if not self._has_table("meta"):
            return SCHEMA_VERSION
        with self._engine.connect() as conn:
            value = conn.exec_driver_sql(
                "SELECT value FROM meta WHERE key = 'schema_version'").scalar()
        return int(value) if value else SCHEMA_VERSION

    def _check_version(self) -> int:
        version = self._version()
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"project {self.path} has schema version {version}, newer than this studio's "
                f"{SCHEMA_VERSION}; upgrade rcdm-studio to open it")
        if version < SCHEMA_VERSION and self.read_only:
            raise SchemaVersionError(
                f"project {self.path} has schema version {version}, older than this "
                f"studio's {SCHEMA_VERSION}; open it once for writing to migrate it")
        return version

    def _migrate(self) -> None:
        """Bring an older project file to ``SCHEMA_VERSION``, one version at a time, each
        step in one transaction (a failed step leaves the file at the previous version)."""
        version = self._check_version()
        while version < SCHEMA_VERSION:
            version += 1
            with self.duck() as con:
                con.execute("BEGIN TRANSACTION")
                try:
                    for table, column, sql_type in ADDED_COLUMNS.get(version, []):
                        _add_column(con, table, column, sql_type)
                    if version == 2:
                        _experiments_out_of_meta(con)
                    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                [str(version)])
                    con.execute("COMMIT")
                except Exception as exc:
                    con.execute("ROLLBACK")
                    raise SchemaVersionError(
                        f"cannot migrate project {self.path} to schema version {version}: "
                        f"{exc}") from exc
            log.info("migrated project %s to schema version %d", self.path, version)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._lock, Session(self._engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def duck(self) -> Iterator[Any]:
        """The raw DuckDB connection (bulk inserts, DataFrame queries), under the lock."""
        with self._lock, self._engine.connect() as conn:
            raw = conn.connection.driver_connection
            yield raw
            conn.commit()

    # ---------------------------------------------------------------- paths

    def rel(self, path: str | os.PathLike) -> str:
        """Assets-relative POSIX path of a file inside the assets folder."""
        return Path(path).absolute().relative_to(self.assets).as_posix()

    def abs(self, rel: str) -> Path:
        """Absolute path of an assets-relative path; refuses paths that leave the assets,
        except the absolute paths of images inside a folder a dataset references
        (``reference_roots``)."""
        p = (self.assets / rel).resolve()
        root = self.assets.resolve()
        if p == root or root in p.parents:
            return p
        if os.path.isabs(rel) and any(r in p.parents for r in self.reference_roots()):
            return p
        raise StudioError(f"path {rel!r} is outside the project's assets")

    def reference_roots(self) -> tuple[Path, ...]:
        """The folders (resolved) whose images datasets imported in ``reference`` mode name
        by their absolute path instead of holding them in the assets."""
        roots = self._reference_roots
        if roots is None:
            roots = tuple(sorted({Path(d.source).resolve() for d in self.list(Dataset)
                                  if d.config.get("mode") == "reference" and d.source}))
            self._reference_roots = roots
        return roots

    def new_folder(self, kind: str, ident: str) -> Path:
        folder = self.assets / kind / ident
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # ---------------------------------------------------------------- meta / settings

    def get_meta(self, key: str, default: str = "") -> str:
        with self.session() as s:
            row = s.get(Meta, key)
            return row.value if row is not None else default

    def set_meta(self, key: str, value: str) -> None:
        with self.session() as s:
            row = s.get(Meta, key)
            if row is None:
                s.add(Meta(key=key, value=value))
            else:
                row.value = value
                s.add(row)
            s.commit()

    def settings(self) -> dict[str, Any]:
        return json.loads(self.get_meta("settings", "{}"))

    def update_settings(self, **values: Any) -> dict[str, Any]:
        current = self.settings()
        current.update(values)
        self.set_meta("settings", json.dumps(current, sort_keys=True))
        return current

    # ---------------------------------------------------------------- generic rows

    def add(self, row: RowT) -> RowT:
        """Insert ``row``; its name, when it has one, must pass ``engine.paths.check_name``
        (nested: an experiment's evaluations are named ``experiment/run/seed0``).

        Raises:
            InvalidConfigError: the row's name is empty, too long, has a control character or
                could name a folder elsewhere (``..``, ``\\``).
        """
        _check_row_name(row)
        with self.session() as s:
            s.add(row)
            s.commit()
            s.refresh(row)
            return row

    def update(self, row_type: type[RowT], row_id: str, **values: Any) -> RowT:
        if row_type is Dataset:
            self._reference_roots = None
        with self.session() as s:
            row = s.get(row_type, row_id)
            if row is None:
                raise NotFoundError(f"no {row_type.__name__.lower()} {row_id!r}")
            for k, v in values.items():
                setattr(row, k, v)
            _check_row_name(row)
            s.add(row)
            s.commit()
            s.refresh(row)
            return row

    def delete(self, row_type: type[RowT], row_id: str) -> None:
        if row_type is Dataset:
            self._reference_roots = None
        with self.session() as s:
            row = s.get(row_type, row_id)
            if row is not None:
                s.delete(row)
                s.commit()

    def get(self, row_type: type[RowT], ref: str) -> RowT:
        """A row by id, or by name for tables that have one."""
        with self.session() as s:
            row = s.get(row_type, ref)
            if row is None and hasattr(row_type, "name"):
                rows = s.exec(select(row_type).where(row_type.name == ref)).all()
                if len(rows) > 1:
                    raise NotFoundError(
                        f"{len(rows)} {row_type.__name__.lower()}s are named {ref!r}; use the id")
                row = rows[0] if rows else None
            if row is None:
                raise NotFoundError(f"no {row_type.__name__.lower()} {ref!r} in {self.path.name}")
            return row

    def list(self, row_type: type[RowT], **where: Any) -> list[RowT]:
        with self.session() as s:
            q = select(row_type)
            for k, v in where.items():
                q = q.where(getattr(row_type, k) == v)
            if hasattr(row_type, "created_at"):
                q = q.order_by(row_type.created_at)
            return list(s.exec(q).all())

    def unique_name(self, row_type: type[RowT], base: str) -> str:
        return free_name({r.name for r in self.list(row_type)}, base)

    # ---------------------------------------------------------------- bulk rows

    def add_dataset(self, dataset: Dataset, images: pd.DataFrame) -> Dataset:
        """Insert a dataset and all its images in one transaction (all or nothing)."""
        _check_row_name(dataset)
        self._reference_roots = None
        if "channels" not in images:  # not recorded
            images = images.assign(channels=0)
        frame = images.reindex(columns=IMAGE_COLUMNS)  # noqa: F841 (used by DuckDB by name)
        with self.duck() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("INSERT INTO image SELECT * FROM frame")
                con.execute(
                    "INSERT INTO dataset (id, name, source, root, num_classes, num_images, "
                    "num_train, num_test, num_val, classes_json, skipped_json, config_json, "
                    "job_id, code_version, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [dataset.id, dataset.name, dataset.source, dataset.root,
                     dataset.num_classes, dataset.num_images, dataset.num_train,
                     dataset.num_test, dataset.num_val, dataset.classes_json, dataset.skipped_json,
                     dataset.config_json, dataset.job_id, dataset.code_version,
                     dataset.created_at or utcnow()])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        return self.get(Dataset, dataset.id)

    def add_generation(self, generation: Generation, samples: pd.DataFrame) -> Generation:
        """Insert a generation and all its samples in one transaction."""
        _check_row_name(generation)
        frame = samples.reindex(columns=SAMPLE_COLUMNS)  # noqa: F841
        with self.duck() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("INSERT INTO sample SELECT * FROM frame")
                con.execute(
                    "INSERT INTO generation (id, name, model_id, dataset_id, encoder, folder, "
                    "count, config_json, job_id, code_version, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [generation.id, generation.name, generation.model_id, generation.dataset_id,
                     generation.encoder, generation.folder, generation.count,
                     generation.config_json, generation.job_id, generation.code_version,
                     generation.created_at or utcnow()])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        return self.get(Generation, generation.id)

    def images(self, dataset_id: str, split: str | None = None) -> pd.DataFrame:
        """The images of a dataset as a DataFrame ordered by ``idx``."""
        with self.duck() as con:
            if split is None:
                return con.execute("SELECT * FROM image WHERE dataset_id = ? ORDER BY idx",
                                   [dataset_id]).df()
            return con.execute(
                "SELECT * FROM image WHERE dataset_id = ? AND split = ? ORDER BY idx",
                [dataset_id, split]).df()

    def samples(self, generation_id: str) -> pd.DataFrame:
        """The samples of a generation as a DataFrame ordered by ``idx``."""
        with self.duck() as con:
            return con.execute("SELECT * FROM sample WHERE generation_id = ? ORDER BY idx",
                               [generation_id]).df()

    def sample_rows(self, generation_id: str, idx: Sequence[int] | np.ndarray,
                    columns: Sequence[str] = ("idx", "id", "path")) -> pd.DataFrame:
        """Some samples of a generation (``idx``, in that order) and only ``columns``: what a
        gallery of a few dozen images needs, without reading the generation's every row."""
        unknown = set(columns) - set(SAMPLE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown sample columns {sorted(unknown)}")
        want = [int(i) for i in np.asarray(idx, dtype=np.int64).reshape(-1)]
        cols = list(dict.fromkeys(["idx", *columns]))
        if not want:
            return pd.DataFrame({c: [] for c in columns})
        with self.duck() as con:
            found = con.execute(
                f"SELECT {', '.join(cols)} FROM sample WHERE generation_id = ? "
                "AND idx IN (SELECT UNNEST(?::BIGINT[]))", [generation_id, want]).df()
        found = found.set_index("idx", drop=False).reindex(want)
        return found[list(columns)].reset_index(drop=True)

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        with self.duck() as con:
            return con.execute(sql, params or []).df()

    # ---------------------------------------------------------------- arrays

    def save_array(self, rel: str, array: np.ndarray) -> str:
        """Write an array atomically (temp file + rename) to an assets-relative path."""
        path = self.assets / rel
        save_array_atomic(path, array)
        return rel

    def load_array(self, rel: str, mmap: bool = True) -> np.ndarray:
        return np.load(self.abs(rel), mmap_mode="r" if mmap else None, allow_pickle=False)

    def embeddings(self, encoding: Encoding | str) -> np.ndarray:
        enc = encoding if isinstance(encoding, Encoding) else self.get(Encoding, encoding)
        return self.load_array(enc.array_path)

    def selection_members(self, selection: Selection | str) -> np.ndarray:
        sel = selection if isinstance(selection, Selection) else self.get(Selection, selection)
        return np.asarray(self.load_array(sel.members_path, mmap=False), dtype=np.int64)

    # ---------------------------------------------------------------- summary

    def summary(self) -> dict[str, Any]:
        """Counts and short descriptions of everything the project holds."""
        out: dict[str, Any] = {"project": str(self.path), "schema_version": SCHEMA_VERSION}
        for name, table in [("datasets", Dataset), ("encodings", Encoding), ("models", Model),
                            ("generations", Generation), ("selections", Selection),
                            ("evaluations", Evaluation), ("exports", Export),
                            ("experiments", Experiment), ("hand_overrides", HandOverride),
                            ("jobs", Job)]:
            rows = self.list(table)
            out[name] = [_row_summary(r) for r in rows]
        return out


def _row_summary(row: SQLModel) -> dict[str, Any]:
    d = row.model_dump()
    for k in list(d):
        if k.endswith("_json"):
            try:
                d[k[:-5]] = json.loads(d.pop(k))
            except (TypeError, ValueError):
                pass
        elif hasattr(d[k], "isoformat"):
            d[k] = d[k].isoformat(timespec="seconds")
    return d


def save_array_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _add_column(con: Any, table: str, column: str, sql_type: str) -> None:
    """``ALTER TABLE table ADD COLUMN column sql_type`` (no-op when it exists); a type
    without its own ``DEFAULT`` gets ``DEFAULT ''``.

    The table's indexes are dropped around it and made again: DuckDB 1.x refuses to alter a
    table that an index depends on.
    """
    indexes = con.execute("SELECT index_name, sql FROM duckdb_indexes() WHERE table_name = ?",
                          [table]).fetchall()
    for name, _ in indexes:
        con.execute(f'DROP INDEX "{name}"')
    if "DEFAULT" not in sql_type.upper():
        sql_type += " DEFAULT ''"
    con.execute(f'ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS {column} {sql_type}')
    for _, sql in indexes:
        con.execute(sql)


def _experiments_out_of_meta(con: Any) -> None:
    """Schema 1 -> 2: move experiment records (JSON in ``meta`` under ``experiment:<id>``)
    into the experiment table, in the connection's open transaction."""
    rows = con.execute("SELECT key, value FROM meta WHERE key LIKE ?",
                       [LEGACY_EXPERIMENT_PREFIX + "%"]).fetchall()
    for key, value in rows:
        try:
            record = json.loads(value)
        except ValueError:
            log.warning("meta row %s is not an experiment record; kept", key)
            continue
        row = _experiment_from_record(record)
        con.execute(
            "INSERT INTO experiment (id, name, kind, dataset_id, status, config_json, "
            "members_json, results_json, code_version, created_at, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [row.id, row.name, row.kind, row.dataset_id, row.status, row.config_json,
             row.members_json, row.results_json, row.code_version, row.created_at,
             row.finished_at])
        con.execute("DELETE FROM meta WHERE key = ?", [key])


def _experiment_from_record(record: dict[str, Any]) -> Experiment:
    """An Experiment row from a schema-1 experiment record (``engine.experiments`` wrote them:
    id, name, kind, created_at, dataset_id, generations, seeds, config, options, runs,
    members). Its code version is unknown ("")."""
    created = record.get("created_at")
    try:
        created_at = pd.Timestamp(created).to_pydatetime() if created else utcnow()
    except ValueError:
        created_at = utcnow()
    config = {"recipe": record.get("config", {}), "generations": record.get("generations", []),
              "seeds": record.get("seeds", 1), "options": record.get("options", {}),
              "runs": record.get("runs", [])}
    members = [{"job_id": "", **m} for m in record.get("members", [])]
    return Experiment(id=record["id"], name=record.get("name", record["id"]),
                      kind=record.get("kind", ""), dataset_id=record.get("dataset_id", ""),
                      status="queued", config_json=dumps(config), members_json=dumps(members),
                      results_json="[]", code_version="", created_at=created_at)
