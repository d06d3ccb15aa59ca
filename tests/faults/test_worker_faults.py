"""SIGKILL of a worker in the middle of encoding, training, generation and evaluation; the
machine "rebooting" under a running job; a disk that fills under a worker.

Each worker is paused mid-job by the fault hook (``RCDM_STUDIO_FAULT_HOLD``, see
``engine.worker``), with part of its outputs written, and killed there. Then a new owner
reconciles: the job is ``interrupted``, ``check --repair`` leaves nothing to fix, a retry in
the same folder resumes and finishes, and nothing already in the project was lost.
"""

from __future__ import annotations

import shutil

import numpy as np

from engine.config import EncodeConfig, EvalConfig, GenerateConfig, TrainConfig
from engine.jobs import JobManager, pid_alive, read_log_tail, read_progress
from engine.project import Encoding, Evaluation, Generation, Job, Model, Project
from engine.worker import FAULT_HOLD_ENV, FAULT_HOLD_FILE

from .conftest import TRAIN, assert_repairable, kill_group, snapshot, wait_for


def _kill_mid_job(project, spec, monkeypatch, hold_at: int) -> tuple[Job, JobManager]:
    """Submit ``spec``, let the worker reach step ``hold_at``, SIGKILL it, reconcile."""
    monkeypatch.setenv(FAULT_HOLD_ENV, str(hold_at))
    jobs = JobManager(project)
    job = jobs.submit(spec)
    folder = jobs.folder(job)
    wait_for(lambda: (folder / FAULT_HOLD_FILE).exists() or not pid_alive(job.pid),
             180, "the worker to reach the fault hold")
    assert (folder / FAULT_HOLD_FILE).exists(), read_log_tail(folder)
    kill_group(job.pid)
    monkeypatch.delenv(FAULT_HOLD_ENV)
    (folder / FAULT_HOLD_FILE).unlink()
    # a new owner (the studio starting again) settles the job
    fresh = JobManager(project)
    fresh.reconcile()
    job = project.get(Job, job.id)
    assert job.status == "interrupted" and "retry" in job.error
    assert (folder / "status.json").exists() is False
    return job, fresh


def _retry(project, fresh: JobManager, job: Job) -> Job:
    fresh.retry(job.id)
    job = fresh.wait(job.id, timeout=300, interval=0.2)
    assert job.status == "done", job.error + read_log_tail(fresh.folder(job))
    return job


def test_sigkill_during_encoding_then_retry(built, monkeypatch):
    from engine.stages import encode_stage

    before = snapshot(built)
    spec = encode_stage.prepare(built, EncodeConfig(encoder="pca", dim=3, image_size=8, batch_size=8))
    job, fresh = _kill_mid_job(built, spec, monkeypatch, hold_at=8)  # 8 of 24 encoded
    assert len(built.list(Encoding)) == before["rows"]["encoding"]  # nothing half-ingested
    assert_repairable(built)
    job = _retry(built, fresh, job)
    enc = built.get(Encoding, job.result_id)
    assert built.embeddings(enc).shape == (24, 3) and np.isfinite(built.embeddings(enc)).all()
    assert len(built.list(Encoding)) == before["rows"]["encoding"] + 1
    assert_repairable(built)
    assert built.list(Job)[-1].status == "done"


def test_sigkill_during_generation_resumes_without_redoing_written_images(built, monkeypatch):
    from engine.stages import generate_stage

    before = snapshot(built)
    spec = generate_stage.prepare(built, GenerateConfig(variations=2, steps=2, batch_size=4),
                            "tiny-model")
    job, fresh = _kill_mid_job(built, spec, monkeypatch, hold_at=4)  # first 4 of 36 written
    assert built.list(Generation) == [] and snapshot(built)["rows"]["sample"] == 0
    out = built.abs(f"generations/{spec.params['generation_id']}")
    assert len(list(out.rglob("*.png"))) == 4
    assert_repairable(built)  # the half-written generation folder belongs to the job
    assert out.is_dir()
    job = _retry(built, fresh, job)
    assert "generating 32 of 36 images (4 already written)" in read_log_tail(fresh.folder(job))
    gen = built.get(Generation, job.result_id)
    assert gen.count == 36 and len(built.samples(gen.id)) == 36
    assert snapshot(built)["rows"]["image"] == before["rows"]["image"]
    assert_repairable(built)


def test_sigkill_during_evaluation_resumes_from_its_epoch_checkpoint(built, monkeypatch):
    from engine.stages import evaluate_stage

    config = EvalConfig(epochs=3, batch_size=8, image_size=8, warmup_epochs=0)
    spec = evaluate_stage.prepare(built, config, mix="real")
    # 18 training images, batch 8: 3 steps an epoch; step 3 = the end of epoch 1 (checkpointed)
    job, fresh = _kill_mid_job(built, spec, monkeypatch, hold_at=3)
    ev = built.get(Evaluation, spec.params["evaluation_id"])
    assert ev.status == "interrupted" and ev.top1 is None
    assert (built.abs(f"evaluations/{ev.id}") / "checkpoint.pt").is_file()
    assert_repairable(built)
    job = _retry(built, fresh, job)
    assert "resuming classifier training" in read_log_tail(fresh.folder(job))
    ev = built.get(Evaluation, ev.id)
    assert ev.status == "done" and 0.0 <= ev.top1 <= 100.0
    assert_repairable(built)


def test_reboot_mid_training_with_a_queued_job(built, monkeypatch):
    """All processes die at once (worker and owner); the project reopens, check repairs it,
    the training resumes from its last checkpoint and the queued job still runs."""
    from engine.stages import encode_stage, train_stage

    config = TrainConfig(steps=20, checkpoint_every=3, **TRAIN)
    spec = train_stage.prepare(built, config, encoder="pca", name="rebooted")
    monkeypatch.setenv(FAULT_HOLD_ENV, "10")
    jobs = JobManager(built)
    job = jobs.submit(spec)
    queued = jobs.submit(encode_stage.prepare(built, EncodeConfig(encoder="class")))
    assert built.get(Job, queued.id).status == "queued"
    folder = jobs.folder(job)
    wait_for(lambda: (folder / FAULT_HOLD_FILE).exists(), 180, "the training to reach step 10")
    # the "reboot": every worker killed, the owner gone without closing anything cleanly
    kill_group(job.pid)
    monkeypatch.delenv(FAULT_HOLD_ENV)
    del jobs
    path = built.path
    built.close()
    with Project(path) as project:
        report = assert_repairable(project)
        assert [p["kind"] for p in report.problems] == ["stale_job"]
        assert project.get(Job, job.id).status == "interrupted"
        assert project.get(Model, "rebooted").status == "interrupted"
        fresh = JobManager(project)
        done = _retry(project, fresh, project.get(Job, job.id))
        resumed = [e for e in read_progress(fresh.folder(done)) if "resumed" in e["message"]]
        assert len(resumed) == 1 and resumed[0]["step"] == 9  # the checkpoint before step 10
        assert project.get(Model, "rebooted").steps_done == 20
        assert fresh.wait(queued.id, timeout=120).status == "done"
        assert_repairable(project)


def test_disk_full_in_a_worker_fails_clearly_and_retry_works(built, tiny_tmpfs):
    """The generation folder sits on a 64 KiB tmpfs: the worker hits ENOSPC while writing
    its images; the job fails with one sentence; with space again, a retry finishes."""
    from engine.stages import generate_stage

    before = snapshot(built)
    spec = generate_stage.prepare(built, GenerateConfig(variations=4, steps=1, batch_size=64),
                            "tiny-model")
    out = built.abs(f"generations/{spec.params['generation_id']}")
    # move the generation's folder onto the small disk, leaving a link in its place
    for f in out.iterdir():
        shutil.copy2(f, tiny_tmpfs / f.name)
    shutil.rmtree(out)
    out.symlink_to(tiny_tmpfs, target_is_directory=True)
    jobs = JobManager(built)
    job = jobs.wait(jobs.submit(spec).id, timeout=180, interval=0.2)
    # one plain sentence saying what to do (engine.errors.describe_os_error; Pillow's error
    # names no file)
    assert job.status == "failed" and job.error.startswith("no space left on device"), \
        job.error
    assert job.error.endswith("(the disk is full: free some space and retry)")
    assert "\n" not in job.error and "Errno" not in job.error
    assert built.list(Generation) == []
    assert snapshot(built)["rows"] == {**before["rows"], "job": before["rows"]["job"] + 1}
    # space comes back: the folder moves to the big disk, keeping what was written
    out.unlink()
    shutil.copytree(tiny_tmpfs, out)
    assert_repairable(built)  # stray temp PNGs of the failed write are deleted
    job = _retry(built, jobs, job)
    gen = built.get(Generation, job.result_id)
    assert gen.count == 18 * 4 and len(built.samples(gen.id)) == 18 * 4
    assert_repairable(built)
