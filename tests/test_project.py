"""The project file: schema, one writer, bulk rows all-or-nothing, arrays, versions."""

from __future__ import annotations

import os
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pytest

from engine import version
from engine.errors import NotFoundError, ProjectNotFoundError, SchemaVersionError, StudioError
from engine.project import SCHEMA_VERSION, Dataset, Job, Project, new_id, project_paths


def _images(ds_id: str, n: int) -> pd.DataFrame:
    return pd.DataFrame([dict(id=f"{ds_id}_{i}", dataset_id=ds_id, idx=i, path=f"p{i}.png",
                              thumb="", label=i % 2, class_name=str(i % 2), split="train",
                              width=8, height=8, source_path="") for i in range(n)])


def test_paths_and_schema_version(tmp_path):
    db, assets = project_paths(tmp_path / "demo")
    assert db.name == "demo.duckdb" and assets.name == "demo.assets"
    with Project(tmp_path / "demo") as p:
        assert p.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert p.assets.is_dir()


def test_missing_project_is_a_clear_error(tmp_path):
    with pytest.raises(ProjectNotFoundError, match="no project at"):
        Project(tmp_path / "nothing", create=False)


def test_dataset_and_images_all_or_nothing(project):
    ds = Dataset(id=new_id("ds"), name="d", num_images=3)
    project.add_dataset(ds, _images(ds.id, 3))
    assert len(project.images(ds.id)) == 3
    # a second dataset whose images collide with existing keys leaves nothing behind
    bad = Dataset(id=new_id("ds"), name="e")
    with pytest.raises(duckdb.ConstraintException):
        project.add_dataset(bad, _images(ds.id, 3))
    assert [d.name for d in project.list(Dataset)] == ["d"]
    assert len(project.query("SELECT * FROM image")) == 3


def test_get_by_name_and_id(project):
    ds = Dataset(id=new_id("ds"), name="digits")
    project.add_dataset(ds, _images(ds.id, 1))
    assert project.get(Dataset, "digits").id == ds.id
    assert project.get(Dataset, ds.id).name == "digits"
    with pytest.raises(NotFoundError, match="no dataset 'nope'"):
        project.get(Dataset, "nope")
    assert project.unique_name(Dataset, "digits") == "digits-2"


def test_job_status_updates_repeatedly(project):
    # DuckDB turns UPDATE into delete+insert: rows updated often must stay consistent.
    job = project.add(Job(id=new_id("job"), kind="train"))
    for status in ("running", "ingesting", "done", "queued", "running"):
        project.update(Job, job.id, status=status)
    assert project.get(Job, job.id).status == "running"


def test_arrays_are_atomic_and_memory_mapped(project):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    project.save_array("encodings/x.npy", a)
    b = project.load_array("encodings/x.npy")
    assert isinstance(b, np.memmap) and np.array_equal(a, b)
    assert not list(project.assets.rglob("*.tmp"))


def test_paths_cannot_leave_the_assets(project):
    with pytest.raises(StudioError, match="outside"):
        project.abs("../../etc/passwd")


def test_second_writer_gets_a_named_lock_error(tmp_path):
    with Project(tmp_path / "locked"):
        code = ("from engine.project import Project\n"
                f"Project({str(tmp_path / 'locked')!r})\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode != 0
        assert "ProjectLockedError" in r.stderr
        assert f"PID {os.getpid()}" in r.stderr
        assert "close that studio or command first" in r.stderr
    # once the holder closes, the project opens again
    Project(tmp_path / "locked").close()


def test_lock_error_type_in_process(tmp_path):
    code = ("import sys\nfrom engine.project import Project\nfrom engine.errors import "
            "ProjectLockedError\ntry:\n    Project(sys.argv[1])\nexcept ProjectLockedError:\n"
            "    sys.exit(7)\n")
    with Project(tmp_path / "locked2"):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "locked2")])
    assert r.returncode == 7


def test_newer_schema_is_refused(tmp_path):
    with Project(tmp_path / "new") as p:
        p.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(SchemaVersionError, match="newer"):
        Project(tmp_path / "new")


def test_settings_round_trip(project):
    project.update_settings(device="cpu", tab="Curate")
    assert project.settings() == {"device": "cpu", "tab": "Curate"}


def _v1_project(path) -> None:
    """A project file as schema version 1 wrote it: a dataset, a model and an experiment
    record in the meta table."""
    import json
    from pathlib import Path

    ddl = (Path(__file__).parent / "schema_v1.sql").read_text()
    con = duckdb.connect(str(path))
    con.execute(ddl)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO dataset VALUES ('ds_old', 'old', '', 'datasets/ds_old', 2, 0, 0, "
                "0, '[\"a\", \"b\"]', '[]', '{}', now())")
    con.execute("INSERT INTO model VALUES ('mdl_old', 'm', 'ds_old', '', 'pca', 'trained', 5, "
                "'', 0.5, '{\"steps\": 5}', '{\"losses\": [1.0, 0.5]}', '', now())")
    record = {"id": "exp_old", "name": "scaling", "kind": "scaling",
              "created_at": "2026-11-30T10:00:00+00:00", "dataset_id": "ds_old",
              "generations": ["g"], "seeds": 2, "config": {"arch": "resnet18"},
              "options": {"sizes": [1, 2]}, "runs": [{"label": "real only"}],
              "members": [{"evaluation_id": "eval_a", "run": 0, "seed": 0}]}
    con.execute("INSERT INTO meta VALUES ('experiment:exp_old', ?)", [json.dumps(record)])
    con.close()


def test_a_version_1_project_is_migrated_on_open(tmp_path):
    from engine.project import Experiment, Meta, Model

    db, _ = project_paths(tmp_path / "old")
    _v1_project(db)
    with Project(tmp_path / "old") as p:
        assert p.get_meta("schema_version") == str(SCHEMA_VERSION)
        ds = p.get(Dataset, "ds_old")
        assert ds.classes == ["a", "b"] and (ds.code_version, ds.job_id) == ("", "")
        model = p.get(Model, "mdl_old")
        assert model.metrics == {"losses": [1.0, 0.5]} and model.config == {"steps": 5}
        # the experiment record moved from meta to its table
        exp = p.get(Experiment, "exp_old")
        assert (exp.name, exp.kind, exp.dataset_id) == ("scaling", "scaling", "ds_old")
        assert exp.config["recipe"] == {"arch": "resnet18"} and exp.config["seeds"] == 2
        assert exp.members == [{"evaluation_id": "eval_a", "run": 0, "seed": 0, "job_id": ""}]
        assert exp.created_at.year == 2026
        assert not [m for m in p.list(Meta) if m.key.startswith("experiment:")]
        # new rows get the code version
        new = p.add(Job(id=new_id("job"), kind="train"))
        assert new.code_version and new.code_version.startswith(version.package_version())
    # a second open finds nothing left to migrate
    with Project(tmp_path / "old") as p:
        assert len(p.list(Experiment)) == 1 and p.get(Dataset, "ds_old").name == "old"
    # the indexes dropped around ALTER TABLE are back
    con = duckdb.connect(str(db), read_only=True)
    names = {n for (n,) in con.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
    con.close()
    assert {"ix_dataset_name", "ix_model_name", "ix_experiment_name"} <= names


def test_a_version_2_project_gets_validation_columns(tmp_path):
    """Schema 2 -> 3: datasets get num_val (0), evaluations eval_split ("test": every older
    evaluation was scored on the test split)."""
    from engine.project import Evaluation

    db, _ = project_paths(tmp_path / "v2")
    with Project(tmp_path / "v2") as p:
        p.add(Evaluation(id="eval_old", name="old", top1=50.0, num_test=7))
        p.add(Dataset(id="ds_v2", name="v2", num_images=10, num_train=8, num_test=2))
    con = duckdb.connect(str(db))
    for name, in con.execute("SELECT index_name FROM duckdb_indexes() "
                             "WHERE table_name IN ('dataset', 'evaluation')").fetchall():
        con.execute(f'DROP INDEX "{name}"')
    con.execute("ALTER TABLE dataset DROP COLUMN num_val")
    con.execute("ALTER TABLE evaluation DROP COLUMN eval_split")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    with Project(tmp_path / "v2") as p:
        assert p.get_meta("schema_version") == str(SCHEMA_VERSION)
        ev = p.get(Evaluation, "eval_old")
        assert (ev.eval_split, ev.num_test, ev.top1) == ("test", 7, 50.0)
        ds = p.get(Dataset, "ds_v2")
        assert (ds.num_train, ds.num_val, ds.num_test) == (8, 0, 2)
        new = p.add(Evaluation(id="eval_new", name="new", eval_split="val"))
        assert p.get(Evaluation, new.id).eval_split == "val"


def test_a_version_4_project_gets_the_map_layout_table(tmp_path):
    """Schema 4 -> 5: the map_layout table appears, the rows already there stay."""
    from engine.project import MapLayout, Selection

    db, _ = project_paths(tmp_path / "v4")
    with Project(tmp_path / "v4") as p:
        p.add(Selection(id="sel_old", name="old", generation_id="gen_x", count=2))
    con = duckdb.connect(str(db))
    con.execute("DROP TABLE map_layout")
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.close()
    with Project(tmp_path / "v4") as p:
        assert p.get_meta("schema_version") == str(SCHEMA_VERSION) and p.list(MapLayout) == []
        assert p.get(Selection, "sel_old").count == 2
        p.add(MapLayout(id="map_1", generation_id="gen_x", method="umap", seed=7, count=3))
    with Project(tmp_path / "v4") as p:
        assert (p.get(MapLayout, "map_1").method, p.get(MapLayout, "map_1").seed) == ("umap", 7)


def test_a_version_5_project_gets_the_channels_of_its_images(tmp_path):
    """Schema 5 -> 6: ``image.channels`` appears, 0 (not recorded) for the images already
    there; images added afterwards record theirs."""
    db, _ = project_paths(tmp_path / "v5")
    with Project(tmp_path / "v5") as p:
        p.add_dataset(Dataset(id="ds_old", name="old", num_images=3), _images("ds_old", 3))
    con = duckdb.connect(str(db))
    for (name,) in con.execute("SELECT index_name FROM duckdb_indexes() "
                               "WHERE table_name = 'image'").fetchall():
        con.execute(f'DROP INDEX "{name}"')
    con.execute("ALTER TABLE image DROP COLUMN channels")
    con.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    con.close()
    with Project(tmp_path / "v5") as p:
        assert p.get_meta("schema_version") == str(SCHEMA_VERSION) == "6"
        assert p.images("ds_old")["channels"].tolist() == [0, 0, 0]
        p.add_dataset(Dataset(id="ds_new", name="new", num_images=2),
                      _images("ds_new", 2).assign(channels=[1, 3]))
    with Project(tmp_path / "v5") as p:
        assert p.images("ds_new")["channels"].tolist() == [1, 3]
        assert p.images("ds_old")["path"].tolist() == ["p0.png", "p1.png", "p2.png"]


def test_a_version_3_project_gets_the_hand_override_table(tmp_path):
    """Schema 3 -> 4: the hand_override table appears, the rows already there stay, and a
    hand decision can be recorded in the migrated file."""
    import numpy as np

    from engine.project import HandOverride, Selection

    db, _ = project_paths(tmp_path / "v3")
    with Project(tmp_path / "v3") as p:
        p.add(Selection(id="sel_old", name="old", generation_id="gen_x", count=2))
    con = duckdb.connect(str(db))
    con.execute("DROP TABLE hand_override")
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    with Project(tmp_path / "v3") as p:
        assert p.get_meta("schema_version") == str(SCHEMA_VERSION) == "6"
        assert p.get(Selection, "sel_old").count == 2 and p.list(HandOverride) == []
        p.save_array("selections/overrides/hand_1.npy", np.array([3], np.int64))
        p.add(HandOverride(id="hand_1", generation_id="gen_x", decision="drop", count=1,
                           members_path="selections/overrides/hand_1.npy", decided_by="test",
                           seq=1))
    with Project(tmp_path / "v3") as p:
        row = p.get(HandOverride, "hand_1")
        assert (row.decision, row.decided_by, row.code_version != "") == ("drop", "test", True)


def test_an_old_project_is_not_migrated_read_only(tmp_path):
    db, _ = project_paths(tmp_path / "old")
    _v1_project(db)
    with pytest.raises(SchemaVersionError, match="older"):
        Project(tmp_path / "old", read_only=True)


def test_every_run_row_records_the_code_version(project):
    from engine.project import Encoding, Evaluation, Experiment, Export, Generation, Model, Selection

    for table in (Dataset, Encoding, Model, Generation, Selection, Evaluation, Export, Job,
                  Experiment):
        assert "code_version" in table.__table__.columns, table
    ds = project.add_dataset(Dataset(id=new_id("ds"), name="d", num_images=2),
                             _images("x", 0))
    assert ds.code_version == version.code_version()


def test_code_version_is_the_package_version_and_the_git_revision(monkeypatch, tmp_path):
    assert version.code_version() is version.code_version()  # computed once
    text = version.code_version.__wrapped__()  # fresh: a commit may have moved HEAD since
    assert text.startswith(version.package_version())
    if (version.SOURCE_ROOT / ".git").exists():
        rev = subprocess.run(["git", "-C", str(version.SOURCE_ROOT), "rev-parse", "--short",
                              "HEAD"], capture_output=True, text=True).stdout.strip()
        assert f"+g{rev}" in text
    # not a checkout: just the version
    monkeypatch.setattr(version, "SOURCE_ROOT", tmp_path)
    assert version.git_revision() is None
