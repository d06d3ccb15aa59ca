"""A train job on several processes: torchrun, 2 gloo ranks on the CPU, a tiny 8x8 RCDM on
the training split of a tiny imported dataset, run through the JobManager."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_folder
from safetensors.torch import load_file

from engine.config import EncodeConfig, ImportConfig, TrainConfig
from engine.errors import Cancelled, InvalidConfigError, JobError
from engine.jobs import JobManager
from engine.progress import CancelToken
from engine.project import Job, Model
from engine.rcdm.model import load_rcdm
from engine.stages import encode_stage, train_stage
from studio.cli import build_parser

pytestmark = pytest.mark.usefixtures("one_thread")

# Two processes and one process with grad_accum=2 run the same micro-batches (same shapes, so
# the same kernels on any CPU); DDP's sum of two gradients does not depend on their order and
# its halving is exact: the weights agree exactly (0.0 measured). The 1e-6 bounds (a thousandth
# of one AdamW step at lr 1e-3) need no scale of their own, unlike the classifier's
# (tests/test_evaluate_ddp.py: its BatchNorm statistics are summed in another order).
# batch 16: each of 2 processes takes 8 rows of every step's batch; warm-up 2 steps
TINY = TrainConfig(image_size=8, block_channels=(8, 16), cross_attention_dim=16,
                   attention_head_dim=8, cond_tokens=2, steps=4, batch_size=16, warmup_steps=2,
                   checkpoint_every=1000, preview_every=2, learning_rate=1e-3, hflip=True,
                   cond_dropout=0.3, min_snr_gamma=5.0)


@pytest.fixture(autouse=True)
def _one_thread_per_rank(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2 ranks on a busy 2-core machine


@pytest.fixture
def dataset(project, tiny_folder):
    """The tiny ImageFolder (24 images, 18 in the training split) with a 5-d PCA encoding."""

    ds = import_folder(project, tiny_folder, "tiny", ImportConfig(test_fraction=0.25))
    JobManager(project).run_inline(encode_stage.prepare(
        project, EncodeConfig(encoder="pca", dim=5, image_size=8), dataset_ref=ds.id))
    return ds


def _weights(model_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir.parent / "checkpoint" / name))


def _max_diff(a: dict, b: dict) -> float:
    """The largest difference between two runs' weights."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_process_job_matches_one(project, dataset):
    """The job with processes=2 ends done, its model trained on the training split, with
    the weights of a one-process job whose batch is split the same way (2 micro-batches)."""
    jobs = JobManager(project)
    events = []
    ddp_job = jobs.run_inline(train_stage.prepare(project, TINY.replace(processes=2), dataset.id,
                                            encoder="pca", name="ddp"), progress=events.append)
    single_job = jobs.run_inline(train_stage.prepare(project, TINY.replace(grad_accum=2), dataset.id,
                                               encoder="pca", name="single"))
    assert ddp_job.status == single_job.status == "done"
    ddp, single = project.get(Model, "ddp"), project.get(Model, "single")
    assert ddp.status == "trained" and ddp.steps_done == 4
    assert ddp.final_loss == pytest.approx(single.final_loss, rel=1e-5)
    ddp_dir, single_dir = project.abs(ddp.checkpoint), project.abs(single.checkpoint)
    for name in ("model.safetensors", "ema.safetensors"):
        assert _max_diff(_weights(ddp_dir, name), _weights(single_dir, name)) < 1e-6
    _, _, extra = load_rcdm(ddp_dir)
    assert extra["world_size"] == 2 and extra["num_images"] == dataset.num_train
    assert extra["model_id"] == ddp.id and extra["launcher"] == "engine.rcdm.training_ranks"
    # rank 0's loss curve and previews reached the job's progress
    train_events = [e for e in events if e.stage == "train"]
    assert [e.step for e in train_events if e.step == 4] == [4]
    assert all("loss" in e.metrics for e in train_events if e.step)
    previews = [e.preview for e in train_events if e.preview]
    assert len(previews) == 2 and all(Path(p).is_file() for p in previews)
    lines = (project.abs(ddp_job.folder) / "progress.jsonl").read_text().splitlines()
    assert any(json.loads(line).get("preview") for line in lines)


def test_job_params_hold_two_slots(project, dataset):
    """A processes=2 job holds 2 of max_running=2 slots: a 1-process job waits behind it."""
    jobs = JobManager(project, max_running=2)
    wide = jobs.create(train_stage.prepare(project, TINY.replace(processes=2), dataset.id,
                                     encoder="pca", name="wide"))
    assert json.loads((jobs.folder(wide) / "spec.json").read_text())["params"]["processes"] == 2
    # mark it running in a live process (this one) without starting a worker
    project.update(Job, wide.id, status="running", pid=os.getpid())
    narrow = jobs.create(train_stage.prepare(project, TINY, dataset.id, encoder="pca", name="narrow"))
    jobs.poll()
    assert project.get(Job, narrow.id).status == "queued"
    assert jobs._slots(project.get(Job, wide.id)) == 2 and jobs._slots(narrow) == 1


def test_processes_option_is_validated():
    with pytest.raises(InvalidConfigError, match="processes"):
        TrainConfig(processes=0)
    with pytest.raises(InvalidConfigError, match="processes x grad_accum"):
        TrainConfig(batch_size=6, processes=2, grad_accum=2)
    args = build_parser().parse_args(["train", "--project", "p", "--processes", "2"])
    assert args.processes == 2


def test_failing_processes_report_the_log_tail(project, dataset):
    """Ranks that fail (NaN representations) make the job fail with their log's end; the
    model row is marked failed."""
    spec = train_stage.prepare(project, TINY.replace(processes=2), dataset.id, encoder="pca",
                         name="bad")
    cond_path = Path(spec.params["cond_path"])
    cond = np.load(cond_path)
    cond[spec.params["train_idx"][0], 0] = np.nan
    np.save(cond_path, cond)
    with pytest.raises(JobError) as info:
        JobManager(project).run_inline(spec)
    message = str(info.value)
    assert "on 2 processes failed (torchrun exit code" in message
    assert "cond contains NaN or inf values" in message  # from the ranks' log
    assert project.get(Model, "bad").status == "failed"


def test_cancel_then_resume(project, dataset):
    """Cancel stops both ranks after a step (checkpoint kept, model row cancelled); the
    same job run again resumes from that checkpoint and finishes."""
    config = TINY.replace(processes=2, steps=80, preview_every=1000)  # ~0.1 s a step
    spec = train_stage.prepare(project, config, dataset.id, encoder="pca", name="stop")
    jobs = JobManager(project)
    cancel = CancelToken()

    def stop_at_first_step(event):
        if event.stage == "train" and event.step > 0:
            cancel.cancel()

    with pytest.raises(Cancelled):
        jobs.run_inline(spec, progress=stop_at_first_step, cancel=cancel)
    assert project.get(Model, "stop").status == "cancelled"
    out = Path(spec.params["out_dir"])
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert 0 < state["step"] < config.steps and state["world_size"] == 2
    jobs.run_inline(spec)  # the retry: torchrun again in the same run folder
    model = project.get(Model, "stop")
    assert model.status == "trained" and model.steps_done == config.steps
    log = (out / "launch" / "log.txt").read_text()
    assert f"at step {state['step']}" in log and "resumed training" in log


def test_latent_rows_and_cache_beside_the_pixels(tmp_path: Path):
    """launch_train_rcdm on rows ``index`` of a latent dataset: the latents of all N images are
    cached beside the pixel cache (not in the run folder), and the 2 processes train what
    one process trains on those rows (cond rows aligned with the pixel rows)."""
    from diffusers import AutoencoderKL

    from engine.rcdm.latent import cached_latents
    from engine.rcdm.training import train_rcdm
    from engine.rcdm.training_ranks import launch_train_rcdm

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                        layers_per_block=1, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
    cond = rng.normal(size=(10, 5)).astype(np.float32)
    data = tmp_path / "dataset"
    data.mkdir()
    np.save(data / "pixels_16.npy", pixels)
    np.save(data / "cond.npy", cond)
    idx = np.array([7, 1, 2, 5, 9, 0], dtype=np.int64)
    config = TINY.replace(space="latent", vae_id=str(tmp_path / "vae"), image_size=16,
                          batch_size=4, preview_every=1000)
    result = launch_train_rcdm(data / "pixels_16.npy", data / "cond.npy",
                               config.replace(processes=2), tmp_path / "ddp", index=idx)
    assert result["world_size"] == 2 and result["steps_done"] == 4
    assert len(list(data.glob("latents_*.npy"))) == 2  # the images and their mirror images
    assert not (tmp_path / "ddp" / "latents").exists()
    latents = cached_latents(pixels, config.vae_id, data, flip=True)
    assert len(latents.raw) == len(pixels)
    train_rcdm(pixels[idx], cond[idx], config.replace(grad_accum=2), tmp_path / "single",
               latents=latents.subset(idx))
    ddp_dir, single_dir = tmp_path / "ddp" / "model", tmp_path / "single" / "model"
    for name in ("model.safetensors", "ema.safetensors"):
        assert _max_diff(_weights(ddp_dir, name), _weights(single_dir, name)) < 1e-6


def test_a_one_process_checkpoint_resumes_on_two(project, dataset, tmp_path):
    """More GPUs later: a run checkpointed by one process continues on two (the same
    recipe, the batch split differently), from its step, to the new end."""
    from engine.stages.train_stage import run

    jobs = JobManager(project)
    spec = train_stage.prepare(project, TINY.replace(steps=2), dataset.id, encoder="pca",
                         name="grow")
    assert jobs.run_inline(spec).status == "done"
    params = dict(spec.params, config=TINY.replace(steps=4, processes=2).to_dict(),
                  processes=2)
    out = run(params, tmp_path, lambda e: None, CancelToken())
    assert out["steps_done"] == 4 and np.isfinite(out["final_loss"])
    log = (Path(params["out_dir"]) / "launch" / "log.txt").read_text()
    assert "resumed training" in log and "at step 2" in log
    state = torch.load(Path(params["out_dir"]) / "checkpoint" / "state.pt", weights_only=True)
    assert (state["step"], state["world_size"]) == (4, 2)
