"""Background jobs: real worker processes, progress files, ingest, cancel, reconcile, retry."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import import_folder

from engine.config import EncodeConfig, ImportConfig, TrainConfig
from engine.errors import JobError
from engine.jobs import JobManager, read_progress
from engine.project import Dataset, Encoding, Job, Model


@pytest.fixture
def tiny_project(project, tiny_folder):

    import_folder(project, tiny_folder, "tiny", ImportConfig(test_fraction=0.25))
    return project


def test_encode_job_runs_in_a_worker_process_and_is_ingested(tiny_project):
    from engine.stages import encode_stage

    jobs = JobManager(tiny_project)
    job = jobs.submit(encode_stage.prepare(tiny_project, EncodeConfig(encoder="pca", dim=4,
                                                                image_size=8)))
    assert job.status == "running" and job.pid and job.pid != os.getpid()
    job = jobs.wait(job.id, timeout=120)
    assert job.status == "done", job.error
    enc = tiny_project.get(Encoding, job.result_id)
    assert (enc.count, enc.dim, enc.encoder, enc.offline) == (24, 4, "pca", True)
    assert tiny_project.embeddings(enc).shape == (24, 4)
    folder = jobs.folder(job)
    assert (folder / "spec.json").exists() and (folder / "log.txt").exists()
    assert read_progress(folder)[-1]["step"] == read_progress(folder)[-1]["total"]
    # ingest is not repeated by later polls
    jobs.poll()
    assert len(tiny_project.list(Encoding)) == 1


def test_queue_respects_the_concurrency_limit(tiny_project):
    from engine.stages import encode_stage

    jobs = JobManager(tiny_project, max_running=1)
    a = jobs.submit(encode_stage.prepare(tiny_project, EncodeConfig(encoder="pca", dim=3, image_size=8)))
    b = jobs.submit(encode_stage.prepare(tiny_project, EncodeConfig(encoder="class")))
    assert tiny_project.get(Job, b.id).status == "queued"
    assert jobs.wait(a.id, timeout=120).status == "done"
    assert jobs.wait(b.id, timeout=120).status == "done"


def _long_training(project, steps: int = 100_000):
    from engine.stages import encode_stage, train_stage

    jobs = JobManager(project)
    jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="class")))
    config = TrainConfig(image_size=8, block_channels=(8, 16), cross_attention_dim=16,
                         attention_head_dim=8, batch_size=4, steps=steps,
                         checkpoint_every=5, preview_every=10_000, warmup_steps=1)
    return jobs, train_stage.prepare(project, config, encoder="class", name="long")


def _wait_for_progress(jobs, job, min_step: int = 6, timeout: float = 120) -> None:
    start = time.time()
    while time.time() - start < timeout:
        # the training's steps (the worker may first build the pixel cache: stage "pixels")
        events = [e for e in read_progress(jobs.folder(job)) if e["stage"] == "train"]
        if events and events[-1]["step"] >= min_step:
            return
        time.sleep(0.3)
    raise AssertionError(f"no progress: {(jobs.folder(job) / 'log.txt').read_text()[-2000:]}")


def test_cancel_stops_the_worker_and_keeps_the_rows_consistent(tiny_project):
    jobs, spec = _long_training(tiny_project)
    job = jobs.submit(spec)
    _wait_for_progress(jobs, job)
    # the worker runs below the studio's CPU priority, so the page stays responsive
    assert os.getpriority(os.PRIO_PROCESS, job.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 10
    jobs.cancel(job.id)
    job = jobs.wait(job.id, timeout=60)
    assert job.status == "cancelled"
    model = tiny_project.get(Model, "long")
    assert model.status == "cancelled"
    assert (tiny_project.abs(f"models/{model.id}") / "checkpoint").exists()
    with pytest.raises(JobError, match="only queued or running"):
        jobs.cancel(job.id)


def test_killed_worker_becomes_interrupted_and_retry_resumes(tiny_project):
    jobs, spec = _long_training(tiny_project, steps=40)
    job = jobs.submit(spec)
    _wait_for_progress(jobs, job, min_step=11)
    os.killpg(job.pid, signal.SIGKILL)  # the machine "reboots" under the worker
    time.sleep(0.5)
    # a new owner (the studio restarting) reconciles the project
    fresh = JobManager(tiny_project)
    fresh.reconcile()
    job = tiny_project.get(Job, job.id)
    assert job.status == "interrupted" and "retry" in job.error
    assert tiny_project.get(Model, "long").status == "interrupted"
    fresh.retry(job.id)
    job = fresh.wait(job.id, timeout=300)
    assert job.status == "done", job.error
    resumed = [e for e in read_progress(fresh.folder(job)) if "resumed" in e["message"]]
    assert len(resumed) == 1, "the retry should resume from the checkpoint"
    assert resumed[0]["step"] >= 5 and resumed[0]["step"] % 5 == 0  # checkpoint_every=5
    model = tiny_project.get(Model, "long")
    assert model.status == "trained" and model.steps_done == 40


def test_failed_worker_reports_the_error(tiny_project, tmp_path):
    from engine.stages import encode_stage

    jobs = JobManager(tiny_project)
    spec = encode_stage.prepare(tiny_project, EncodeConfig(encoder="pca", dim=4, image_size=8))
    # an input disappears before the worker runs (the worker builds the pixel cache from it)
    ds = tiny_project.get(Dataset, "tiny")
    os.remove(tiny_project.abs(tiny_project.images(ds.id)["path"].iloc[0]))
    job = jobs.wait(jobs.submit(spec).id, timeout=120)
    assert job.status == "failed" and job.error
    assert json.loads((jobs.folder(job) / "status.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("value, step", [(None, 10), ("3", 3), ("0", 0), ("", 0), ("x", 0)])
def test_worker_priority_follows_the_environment(value, step):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RCDM_STUDIO_WORKER_NICE"}
    if value is not None:
        env["RCDM_STUDIO_WORKER_NICE"] = value
    out = subprocess.run([sys.executable, "-c",
                          "from engine.worker import lower_priority; print(lower_priority())"],
                         capture_output=True, text=True, env=env, check=True, timeout=60)
    assert int(out.stdout) == os.getpriority(os.PRIO_PROCESS, 0) + step
    assert ("not an integer" in out.stderr) == (value == "x")


def test_a_worker_gets_its_projects_hub_cache_and_no_login(tmp_path, monkeypatch):
    """Two projects open in one studio each give their workers their own model folder; the
    studio's login (RCDM_STUDIO_AUTH) never reaches a worker."""
    import subprocess

    from engine import settings
    from engine.project import Project
    from engine.stages import JobSpec

    seen, real_popen = [], subprocess.Popen

    def fake_popen(cmd, *args, **kwargs):  # a worker: record its environment, do not start it
        if "engine.worker" not in cmd:
            return real_popen(cmd, *args, **kwargs)
        seen.append(kwargs["env"])
        raise OSError("not started in this test")

    monkeypatch.setenv("RCDM_STUDIO_AUTH", "me:secret")
    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    for name in ("a", "b"):
        folder = tmp_path / f"models-{name}"
        folder.mkdir()
        with Project(tmp_path / name) as project:
            settings.save(project, {**settings.effective(project), "model_folder": str(folder)})
            job = JobManager(project).submit(JobSpec(kind="export", title="x", params={}))
            assert project.get(Job, job.id).status == "failed"
    assert [env["HF_HOME"] for env in seen] == [str(tmp_path / "models-a"),
                                                 str(tmp_path / "models-b")]
    assert all("RCDM_STUDIO_AUTH" not in env for env in seen)
