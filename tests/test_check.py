"""``rcdm-studio check``: a real tiny project, damaged on purpose, then checked and repaired."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import import_folder

from engine.check import check_project
from engine.config import EncodeConfig, ImportConfig
from engine.jobs import JobManager
from engine.project import Encoding, Image, Job
from studio.cli import main


@pytest.fixture
def built(project, tiny_folder):
    """A project with the tiny dataset (24 images) and a PCA encoding of it (24 x 4)."""
    from engine.stages import encode_stage

    import_folder(project, tiny_folder, "tiny", ImportConfig(test_fraction=0.25))
    JobManager(project).run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca", dim=4,
                                                                        image_size=8)))
    return project


def _kinds(report) -> list[str]:
    return sorted(p["kind"] for p in report.problems)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_clean_project_is_ok(built):
    report = check_project(built)
    assert report.problems == [] and report.ok
    assert report.to_dict()["ok"] is True


def test_a_deleted_image_file_is_reported(built):
    img = built.list(Image)[3]
    (built.assets / img.path).unlink()
    report = check_project(built, repair=True)
    assert _kinds(report) == ["missing_file"] and not report.ok
    (p,) = report.problems
    assert (p["row"], p["path"], p["repaired"]) == (f"image:{img.id}", img.path, False)
    assert (built.assets / img.thumb).exists()  # repair touches no user data


def test_a_truncated_embeddings_array_is_reported(built):
    enc = built.list(Encoding)[0]
    path = built.assets / enc.array_path
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 40])  # header intact, the last rows cut off
    report = check_project(built)
    assert _kinds(report) == ["broken_file"]
    assert report.problems[0]["row"] == f"encoding:{enc.id}"


def test_an_embeddings_array_of_the_wrong_shape_is_reported(built):
    import numpy as np

    enc = built.list(Encoding)[0]
    np.save(built.assets / enc.array_path, np.zeros((enc.count, enc.dim + 1), np.float32))
    report = check_project(built)
    assert _kinds(report) == ["broken_file"] and "shape" in report.problems[0]["message"]


def test_repair_removes_temp_files_and_orphan_folders_and_keeps_the_rest(built, tmp_path):
    """Repair deletes a stray temp file and the folders no row and no pending job knows
    (the studio's own ids only, links removed but never followed); it keeps every referenced
    folder, a failed job's folder (a retry resumes there) and folders the user put there."""
    from engine.stages import encode_stage

    stray = built.assets / "encodings" / "x.tmp"
    stray.write_bytes(b"half")
    orphans = [built.assets / "generations" / "gen_deadbeef",
               built.assets / "encodings" / "enc_0badc0de" / "encoder",
               built.assets / "jobs" / "job_0000abcd",
               built.assets / "exports" / "my-sel-exp_12345678",
               built.assets / "uploads" / "unzip-k2j3",
               built.assets / "uploads" / "zip-7fq2x0"]  # the studio's upload folders
    for folder in orphans:
        folder.mkdir(parents=True)
    (orphans[0] / "0001.png").write_bytes(b"png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the project's")
    (built.assets / "models").mkdir(exist_ok=True)
    (built.assets / "models" / "mdl_1234abcd").symlink_to(outside, target_is_directory=True)
    (orphans[0] / "link").symlink_to(outside, target_is_directory=True)
    mine = built.assets / "generations" / "my own folder"
    mine.mkdir()
    # a failed (retryable) job's output folder is not an orphan
    failed = JobManager(built).create(encode_stage.prepare(built,
                                                           EncodeConfig(encoder="class")))
    built.update(Job, failed.id, status="failed", error="disk full")
    failed_out = built.assets / "encodings" / json.loads(
        (built.assets / failed.folder / "spec.json").read_text())["params"]["encoding_id"]
    failed_out.mkdir()
    referenced = sorted(p.relative_to(built.assets).as_posix()
                        for p in built.assets.glob("*/*") if p.is_dir())

    report = check_project(built)
    paths = sorted(p["path"] for p in report.problems if p["kind"] == "orphan_folder")
    expected = sorted([*(f"{o.relative_to(built.assets).parts[0]}/"
                         f"{o.relative_to(built.assets).parts[1]}" for o in orphans),
                       "models/mdl_1234abcd", "generations/my own folder"])
    assert paths == expected and not report.ok
    assert all(o.exists() for o in orphans)  # no repair, no change

    report = check_project(built, repair=True)
    by_path = {p.get("path"): p for p in report.problems}
    assert by_path["encodings/x.tmp"]["repaired"] and not stray.exists()
    for folder in orphans:
        rel = "/".join(folder.relative_to(built.assets).parts[:2])
        assert by_path[rel]["repaired"] and not (built.assets / rel).exists(), rel
    assert by_path["models/mdl_1234abcd"]["repaired"]
    assert not (built.assets / "models" / "mdl_1234abcd").exists()
    assert (outside / "keep.txt").read_text() == "not the project's"  # links never followed
    assert not by_path["generations/my own folder"]["repaired"] and mine.is_dir()
    assert failed_out.is_dir()
    kept = sorted(p.relative_to(built.assets).as_posix()
                  for p in built.assets.glob("*/*") if p.is_dir())
    assert set(referenced) - set(kept) == {
        "/".join(o.relative_to(built.assets).parts[:2]) for o in orphans} | {
        "models/mdl_1234abcd"}
    mine.rmdir()
    assert check_project(built).problems == []


def test_a_dangling_reference_is_reported(built):
    enc = built.list(Encoding)[0]
    built.update(Encoding, enc.id, dataset_id="ds_gone")
    report = check_project(built)
    assert "dangling_reference" in _kinds(report)
    assert any("ds_gone" in p["message"] for p in report.problems)


def test_a_running_job_with_a_dead_pid_is_reconciled_to_interrupted(built):
    from engine.stages import encode_stage

    jobs = JobManager(built)
    job = jobs.create(encode_stage.prepare(built, EncodeConfig(encoder="class")))
    built.update(Job, job.id, status="running", pid=_dead_pid())
    report = check_project(built)
    assert _kinds(report) == ["stale_job"] and not report.ok
    assert built.get(Job, job.id).status == "running"  # no repair, no change
    report = check_project(built, repair=True)
    assert _kinds(report) == ["stale_job"] and report.ok
    assert report.problems[0]["repaired"] and "interrupted" in report.problems[0]["message"]
    assert built.get(Job, job.id).status == "interrupted"
    # its encodings/<id> folder belongs to a retryable job, not an orphan
    assert check_project(built).problems == []


def test_cli_exit_codes_and_json(built, capsys):
    path = str(built.path)
    built.close()  # the CLI opens the project itself (one writer per file)
    assert main(["check", "--project", path]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    from engine.project import Project

    with Project(path) as p:
        (p.assets / "datasets" / "y.tmp").write_bytes(b"")
    assert main(["check", "--project", path, "--json"]) == 1
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["ok"], out["counts"]) == (False, {"temp_file": 1})
    assert out["problems"][0]["path"] == "datasets/y.tmp"
    assert main(["check", "--project", path, "--repair"]) == 0
    assert "1 repaired, 0 left" in capsys.readouterr().out
    assert main(["check", "--project", path]) == 0


def test_a_trained_model_without_its_unet_is_reported(built):
    from engine.project import Dataset, Model, new_id

    ds, enc = built.list(Dataset)[0], built.list(Encoding)[0]
    model_id = new_id("mdl")
    folder = built.new_folder("models", model_id) / "model"
    folder.mkdir()
    (folder / "rcdm.json").write_text("{}")
    built.add(Model(id=model_id, name="m", dataset_id=ds.id, encoding_id=enc.id,
                    status="trained", checkpoint=built.rel(folder)))
    report = check_project(built)
    assert _kinds(report) == ["broken_file"]
    assert report.problems[0]["path"] == f"models/{model_id}/model/unet"


def test_an_experiment_with_missing_members_is_reported_and_kept(built):
    from engine import experiments
    from engine.project import Dataset, Evaluation, Experiment, dumps, new_id
    from engine.stages import encode_stage

    ds = built.list(Dataset)[0]
    job = JobManager(built).create(encode_stage.prepare(built, EncodeConfig(encoder="class")))
    ev = built.add(Evaluation(id=new_id("eval"), name="e", dataset_id=ds.id, job_id=job.id))
    members = [{"evaluation_id": ev.id, "job_id": job.id, "run": 0, "seed": 0},
               {"evaluation_id": "eval_gone", "job_id": "job_gone", "run": 0, "seed": 1}]
    exp = built.add(Experiment(id=new_id("exp"), name="scaling", kind="scaling",
                               dataset_id=ds.id, config_json=dumps({"runs": [
                                   {"label": "real only", "series": "real", "x": 0.0}]}),
                               members_json=dumps(members)))
    report = check_project(built)
    assert _kinds(report) == ["dangling_reference", "dangling_reference"] and not report.ok
    messages = " ".join(p["message"] for p in report.problems)
    assert "eval_gone" in messages and "job_gone" in messages
    assert {p["row"] for p in report.problems} == {f"experiment:{exp.id}"}
    report = check_project(built, repair=True)  # rows are never deleted
    assert not report.ok and not any(p["repaired"] for p in report.problems)
    assert built.get(Experiment, exp.id).members == members
    # the experiment's table says which member is missing
    statuses = experiments.results(built, experiments.get(built, exp.id))["status"].tolist()
    assert statuses == ["queued", "missing"]
