"""Import as a job kind: a worker validates and copies the images; the owner ingests the rows;
a cancelled, failed or killed import leaves no half dataset. And the pixel caches of a
dataset are built by workers, never by the owner's ``prepare``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import import_folder

from engine import data
from engine.config import EncodeConfig, EvalConfig, ImportConfig, TrainConfig
from engine.errors import DatasetError
from engine.jobs import JobManager, read_progress
from engine.project import Dataset, Encoding, Evaluation, Image, Job, Model
from engine.version import code_version


def _leftovers(project) -> list[str]:
    top = project.assets / "datasets"
    return sorted(p.name for p in top.iterdir()) if top.exists() else []


def test_import_job_runs_in_a_worker_and_ingests_the_rows(project, tiny_folder):
    from engine.stages import import_stage

    jobs = JobManager(project)
    spec = import_stage.prepare(project, tiny_folder, "tiny", ImportConfig(test_fraction=0.25))
    assert not _leftovers(project)  # prepare reads and writes no image
    job = jobs.submit(spec)
    assert job.status == "running" and job.pid != os.getpid()
    job = jobs.wait(job.id, timeout=120)
    assert job.status == "done", job.error
    ds = project.get(Dataset, job.result_id)
    assert (ds.name, ds.num_images, ds.num_classes) == ("tiny", 24, 3)
    assert ds.classes == ["class_0", "class_1", "class_2"] and ds.skipped == []
    assert (ds.num_train, ds.num_test) == (18, 6)
    assert ds.job_id == job.id and ds.code_version == code_version()
    assert ds.config["test_fraction"] == 0.25 and ds.source == str(tiny_folder)
    images = project.images(ds.id)
    assert len(images) == 24 and all(project.abs(p).is_file() for p in images["path"])
    assert _leftovers(project) == [ds.id]
    events = read_progress(jobs.folder(job))
    assert events[-1]["stage"] == "import" and events[-1]["step"] == events[-1]["total"] == 24
    # the same images and split as the in-thread import
    other = import_folder(project, tiny_folder, "again",
                                     ImportConfig(test_fraction=0.25))
    again = project.images(other.id)
    assert images["split"].tolist() == again["split"].tolist()
    assert images["source_path"].tolist() == again["source_path"].tolist()


def test_import_demo_job_inline(project):
    from engine.stages import import_stage

    job = JobManager(project).run_inline(import_stage.prepare(project, None, "digits",
                                                              demo=True))
    ds = project.get(Dataset, job.result_id)
    assert (ds.num_images, ds.num_classes, ds.source) == (1797, 10, data.DEMO_SOURCE)
    assert not (JobManager(project).folder(job) / "demo").exists()


def test_import_job_refuses_bad_inputs_before_queuing(project, tiny_folder, tmp_path):
    from engine.stages import import_stage

    import_folder(project, tiny_folder, "tiny")
    with pytest.raises(DatasetError, match="already exists"):
        import_stage.prepare(project, tiny_folder, "tiny")
    with pytest.raises(DatasetError, match="does not exist"):
        import_stage.prepare(project, tmp_path / "missing", "x")
    with pytest.raises(DatasetError, match="non-empty name"):
        import_stage.prepare(project, tiny_folder, " ")


def test_failed_import_job_leaves_no_dataset(project, tmp_path):
    from conftest import write_tiny_folder

    from engine.stages import import_stage

    folder = write_tiny_folder(tmp_path / "bad", classes=2, per_class=3)
    for f in (folder / "class_1").iterdir():
        f.write_bytes(b"not an image")
    jobs = JobManager(project)
    job = jobs.wait(jobs.submit(import_stage.prepare(project, folder, "bad")).id, timeout=120)
    assert job.status == "failed" and "no valid image" in job.error
    assert project.list(Dataset) == [] and project.list(Image) == []
    assert _leftovers(project) == []


def test_cancelled_and_killed_imports_leave_no_half_dataset(project, tmp_path, monkeypatch):
    from conftest import write_tiny_folder

    from engine.stages import import_stage
    from engine.worker import FAULT_HOLD_ENV, FAULT_HOLD_FILE

    folder = write_tiny_folder(tmp_path / "many", classes=2, per_class=30)
    jobs = JobManager(project, max_running=2)
    monkeypatch.setenv(FAULT_HOLD_ENV, "0")  # the workers pause once their import started
    cancelled = jobs.submit(import_stage.prepare(project, folder, "a"))
    killed = jobs.submit(import_stage.prepare(project, folder, "b"))
    for job in (cancelled, killed):
        start = time.time()
        while not (jobs.folder(job) / FAULT_HOLD_FILE).exists():
            assert time.time() - start < 120, "the import never started"
            time.sleep(0.1)
    monkeypatch.delenv(FAULT_HOLD_ENV)
    assert len(_leftovers(project)) == 2  # two partial folders
    jobs.cancel(cancelled.id)
    assert jobs.wait(cancelled.id, timeout=60).status == "cancelled"
    os.killpg(killed.pid, signal.SIGKILL)
    time.sleep(0.5)
    fresh = JobManager(project)
    fresh.reconcile()
    assert project.get(Job, killed.id).status == "interrupted"
    assert project.list(Dataset) == [] and project.list(Image) == []
    # the cancelled import left nothing; the killed one its hidden partial folder (no row
    # names it), which its retry resumes from (issue 17)
    killed_root = json.loads((jobs.folder(killed) / "spec.json").read_text())["params"]
    assert _leftovers(project) == [Path(killed_root["work_root"]).name]
    fresh.retry(killed.id)
    job = fresh.wait(killed.id, timeout=120)
    assert job.status == "done", job.error
    assert project.get(Dataset, "b").num_images == 60 and _leftovers(project) == [job.result_id]


def test_pixel_caches_are_built_by_the_worker(project, tiny_folder):
    from engine.stages import encode_stage, evaluate_stage, train_stage

    ds = import_folder(project, tiny_folder, "tiny", ImportConfig(test_fraction=0.25))
    jobs = JobManager(project)
    spec = encode_stage.prepare(project, EncodeConfig(encoder="pca", dim=4, image_size=8))
    cache = data.pixels_cache_path(project, ds, 8)
    assert spec.params["pixels_path"] == str(cache) and not cache.exists()
    # the owner only names the files: a list beside the dataset, not 10^5 paths in the spec
    listing = project.abs(ds.root) / "images.txt"
    assert spec.params["image_list"] == str(listing)
    assert listing.read_text().splitlines()[0] == "images/0000/000000.png"
    job = jobs.run_inline(spec)
    assert cache.is_file() and project.get(Encoding, job.result_id).job_id == job.id
    stages = {e["stage"] for e in read_progress(jobs.folder(job))}
    assert "pixels" in stages  # the worker built it, with progress
    np.testing.assert_array_equal(np.load(cache), data.dataset_pixels(project, ds, 8))
    # training and evaluation name their caches too (size 12 here) and build none
    train = train_stage.prepare(project, TrainConfig(image_size=12, steps=1), encoder="pca")
    evaluate = evaluate_stage.prepare(project, EvalConfig(image_size=12, epochs=1))
    big = data.pixels_cache_path(project, ds, 12)
    assert train.params["pixels_path"] == evaluate.params["pixels_path"] == str(big)
    assert not big.exists()
    job = jobs.run_inline(evaluate)
    assert big.is_file()
    ev = project.get(Evaluation, job.result_id)
    assert ev.job_id == job.id and ev.code_version == code_version()
    model = project.get(Model, train.params["model_id"])
    assert model.job_id == "" and model.status == "queued"


def test_every_run_row_a_job_writes_records_the_job_and_the_code_version(project, tiny_folder,
                                                                          tmp_path):
    from engine.config import ExportConfig, GenerateConfig
    from engine.project import Export, Generation
    from engine.stages import (
        curate_stage,
        encode_stage,
        export_stage,
        generate_stage,
        import_stage,
        train_stage,
    )

    jobs = JobManager(project)
    imported = jobs.run_inline(import_stage.prepare(project, tiny_folder, "tiny"))
    encoded = jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="class")))
    config = TrainConfig(image_size=8, block_channels=(8, 16), cross_attention_dim=16,
                         attention_head_dim=8, batch_size=4, steps=2, checkpoint_every=100,
                         preview_every=100, warmup_steps=1)
    trained = jobs.run_inline(train_stage.prepare(project, config, encoder="class"))
    generated = jobs.run_inline(generate_stage.prepare(
        project, GenerateConfig(variations=1, sampler="ddim", steps=2), trained.result_id))
    sel = curate_stage.save_all(project, generated.result_id)
    exported = jobs.run_inline(export_stage.prepare(project, ExportConfig(), sel.id,
                                                    out_dir=tmp_path / "out"))
    for table, job in [(Dataset, imported), (Encoding, encoded), (Model, trained),
                       (Generation, generated), (Export, exported)]:
        row = project.get(table, job.result_id)
        assert (row.job_id, row.code_version) == (job.id, code_version()), table
        assert project.get(Job, job.id).code_version == code_version()
    assert sel.code_version == code_version()


def test_low_data_import_splits_and_downstream_use_train_only(project, tmp_path):
    """N per class and a validation split through the job: the test images are those of a
    full import of the same folder; training, encoding fits and generation sources see the
    train split only; an evaluation scores test or val and records which."""
    from conftest import write_tiny_folder

    from engine.config import GenerateConfig
    from engine.errors import InvalidConfigError, NotReadyError
    from engine.stages import (
        common,
        encode_stage,
        evaluate_stage,
        generate_stage,
        import_stage,
        train_stage,
    )

    folder = write_tiny_folder(tmp_path / "ten", classes=2, per_class=20, size=8)
    full = import_folder(project, folder, "full", ImportConfig(test_fraction=0.25))
    cfg = ImportConfig(test_fraction=0.25, val_fraction=0.2, train_per_class=6)
    spec = import_stage.prepare(project, folder, "low", cfg)
    job = JobManager(project).run_inline(spec)
    low = project.get(Dataset, job.result_id)
    assert (low.num_train, low.num_val, low.num_test) == (12, 8, 10)
    assert low.config["train_per_class"] == 6 and low.config["val_fraction"] == 0.2
    a, b = project.images(full.id), project.images(low.id)
    assert (a["split"] == "test").tolist() == (b["split"] == "test").tolist()
    assert (b["split"] == "unused").sum() == 40 - 12 - 8 - 10
    splits = common.split_indices(project, low)
    assert isinstance(splits, common.Splits)
    assert not (set(splits.train) | set(splits.test)) & set(splits.val)
    assert len(splits.labels) == 40
    # encoding fits, RCDM training and generation sources: the train split only
    enc = JobManager(project).run_inline(encode_stage.prepare(
        project, EncodeConfig(encoder="pca", dim=3, image_size=8), dataset_ref=low.id))
    assert enc.status == "done"
    train = train_stage.prepare(project, TrainConfig(image_size=8, steps=1), low.id,
                                encoder="pca")
    assert train.params["train_idx"] == splits.train.tolist()
    pool = generate_stage._pool(project.images(low.id), None, GenerateConfig(), low.name)
    assert set(pool["split"]) == {"train"} and len(pool) == 12
    # evaluation: on val, on test, never on a split the dataset lacks
    ev_val = evaluate_stage.prepare(project, EvalConfig(image_size=8, epochs=1), mix="real",
                                    dataset_ref=low.id, split="val")
    assert ev_val.params["test_idx"] == splits.val.tolist()
    assert ev_val.params["train_idx"] == splits.train.tolist()
    row = project.get(Evaluation, ev_val.params["evaluation_id"])
    assert (row.eval_split, row.num_test) == ("val", 8)
    ev_test = evaluate_stage.prepare(project, EvalConfig(image_size=8, epochs=1), mix="real",
                                     dataset_ref=low.id)
    assert project.get(Evaluation, ev_test.params["evaluation_id"]).eval_split == "test"
    with pytest.raises(NotReadyError, match="no val split"):
        evaluate_stage.prepare(project, EvalConfig(image_size=8), dataset_ref=full.id,
                               split="val")
    with pytest.raises(InvalidConfigError, match="'train'"):
        evaluate_stage.prepare(project, EvalConfig(image_size=8), dataset_ref=low.id,
                               split="train")


def test_import_job_reports_small_classes_and_refuses_foreign_cleanup(project, tmp_path):
    from conftest import write_tiny_folder

    from engine.stages import import_stage

    folder = write_tiny_folder(tmp_path / "few", classes=2, per_class=4, size=8)
    job = JobManager(project).run_inline(import_stage.prepare(
        project, folder, "few", ImportConfig(val_fraction=0.25, train_per_class=5)))
    result = json.loads((JobManager(project).folder(job) / "result.json").read_text())
    # 4 images a class: 1 test, 1 val, 2 train of the 5 asked
    warned = result["warnings"]
    assert [w.split(" (")[0] for w in warned] == [
        "every class has fewer than 5 test images",
        "every class has fewer than 5 validation images",
        "every class has fewer training images than the 5 asked"]
    assert "'class_0': 2, 'class_1': 2" in warned[2]
    with pytest.raises(DatasetError, match="uploads"):
        import_stage.prepare(project, folder, "x", cleanup=tmp_path)
    # an unpacked upload is removed once its import has ended
    upload = project.assets / "uploads" / "unzip-x"
    copy = upload / "x"
    shutil.copytree(folder, copy)
    JobManager(project).run_inline(import_stage.prepare(project, copy, "up", cleanup=upload))
    assert not upload.exists()
