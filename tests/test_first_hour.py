"""A new user's first hour (issue 16): the quick preset, the time estimate before training,
a header that follows the running job, a second identical encoding refused, and the Generate
picker usable before a model exists, its picks kept across reloads.

The studio's handlers are called on a real project (``StudioContext``) with tiny real
datasets; jobs are created or run inline, no worker process is started.
"""

from __future__ import annotations

import json
import time

import gradio as gr
import pytest
from conftest import import_folder, write_tiny_folder

from engine.config import EncodeConfig, ImportConfig, TrainConfig
from engine.jobs import JobManager


@pytest.fixture
def ctx(tmp_path):
    """A studio context on a project holding a tiny dataset encoded with PCA."""
    from engine.stages import encode_stage
    from studio.context import StudioContext

    context = StudioContext(tmp_path / "first")
    ds = import_folder(context.project, write_tiny_folder(tmp_path / "img", per_class=20), "tiny",
                       ImportConfig(test_fraction=0.25))
    JobManager(context.project).run_inline(encode_stage.prepare(
        context.project, EncodeConfig(encoder="pca", dim=8, image_size=16), dataset_ref=ds.id))
    context.dataset_id = ds.id
    yield context
    context.close()


# ---------------------------------------------------------------------- the quick preset


def test_quick_preset_is_the_quick_demo_and_the_cpu_default(tmp_path, capsys):
    from engine import settings
    from engine.demo import DemoConfig
    from engine.project import Model, Project
    from engine.rcdm.presets import preset_config, preset_parameters
    from studio.cli import build_parser, main
    from studio.tabs import train_tab

    # one definition: the quick demo trains the quick preset (0.27 M parameters, 400 steps)
    assert preset_config("quick") == DemoConfig.quick().train
    assert (preset_config("quick").steps, preset_config("quick").batch_size) == (400, 64)
    assert 250_000 < preset_parameters("quick", 32) < 300_000 < 1_000_000 < \
        preset_parameters("tiny-cpu", 32)
    # on a machine without a GPU the Train tab starts on it, with its steps and batch
    cpu = {"cuda": False, "gpu": "", "gpu_mem_gb": 0.0, "ram_gb": 8.0, "cpus": 2}
    assert (settings.machine_defaults(cpu)["train_steps"],
            settings.machine_defaults(cpu)["train_batch"]) == (400, 64)
    if not settings.machine_profile()["cuda"]:
        assert train_tab.default_preset() == "quick"
        assert train_tab.Advanced().preset == "quick"
    assert train_tab.preset_form("quick")["steps"] == 400
    assert "quick" in [v for _, v in train_tab.PRESET_LABELS]
    # the command line: train --preset quick trains the quick denoiser
    assert build_parser().parse_args(["train", "--project", "p", "--preset", "quick"]).preset \
        == "quick"
    proj = str(tmp_path / "cli")
    folder = write_tiny_folder(tmp_path / "img", per_class=20)
    assert main(["import", "--project", proj, "--name", "tiny", str(folder)]) == 0
    assert main(["encode", "--project", proj, "--encoder", "pca"]) == 0
    assert main(["train", "--project", proj, "--preset", "quick", "--steps", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with Project(tmp_path / "cli") as p:
        cfg = json.loads(p.get(Model, out["id"]).config_json)
    assert (cfg["block_channels"], cfg["batch_size"], cfg["steps"]) == ([16, 32], 64, 2)


# ---------------------------------------------------------------------- the time estimate


def test_seconds_per_step_is_measured_once_then_read_from_the_cache(tmp_path):
    from engine.errors import InvalidConfigError
    from engine.rcdm import calibration

    config = TrainConfig(block_channels=(8, 16), batch_size=8, cross_attention_dim=16,
                         attention_head_dim=8, steps=1000)
    cache = tmp_path / "cache" / "step_times.json"
    seconds, measured = calibration.seconds_per_step(config, 8, cache)
    assert measured and 0 < seconds < 60
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["seconds_per_step"] == seconds
    # the same machine and model cost: read back, not measured; the run's length is not in
    # the key, the batch is
    assert calibration.seconds_per_step(config.replace(steps=5), 8, cache) == (seconds, False)
    assert calibration.cached_seconds(config.replace(batch_size=16), 8, cache) is None
    # the run: its steps plus previews and checkpoints at about 3 steps each
    run = config.replace(steps=100, preview_every=50, checkpoint_every=50)
    assert calibration.estimate(run, 0.5) == pytest.approx(0.5 * (100 + 3 * (3 + 3)))
    # a latent run is not timed here (its VAE encoding is not part of a step)
    with pytest.raises(InvalidConfigError, match="latent"):
        calibration.seconds_per_step(config.replace(space="latent"), 8, cache)
    # a measurement older than a week is taken again
    data = json.loads(cache.read_text())
    for entry in data.values():
        entry["measured_at"] -= calibration.MAX_AGE_SECONDS + 1
    cache.write_text(json.dumps(data))
    assert calibration.cached_seconds(config, 8, cache) is None
    # a broken cache file is measured over, not an error
    cache.write_text("{not json")
    assert calibration.seconds_per_step(config, 8, cache)[1] is True


def test_train_tab_shows_the_estimate_before_the_click_and_warns_when_long(ctx, monkeypatch):
    from engine.project import Job
    from engine.rcdm import calibration
    from studio.choices import studio_cache
    from studio.tabs import train_tab

    quick = train_tab.Advanced(preset="quick")
    # batch 8 keeps the measurement short on a busy test machine
    text = train_tab.time_estimate(ctx, ctx.dataset_id, "pca", 400, 8, 2e-3, quick)
    assert "Estimated time on this machine: " in text and "about " in text
    assert "400 steps ×" in text and "measured on this machine with 4 steps" in text
    assert (studio_cache() / "step_times.json").exists()

    # the same model, a million steps: read from the cache (nothing measured), and a warning
    def measure(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(calibration, "measure_seconds", measure)
    long = train_tab.on_estimate(ctx, ctx.dataset_id, "pca", 1_000_000, 8, 2e-3, "", "quick")
    assert 'class="status-warn"' in long and "a long run" in long and " h " in long
    # what cannot be estimated says so, in the same place; nothing is queued
    assert "No time estimate for VAE latents" in train_tab.on_estimate(
        ctx, ctx.dataset_id, "pca", 400, 8, 2e-3, "", "quick", "latent")
    assert "steps must be &gt;= 1" in train_tab.on_estimate(
        ctx, ctx.dataset_id, "pca", 0, 8, 2e-3, "", "quick")
    if not train_tab.machine_profile()["cuda"]:
        assert "sized for a GPU" in train_tab.on_estimate(
            ctx, ctx.dataset_id, "pca", 400, 16, 1e-4, "", "imagenet256")
    assert ctx.project.list(Job, kind="train") == []


# ---------------------------------------------------------------------- the header


def test_header_follows_a_running_training_job_and_never_runs_ahead(ctx):
    from engine.project import Job, utcnow
    from engine.stages import train_stage
    from studio.tabs import header_tab

    html = header_tab.header_html(ctx)
    assert "Next: train an RCDM in the Train tab" in html
    assert "a minute" not in html  # the encode hint no longer guesses a duration
    config = TrainConfig(steps=400, batch_size=8, block_channels=(8, 16))
    job = ctx.jobs.create(train_stage.prepare(ctx.project, config, ctx.dataset_id,
                                              encoder="pca"))
    html = header_tab.header_html(ctx)
    assert "Next: training is queued" in html and "pick real images" not in html
    # running, 120 of 400 steps done: its progress, not the step after it
    started = time.time() - 60
    ctx.project.update(Job, job.id, status="running", started_at=utcnow())
    folder = ctx.job_folder(job)
    with open(folder / "progress.jsonl", "a") as f:
        f.write(json.dumps({"stage": "train", "step": 120, "total": 400,
                            "time": started + 60, "metrics": {"loss": 0.5}}) + "\n")
    html = header_tab.header_html(ctx)
    assert "Next: training is running: 30 %" in html and "pick real images" not in html
    assert '<span class="step running"><b>…</b> Train</span>' in html
    assert '<span class="step todo"><b>4</b> Generate</span>' in html
    assert header_tab.tick(ctx) == html  # the timer redraws it while the job runs
    ctx.project.update(Job, job.id, status="cancelled")
    assert header_tab.tick(ctx) is not html and "Next: train an RCDM" in \
        header_tab.header_html(ctx)


def test_header_follows_an_import_in_a_new_project(tmp_path):
    from engine.stages import import_stage
    from studio.context import StudioContext
    from studio.tabs import header_tab

    ctx = StudioContext(tmp_path / "new")
    try:
        assert "Next: import the demo digits" in header_tab.header_html(ctx)
        ctx.jobs.create(import_stage.prepare(ctx.project, None, "digits", demo=True))
        html = header_tab.header_html(ctx)
        assert "Next: the import is queued" in html
        assert '<span class="step running"><b>…</b> Data</span>' in html
        assert '<span class="step todo"><b>2</b> Encode</span>' in html
    finally:
        ctx.close()


# ---------------------------------------------------------------------- encode twice


def test_a_second_identical_encoding_is_refused_and_names_the_first(ctx):
    from engine.errors import InvalidConfigError
    from engine.project import Encoding, Job
    from engine.stages import encode_stage
    from studio.tabs import train_tab

    (enc,) = ctx.project.list(Encoding)
    assert encode_stage.identical(ctx.project, EncodeConfig.from_dict(enc.config),
                                  ctx.dataset_id) == enc.id
    # what the Encode with PCA button asks for: queued once, then a second click names the
    # job that will make it, and once it is done, the encoding
    clicked = EncodeConfig(encoder="pca", image_size=16, device="cpu")
    assert encode_stage.identical(ctx.project, clicked, ctx.dataset_id) is None
    job = ctx.jobs.create(encode_stage.prepare(ctx.project, clicked, dataset_ref=ctx.dataset_id))
    jobs_before = len(ctx.project.list(Job))
    with pytest.raises(InvalidConfigError, match=f"being made by job: {job.id}"):
        train_tab.encode(ctx, ctx.dataset_id, "pca")
    status, _ = train_tab.on_encode(ctx, ctx.dataset_id, "pca")  # the page's message
    assert f"an identical encoding is being made by job: {job.id}" in status
    ctx.project.update(Job, job.id, status="cancelled")
    made = JobManager(ctx.project).run_inline(encode_stage.prepare(
        ctx.project, clicked, dataset_ref=ctx.dataset_id)).result_id
    with pytest.raises(InvalidConfigError, match=f"an identical encoding exists: {made}"):
        train_tab.encode(ctx, ctx.dataset_id, "pca")
    assert len(ctx.project.list(Job)) == jobs_before + 1  # the inline run only
    # another size is another encoding: not refused by this check
    assert encode_stage.identical(ctx.project, clicked.replace(image_size=8),
                                  ctx.dataset_id) is None


# ---------------------------------------------------------------------- the Generate picker


def test_generate_picker_shows_images_before_a_model_and_keeps_picks(ctx):
    from studio.tabs import generate_tab

    cls, items, ids, page, selected, picked, info, note = generate_tab.show_source(
        ctx, None, ctx.dataset_id)
    assert len(items) == len(ids) > 0 and page == 1 and selected == [] and picked == []
    assert "generating needs a model trained in the Train tab" in note
    # two clicks select two images; they are kept in the project, not only in the page
    out = generate_tab.toggle(ctx, None, ctx.dataset_id, ids, [],
                              gr.SelectData(None, {"index": 0, "value": None}))
    out = generate_tab.toggle(ctx, None, ctx.dataset_id, ids, out[0],
                              gr.SelectData(None, {"index": 2, "value": None}))
    assert out[0] == [ids[0], ids[2]] and out[2] == "**2** image(s) selected"
    assert out[3] == "selected images"
    # a reload: the same picks come back with the picker
    reloaded = generate_tab.show_source(ctx, None, ctx.dataset_id)
    assert reloaded[4] == [ids[0], ids[2]] and len(reloaded[5]) == 2
    # a click on a picked image unselects it; Clear empties the kept picks
    out = generate_tab.toggle(ctx, None, ctx.dataset_id, ids, reloaded[4],
                              gr.SelectData(None, {"index": 0, "value": None}))
    assert generate_tab.load_picks(ctx, ctx.dataset_id) == [ids[2]]
    generate_tab.clear_selection(ctx, None, ctx.dataset_id)
    assert generate_tab.show_source(ctx, None, ctx.dataset_id)[4] == []
