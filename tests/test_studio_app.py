"""The studio as a client sees it: launched on a free port, driven with gradio_client.

A tiny real pipeline (3 classes x 8 images, an RCDM of a few steps) is prepared with the
engine, then the studio is launched on that project and its endpoints are called: import
the demo, list datasets, move the band (counts change), save a selection, and errors that
reach the page as one readable message.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import import_folder, write_tiny_folder

from engine.config import EncodeConfig, GenerateConfig, ImportConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_project(path: Path, folder: Path) -> str:
    """Import, encode (pca), train, generate 2 variations, re-encode; returns the generation."""
    from engine.config import ImportConfig
    from engine.jobs import JobManager
    from engine.project import Project
    from engine.stages import encode_stage, generate_stage, train_stage

    with Project(path) as project:
        jobs = JobManager(project)
        ds = import_folder(project, folder, "tiny", ImportConfig(test_fraction=0.25))
        enc = EncodeConfig(encoder="pca", dim=8, image_size=16)
        jobs.run_inline(encode_stage.prepare(project, enc, dataset_ref=ds.id))
        cfg = TrainConfig(steps=3, batch_size=8, block_channels=(8, 16), cross_attention_dim=16,
                          attention_head_dim=8, checkpoint_every=100, preview_every=100,
                          warmup_steps=1)
        model = jobs.run_inline(train_stage.prepare(project, cfg, ds.id, encoder="pca")).result_id
        gen = jobs.run_inline(generate_stage.prepare(
            project, GenerateConfig(variations=2, steps=2), model)).result_id
        jobs.run_inline(encode_stage.prepare(project, enc, generation_ref=gen))
        return gen


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from gradio_client import Client

    from studio.app import close, launch

    root = tmp_path_factory.mktemp("studio")
    mp = pytest.MonkeyPatch()  # the recent list and new projects stay in the test folder
    mp.setenv("RCDM_STUDIO_HOME", str(root / "home"))
    mp.setenv("RCDM_STUDIO_PROJECTS", str(root / "projects"))
    path = root / "proj"
    gen_id = _prepare_project(path, write_tiny_folder(root / "tiny"))
    port = _free_port()
    blocks = launch(path, port=port, open_browser=False, prevent_thread_lock=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield blocks, client, gen_id, path
    close(blocks)
    mp.undo()


def _wait_for_job(ctx, job_id: str, timeout: float = 180.0):
    """Poll the jobs like the page's timer until ``job_id`` has ended."""
    import time

    from engine.project import Job

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ctx.poll()
        job = ctx.project.get(Job, job_id)
        if job.status not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def test_import_demo_then_list_datasets(studio):
    from engine.project import Dataset, Job
    from studio.tabs import data_tab

    blocks, client, _, _ = studio
    ctx = blocks.studio
    # the form's split options: test fraction, validation fraction, images per class
    # (the pending job id is page state: the API returns the status only)
    status = client.predict(0.2, 0.1, 25, api_name="/import_demo")
    assert "queued" in status and "Jobs panel" in status
    job = ctx.project.list(Job, kind="import")[-1]  # the first imported "tiny"
    pending = job.id
    assert job.kind == "import" and job.title == "Import the demo digits as digits"
    # the tab waits for the job; when it is done the dataset is selected and announced
    dropdown, still, _ = data_tab.refresh(ctx, None, pending)
    assert still in (pending, "")
    assert _wait_for_job(ctx, pending).status == "done"
    dropdown, still, status = data_tab.refresh(ctx, None, pending)
    ds = ctx.project.get(Dataset, ctx.project.get(Job, pending).result_id)
    assert still == "" and dropdown["value"] == ds.id
    assert ds.num_train == 250 and 170 <= ds.num_val <= 190 and 340 <= ds.num_test <= 380
    assert (f"imported digits: 1,797 images, 10 classes (250 train / {ds.num_val} val / "
            f"{ds.num_test} test)") in status
    assert (ds.config["train_per_class"], ds.config["val_fraction"]) == (25, 0.1)
    names = [label for label, _ in data_tab.dataset_choices(ctx)]
    assert names == ["tiny (24 images, 3 classes)", "digits (1797 images, 10 classes)"]
    assert [c[0] for c in dropdown["choices"]] == names
    # the summary counts every split, per class
    text, counts = data_tab.summary(ctx, ds.id)
    assert f"250 train / {ds.num_val} validation / {ds.num_test} held-out test" in text
    assert list(counts.columns) == ["class", "train", "val", "test", "unused"]
    assert (counts["train"] == 25).all()
    assert counts["unused"].sum() == 1797 - 250 - ds.num_val - ds.num_test
    # the same import again is refused with the engine's sentence, not a stack trace
    status = client.predict(0.2, 0, None, api_name="/import_demo")
    assert "status-error" in status and "already exists" in status
    assert "Traceback" not in status
    # a bad form value is refused before anything is queued
    status = client.predict(0.6, 0.5, None, api_name="/import_demo")
    assert "status-error" in status and "test_fraction + val_fraction" in status
    assert len(ctx.project.list(Job, kind="import")) == 2  # tiny, digits: no other queued


def test_import_form_values():
    from engine.errors import InvalidConfigError
    from studio.tabs import data_tab

    assert data_tab.import_config(0.2, None, None) == ImportConfig()
    assert data_tab.import_config(0.3, 0.1, 0).train_per_class is None
    cfg = data_tab.import_config(0.25, 0.15, 10.0)
    assert (cfg.test_fraction, cfg.val_fraction, cfg.train_per_class) == (0.25, 0.15, 10)
    with pytest.raises(InvalidConfigError, match="whole number, got 2.5"):
        data_tab.import_config(0.2, 0.1, 2.5)


def test_band_change_returns_counts(studio):
    _, client, gen_id, _ = studio
    # 24 images, 18 in the train split of 3 classes -> 6 sources x 2 variations per class
    plot, counts, text, *galleries = client.predict(gen_id, 0.25, 0.75, "real", "cosine",
                                                    api_name="/band")
    rows = counts["data"]
    cols = counts["headers"]
    total, kept = cols.index("total"), cols.index("kept")
    assert [r[total] for r in rows] == [12, 12, 12]
    assert [r[kept] for r in rows] == [6, 6, 6]  # the paper's middle: 2x -> 1x
    assert "Keeping **18** of 36" in text
    assert len(galleries) == 4 and all(len(g) <= 8 for g in galleries)
    _, counts, text, *_ = client.predict(gen_id, 0.0, 1.0, "real", "cosine", api_name="/band")
    assert [r[kept] for r in counts["data"]] == [12, 12, 12]
    _, counts, _, *_ = client.predict(gen_id, 0.0, 0.5, "generated", "euclidean",
                                      api_name="/band")
    assert [r[kept] for r in counts["data"]] == [6, 6, 6]


def test_save_selection_writes_a_row(studio):
    from engine.project import Selection

    blocks, client, gen_id, _ = studio
    status, table, name = client.predict(gen_id, 0.25, 0.75, "real", "cosine", "middle",
                                         api_name="/save_selection")
    assert "saved selection middle: 18 images" in status
    sel = blocks.studio.project.get(Selection, "middle")
    assert sel.count == 18 and sel.generation_id == gen_id
    assert "middle" in [r[0] for r in table["data"]]


def test_errors_reach_the_page_as_a_message(studio):
    _, client, gen_id, _ = studio
    # generate with no model chosen
    status, _ = client.predict(None, "selected images", 2, 2, "ddim", 5, 1.0, 0, "",
                               api_name="/generate")
    assert "no trained model" in status and "status-error" in status
    # a band whose low is not below its high
    _, _, text, *_ = client.predict(gen_id, 0.8, 0.2, "real", "cosine", api_name="/band")
    assert "must be below" in text
    # saving an empty band
    status, _, _ = client.predict(gen_id, 0.0, 0.01, "real", "cosine", "empty",
                                  api_name="/save_selection")
    assert "keeps no sample" in status


def test_pretrained_encoder_without_weights_says_what_to_download(studio, tmp_path,
                                                                  monkeypatch):
    from engine.project import Dataset, Job

    blocks, client, _, _ = studio
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub"))
    jobs_before = len(blocks.studio.project.list(Job))
    ds = blocks.studio.project.list(Dataset)[0]
    status, _ = client.predict(ds.id, "dinov2", "", api_name="/encode_other")
    assert "status-error" in status and "facebook/dinov2-base" in status
    assert "download" in status and "Traceback" not in status
    assert len(blocks.studio.project.list(Job)) == jobs_before  # nothing was queued


def test_locked_project_names_its_holder(tmp_path):
    from engine.project import Project

    with Project(tmp_path / "held"):
        out = subprocess.run(
            [sys.executable, "-m", "studio.cli", "--project", str(tmp_path / "held"),
             "--no-browser", "--port", str(_free_port())],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "is open in" in out.stderr and "Traceback" not in out.stderr


def test_generation_pages_and_provenance(studio):
    from studio.tabs import generate_tab

    blocks, _, gen_id, _ = studio
    ctx = blocks.studio
    items, text, ids, page = generate_tab.sample_page(ctx, gen_id, page=2, page_size=10)
    assert page == 2 and len(items) == 10 and len(ids) == 10 and "page 2 of 4" in text
    _, _, _, last = generate_tab.sample_page(ctx, gen_id, page=99, page_size=10)
    assert last == 4  # clamped
    path, md = generate_tab.sample_details(ctx, ids[0])
    assert Path(path).is_file()
    assert "variation of real image" in md and "model **" in md and "seed" in md


def test_generate_tab_interpolates_and_draws_from_class_distributions(studio):
    import json

    from engine.project import Generation, Job, Model, Sample
    from studio.tabs import generate_tab

    blocks, client, _, _ = studio
    ctx = blocks.studio
    model = next(m for m in ctx.project.list(Model) if m.status == "trained")
    train = ctx.project.images(model.dataset_id, split="train")
    a, b = train["id"].iloc[0], train["id"].iloc[-1]
    # interpolation needs exactly two selected images (the picker's state, not an API
    # input): refused with a sentence otherwise
    with pytest.raises(Exception, match="exactly two source images"):
        generate_tab.generate(ctx, model.id, "selected images", [a], 1, 1, "ddim", 2, 1.0, 0, "",
                         "interpolate", 3)
    job = generate_tab.generate(ctx, model.id, "selected images", [a, b], 1, 1, "ddim", 2, 1.0, 0,
                           "path", "interpolate", 3)
    assert job.status in ("queued", "running")
    # over HTTP as the page sends it: the mode and its fields follow the sampling inputs
    status, _ = client.predict(model.id, "N per class", 3, 2, "ddim", 2, 1.0, 0, "drawn",
                               "class_sample", 3, 2, 1.0, "diagonal", api_name="/generate")
    assert "submitted" in status, status
    for job in ctx.project.list(Job):
        if job.status in ("queued", "running", "ingesting"):
            assert ctx.jobs.wait(job.id, timeout=180).status == "done"
    path = ctx.project.get(Generation, "path")
    drawn = ctx.project.get(Generation, "drawn")
    assert path.count == 3 and drawn.count == 3 * 2 * 2  # 3 classes x 2 new x k=2
    cfg = json.loads(path.config_json)
    assert cfg["mode"] == "interpolate" and cfg["conditions"]["pair"] == [a, b]
    assert json.loads(drawn.config_json)["covariance"] == "diagonal"
    _, text, ids, _ = generate_tab.sample_page(ctx, path.id)
    assert "interpolation between two selected images" in text and len(ids) == 3
    _, md = generate_tab.sample_details(ctx, ids[1])
    assert "interpolation at t = 0.500" in md and a in md and b in md
    _, text, ids, _ = generate_tab.sample_page(ctx, drawn.id)
    assert "new draws from each class" in text
    _, md = generate_tab.sample_details(ctx, ids[0])
    first = ctx.project.get(Sample, ids[0])
    assert f"drawn from the distribution of class {first.class_name}" in md


def test_generate_tab_perturbation_slider_and_provenance(studio):
    import json

    from engine.errors import InvalidConfigError
    from engine.project import Generation, Job, Model, Sample
    from studio.tabs import generate_tab

    blocks, client, _, _ = studio
    ctx = blocks.studio
    model = next(m for m in ctx.project.list(Model) if m.status == "trained")
    with pytest.raises(InvalidConfigError, match=r"must be in \[0, 4\], got 4.5"):
        generate_tab.generate(ctx, model.id, "N per class", [], 1, 1, "ddim", 2, 1.0, 0, "",
                              perturb=4.5)
    # over HTTP as the page sends it: the slider's λ is the form's last input
    status, _ = client.predict(model.id, "N per class", 1, 2, "ddim", 2, 1.0, 7, "noisy",
                               "variations", 8, 10, 1.0, "ledoit_wolf", 0.75,
                               api_name="/generate")
    assert "submitted" in status and "perturbed by λ = 0.75" in status, status
    for job in ctx.project.list(Job):
        if job.status in ("queued", "running", "ingesting"):
            assert ctx.jobs.wait(job.id, timeout=180).status == "done"
    gen = ctx.project.get(Generation, "noisy")
    assert gen.count == 3 * 2 and json.loads(gen.config_json)["perturb"] == 0.75
    _, text, ids, _ = generate_tab.sample_page(ctx, gen.id)
    assert "perturbed, λ = 0.75" in text
    _, md = generate_tab.sample_details(ctx, ids[1])
    s = ctx.project.get(Sample, ids[1])
    assert "representation perturbed: λ = 0.75" in md and f"noise seed {s.seed}" in md
    assert "variation of real image" in md


def test_train_tab_advanced_options_latent_space_and_presets(studio, tmp_path):
    import json
    import math

    import torch
    from diffusers import AutoencoderKL

    from engine.errors import InvalidConfigError, WeightsNotFoundError
    from engine.project import Dataset, Job, Model
    from studio.tabs import train_tab

    blocks, client, _, _ = studio
    ctx = blocks.studio
    ds = next(d for d in ctx.project.list(Dataset) if d.name == "tiny")
    # the paper's preset fills the form from the dataset's size (125 epochs at batch 16)
    form = train_tab.preset_form("imagenet256", num_images=1000)
    assert (form["steps"], form["batch_size"], form["space"], form["image_size"],
            form["min_snr_gamma"]) == (math.ceil(125 * 1000 / 16), 16, "latent", 256, 5.0)
    # ... and is refused on a CPU, before anything is queued
    jobs_before = len(ctx.project.list(Job))
    with pytest.raises(InvalidConfigError, match="sized for a GPU"):
        train_tab.train(ctx, ds.id, "pca", 10, 16, 1e-4, "", train_tab.Advanced(
            preset="imagenet256", space="latent", image_size=256))
    # a latent run whose VAE folder is missing is refused with what to do, nothing queued
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        train_tab.train(ctx, ds.id, "pca", 2, 8, 1e-3, "", train_tab.Advanced(
            space="latent", vae_id=str(tmp_path / "no-vae")))
    assert len(ctx.project.list(Job)) == jobs_before
    # several processes: the job will run torchrun with that many ranks and hold that many
    # slots of the queue (the run itself: tests/test_rcdm_train_processes.py)
    cfg2 = train_tab.train_config(ctx, 4, 8, 1e-3, train_tab.Advanced(processes=2))
    assert (cfg2.processes, cfg2.batch_size) == (2, 8)
    # channels: the data decides (None) unless the form says greyscale or RGB
    assert train_tab.train_config(ctx, 4, 8, 1e-3, train_tab.Advanced()).channels is None
    assert train_tab.train_config(ctx, 4, 8, 1e-3, train_tab.Advanced(channels="1")).channels == 1
    with pytest.raises(InvalidConfigError, match="channels must be auto, 1 or 3"):
        train_tab.train_config(ctx, 4, 8, 1e-3, train_tab.Advanced(channels="2"))
    with pytest.raises(InvalidConfigError, match="batch_size"):
        train_tab.train_config(ctx, 4, 9, 1e-3, train_tab.Advanced(processes=2))
    # a tiny VAE saved like a hub folder: latent training with min-SNR and accumulation
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, sample_size=16,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                  layers_per_block=1, scaling_factor=0.5).save_pretrained(tmp_path / "vae")
    status, _ = client.predict(ds.id, "pca", 2, 8, 1e-3, "latent-run", "tiny-cpu", "latent",
                               16, str(tmp_path / "vae"), 5.0, 0.2, 2, api_name="/train")
    assert "submitted" in status, status
    model = ctx.project.get(Model, "latent-run")
    job = next(j for j in ctx.project.list(Job) if j.kind == "train" and
               j.status in ("queued", "running", "ingesting"))
    assert ctx.jobs.wait(job.id, timeout=300).status == "done"
    model = ctx.project.get(Model, model.id)
    cfg = json.loads(model.config_json)
    assert model.status == "trained"
    assert (cfg["space"], cfg["min_snr_gamma"], cfg["cond_dropout"], cfg["grad_accum"]) == \
        ("latent", 5.0, 0.2, 2)
    assert cfg["vae_id"] == str(tmp_path / "vae")


def test_settings_kept_in_the_project(studio, monkeypatch):
    from engine import settings
    from engine.errors import InvalidConfigError
    from studio.app import first_tab, remember_tab

    blocks, _, _, _ = studio
    ctx = blocks.studio
    defaults = settings.machine_defaults(settings.machine_profile())
    assert settings.effective(ctx.project)["train_steps"] == defaults["train_steps"]
    cache = ctx.project.assets.parent / "models-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", "unchanged")
    monkeypatch.setenv("HF_HUB_CACHE", "unchanged")
    before = ctx.project_key()
    form = dict(defaults, device="cpu", model_folder=str(cache), train_steps=40,
                train_batch=8, gen_steps=5)
    settings.save(ctx.project, form)
    assert settings.effective(ctx.project)["train_steps"] == 40
    assert settings.device(ctx.project) == "cpu"
    assert ctx.project.settings()["model_folder"] == str(cache)
    assert ctx.project_key() != before  # the forms reload their defaults
    import os

    assert os.environ["HF_HOME"] == str(cache)  # inherited by the workers it starts
    assert os.environ["HF_HUB_CACHE"] == str(cache / "hub")
    for bad in (dict(form, device="tpu"), dict(form, train_steps=0),
                dict(form, model_folder=str(cache / "missing")),
                dict(form, gen_sampler="euler??")):
        with pytest.raises(InvalidConfigError):
            settings.save(ctx.project, bad)
    # a 40-step run gets previews, checkpoints and warm-up inside its 40 steps
    from studio.tabs.train_tab import train_config

    cfg = train_config(ctx, 40, 8, 1e-3)
    assert cfg.preview_every <= 40 and cfg.checkpoint_every <= 40 and cfg.warmup_steps <= 4
    assert cfg.device == "cpu"
    # the studio reopens on the tab the user left
    assert first_tab(ctx) == "data"
    remember_tab(ctx, "curate")
    assert first_tab(ctx) == "curate"


def test_gallery_page_is_fast_at_12k_images(tmp_path):
    """Server time of one gallery page of a 12,000-image dataset (rows only: the page is
    read with LIMIT, thumbnails are files the browser fetches)."""
    import time

    import pandas as pd

    from engine.project import Dataset
    from studio.context import StudioContext
    from studio.tabs import data_tab

    ctx = StudioContext(tmp_path / "big")
    try:
        n, classes = 12_000, 10
        rows = pd.DataFrame({
            "id": [f"img{i:05d}" for i in range(n)], "dataset_id": "big", "idx": range(n),
            "path": [f"datasets/big/{i}.png" for i in range(n)],
            "thumb": [f"datasets/big/t{i}.png" for i in range(n)],
            "label": [i % classes for i in range(n)],
            "class_name": [f"c{i % classes}" for i in range(n)],
            "split": ["train" if i % 5 else "test" for i in range(n)],
            "width": 16, "height": 16, "source_path": ""})
        ctx.project.add_dataset(Dataset(id="big", name="big", num_classes=classes,
                                        num_images=n, num_train=9600, num_test=2400,
                                        classes_json="[]", skipped_json="[]",
                                        config_json="{}"), rows)
        data_tab.image_page(ctx, "big", None, "all", 1)  # warm-up
        times = []
        for page in (1, 57, 200):
            t0 = time.perf_counter()
            items, ids, p, pages = data_tab.image_page(ctx, "big", None, "all", page)
            times.append(time.perf_counter() - t0)
            assert pages == 200 and p == page and len(items) == 60
        items, ids, _, _ = data_tab.image_page(ctx, "big", None, "all", 1)
        assert {c for _, c in items} == {f"c{k}" for k in range(classes)}  # interleaved
        assert ids[:3] == ["img00000", "img00001", "img00002"]
        _, ids, _, pages = data_tab.image_page(ctx, "big", "c5", "test", 2)
        assert pages == 20 and len(ids) == 60  # 1,200 test images of c5
        assert all(int(i[3:]) % 10 == 5 for i in ids) and ids[0] == f"img{60 * 10 + 5:05d}"
        # timing is measured by benchmarks/studio_latency.py, not asserted here
        print(f"gallery page at 12k images: {1000 * max(times):.1f} ms (worst of 3)")
    finally:
        ctx.close()


def test_switch_project_in_the_running_app(studio):
    """Create a project from the picker, then open the first one again: the session that
    switched follows, the studio's default project and the other sessions do not."""
    from gradio_client import Client

    from studio.tabs import projects_tab

    blocks, client, _, path = studio
    ctx = blocks.studio
    default = ctx.project.path
    status, recent = client.predict("second", api_name="/create_project")
    assert "created second" in status
    second = projects_tab.projects_root() / "second.duckdb"
    assert recent["value"] == str(second)  # the client's session shows it...
    assert ctx.project.path == default  # ...the default (and so every new session) does not
    assert set(blocks.allowed_paths) >= {str(default.with_suffix(".assets").resolve()),
                                         str(second.with_suffix(".assets").resolve())}
    other = Client(client.src, verbose=False)  # a second visitor, its own session
    status, recent = other.predict(str(path), api_name="/open_project")
    assert "opened proj" in status and recent["value"] == str(default)
    status, _ = client.predict("second", api_name="/create_project")
    assert "already exists" in status
    status, recent = client.predict(str(path), api_name="/open_project")
    assert "opened proj" in status and recent["value"] == str(default)
    assert [p.stem for p in projects_tab.recent_projects()][:2] == ["proj", "second"]
    status, _ = client.predict("nope", api_name="/open_project")
    assert "status-error" in status and "no project 'nope'" in status
    assert second.resolve() not in ctx.open_paths()  # no session shows it: closed


def test_galleries_get_thumbnails_of_large_images(tmp_path):
    from PIL import Image

    from studio.ui import GALLERY_THUMB, gallery_path

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("RGB", (512, 384), (200, 10, 10)).save(big)
    Image.new("RGB", (16, 16), (10, 10, 200)).save(small)
    assert gallery_path(small) == str(small)  # small images are shown as they are
    thumb = gallery_path(big)
    assert thumb == str(tmp_path / ".thumbs" / "big.png")
    with Image.open(thumb) as img:
        assert max(img.size) == GALLERY_THUMB and img.size[0] > img.size[1]
    mtime = Path(thumb).stat().st_mtime_ns
    assert gallery_path(big) == thumb and Path(thumb).stat().st_mtime_ns == mtime  # reused
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert gallery_path(broken) == str(broken)


def test_preview_history_lists_every_grid_by_step(tmp_path):
    from studio.context import StudioContext
    from studio.tabs.train_tab import preview_history

    ctx = StudioContext(tmp_path / "p")
    try:
        assert preview_history(ctx, None) == []
        folder = ctx.project.assets / "models" / "mdl_x" / "previews"
        folder.mkdir(parents=True)
        for step in (400, 200, 1200):
            (folder / f"step_{step:06d}.png").write_bytes(b"png")
        (folder / "notes.txt").write_text("ignored")
        assert [c for _, c in preview_history(ctx, "mdl_x")] == ["step 200", "step 400",
                                                                  "step 1,200"]
    finally:
        ctx.close()


# ---------------------------------------------------------------------- the recipe search

# the search form's values (evaluate_tab.on_recipe after the model), at tiny sizes: one
# generation (1 variation), two bands, rungs of 1 and 2 epochs, one classical baseline
RECIPE_FORM = {"seeds": 2, "arch": "resnet_tiny", "epochs": 1, "bands": ["all", "middle"],
               "variations": [1], "guidance": "1", "perturb": "0", "separate_bn": False,
               "curriculum": False, "weights": [1.0], "budget": 2000, "rungs": "1, 2",
               "max_copy": None, "space_options": 'eta=2\nclassical=["mixup"]',
               "eval_options": "image_size=8\nwarmup_epochs=0\nbatch_size=16", "name": ""}


def _recipe_form(model_id: str, **changes) -> list:
    return [model_id, *{**RECIPE_FORM, **changes}.values()]


def _inline_jobs(project):
    """A JobManager whose poll runs each queued job in this process at once (the real stages,
    job folders and ingest; no worker process), and whose submit only queues: a search then
    moves only when the studio polls, as it does with worker processes."""
    import os

    from engine.jobs import JobManager, execute
    from engine.project import Job, utcnow

    class InlineJobs(JobManager):
        def submit(self, spec):
            return self.create(spec)

        def _start(self, job):
            self.project.update(Job, job.id, status="running", pid=os.getpid(),
                                started_at=utcnow())
            self._on_start(job)
            execute(self.folder(job))
            self._finish(self.project.get(Job, job.id))

    return InlineJobs(project, max_running=4)


def test_recipe_search_from_the_evaluate_tab_advances_by_polling(tmp_path, monkeypatch):
    """One click starts the search; only the jobs panel's polls move it on (validation
    first, the report on test); a search that cannot advance shows why without stopping the
    others; the view of the finished search; the winner exported in one click."""
    from engine import recipe
    from engine.errors import NotReadyError
    from engine.project import Evaluation, Experiment, Export, Job, Selection
    from studio import choices, context
    from studio.context import StudioContext
    from studio.tabs import evaluate_tab
    from tests.conftest import tiny_generation_project

    monkeypatch.setattr(context, "POLL_REUSE_S", 0.0)
    path, model_id = tiny_generation_project(tmp_path, val_fraction=0.25)
    ctx = StudioContext(path)
    ctx.current().jobs = _inline_jobs(ctx.project)  # this project's manager
    try:
        assert [v for _, v in evaluate_tab.recipe_models(ctx, None)["choices"]] == [model_id]
        # bad form values are refused, named, before anything is recorded
        for changes, message in (({"rungs": "2, 1"}, "rungs must increase strictly"),
                                 ({"guidance": "1, x"}, "guidance must be comma-separated"),
                                 ({"max_copy": 150}, "percentage in [0, 100)"),
                                 ({"bands": []}, "bands must list at least one value"),
                                 ({"space_options": "eta=1"}, "eta must be in [2, 10]")):
            status, *_ = evaluate_tab.on_recipe(ctx, *_recipe_form(model_id, **changes))
            assert "status-error" in status and message in status, (changes, status)
        assert ctx.project.list(Experiment) == []

        # a search whose generation job is cancelled cannot advance: the poll records why
        status, _, chosen = evaluate_tab.on_recipe(ctx, *_recipe_form(model_id,
                                                                      name="broken"))
        broken = chosen["value"]
        (job,) = ctx.project.list(Job, status="queued")
        ctx.cancel(job.id)
        ctx.poll()
        assert "did not finish" in ctx.recipe_errors[broken]
        _, text, _, _ = evaluate_tab.recipe_view(ctx, broken)
        assert "could not advance" in text and "did not finish" in text

        status, listing, chosen = evaluate_tab.on_recipe(ctx, *_recipe_form(model_id))
        assert "status-ok" in status and "first jobs are queued" in status, status
        exp_id = chosen["value"]
        assert exp_id != broken and listing["status"].tolist() == ["running", "running"]
        _, state = recipe.load(ctx.project, exp_id)
        assert state["phase"] == "materialise"
        assert [j.kind for j in ctx.project.list(Job, status="queued")] == ["generate"]
        box, text, report, export = evaluate_tab.recipe_view(ctx, exp_id)
        assert box["visible"] and "searching on validation" in text
        assert not export["interactive"] and report["training data"].tolist() == ["real only"]
        with pytest.raises(NotReadyError, match="not done"):
            evaluate_tab.export_winner(ctx, exp_id)

        for _ in range(60):  # the jobs panel's timer
            ctx.poll()
            if ctx.project.get(Experiment, exp_id).status == "done":
                break
        assert ctx.project.get(Experiment, exp_id).status == "done"
        assert broken in ctx.recipe_errors  # the broken one still says why, the other ran
        splits = [e.eval_split for e in ctx.project.list(Evaluation)]
        assert splits.count("test") == 6  # winner, real, mixup x 2 seeds
        assert splits.index("test") > max(i for i, s in enumerate(splits) if s == "val")

        table, fig, csv, _ = evaluate_tab.experiment_view(ctx, exp_id)
        assert len(table) == 2 and table["winner"].tolist().count("★") == 1
        assert {"val top-1 % @1ep", "near-copies %", "excluded"} <= set(table.columns)
        assert all(table["val top-1 % @1ep"] != "") and not csv["visible"]
        assert len(fig.data) >= 1
        box, text, report, export = evaluate_tab.recipe_view(ctx, exp_id)
        assert box["visible"] and export["interactive"] and ": done" in text
        assert report["training data"].tolist()[1:] == ["real only", "real + mixup"]
        assert report["seeds"].tolist() == [2, 2, 2]
        assert all("±" in v for v in report["test top-1 % (mean ± std)"])
        _, state = recipe.load(ctx.project, exp_id)
        sel = ctx.project.get(Selection, recipe.winner_selection(state))
        assert f"**{sel.name}**" in text
        assert sel.id in [v for _, v in choices.selection_choices(ctx)]  # Curate / Export

        status = evaluate_tab.on_recipe_export(ctx, exp_id, True)
        assert "status-ok" in status and "it goes to" in status, status
        ctx.poll()
        (export_row,) = ctx.project.list(Export)
        assert export_row.selection_id == sel.id and export_row.folder in status
        assert export_row.count > sel.count and Path(export_row.folder).is_dir()  # + real
    finally:
        ctx.close()


def test_recipe_button_refuses_a_dataset_without_validation_split(studio):
    """Through the app's API: the studio's project was imported without a validation split;
    the search is refused with what to do, and nothing is recorded."""
    from engine.project import Experiment, Model

    blocks, client, _, _ = studio
    ctx = blocks.studio
    model_id = [m.id for m in ctx.project.list(Model) if m.status == "trained"][0]
    status, _, _ = client.predict(*_recipe_form(model_id), api_name="/recipe")
    assert "status-error" in status and "no validation split" in status
    assert "Data tab" in status and "Traceback" not in status
    assert ctx.project.list(Experiment, kind="recipe") == []
    # no search picked: the export button says so
    status = client.predict(None, True, api_name="/recipe_export")
    assert "status-error" in status and "pick a recipe search" in status


def test_evaluation_page_and_compare_runs_from_real_evaluations(tmp_path):
    """Three real tiny evaluations (2 and 3 epochs on test, 2 on validation) and a second
    model: an evaluation's page (per-class accuracy, confusion matrix, curves, config, every
    number naming its split, accuracy axes from 0), a click in the table opening it, and
    runs compared (one legend entry per run ticked, the config diff listing the field that
    differs first); the models side on the Train tab."""
    import gradio as gr
    import numpy as np

    from engine.config import EvalConfig
    from engine.jobs import JobManager
    from engine.project import Dataset, Evaluation, Model, dumps
    from engine.stages import evaluate_stage
    from studio.context import StudioContext
    from studio.tabs import evaluate_tab, train_tab
    from tests.conftest import tiny_generation_project

    path, model_id = tiny_generation_project(tmp_path, val_fraction=0.25)
    ctx = StudioContext(path)
    try:
        project = ctx.project
        jobs = JobManager(project)
        for epochs, split in ((2, "test"), (3, "test"), (2, "val")):
            jobs.run_inline(evaluate_stage.prepare(
                project, EvalConfig(image_size=8, epochs=epochs), mix="real",
                name=f"real-{epochs}ep-{split}", split=split))
        evals = {e.name: e for e in project.list(Evaluation)}
        classes = project.list(Dataset)[0].classes
        two, three, val = (evals[n] for n in ("real-2ep-test", "real-3ep-test",
                                             "real-2ep-val"))

        # the page of one evaluation: every number names its split
        summary, per_class, confusion, curves, top, config = \
            evaluate_tab.evaluation_page(ctx, val.id)
        assert f"top-1 **{val.top1:.2f} %**" in summary and "**validation** split" in summary
        assert per_class.layout.yaxis.range[0] == 0
        assert "validation split" in per_class.layout.yaxis.title.text
        assert list(per_class.data[0].x) == classes
        assert np.allclose(per_class.data[0].y, val.results["per_class"])
        heat = confusion.data[0]
        assert heat.type == "heatmap" and np.asarray(heat.text).shape == (3, 3)
        assert np.asarray(heat.text).sum() == val.num_test  # every scored image once
        assert "validation split" in confusion.layout.xaxis.title.text
        assert [t.name for t in curves.data if t.showlegend is not False] == [
            "real-2ep-val (val)"]
        assert list(curves.data[0].x) == [1, 2]  # per epoch
        assert curves.layout.yaxis2.range[0] == 0  # the top-1 panel from 0
        assert list(top.columns) == ["true class", "predicted as", "images", "% of the class"]
        assert dict(zip(config["field"], config["value"]))["epochs"] == "2"
        assert dict(zip(config["field"], config["value"]))["scored on (split)"] == "val"
        # the top-1 chart of all evaluations starts at 0 too
        assert evaluate_tab.results_figure(ctx).layout.yaxis.range[0] == 0

        # a click in the evaluations table opens the row's evaluation (by its name)
        table = evaluate_tab.results_table(ctx)
        row = table.index[table["evaluation"] == "real-3ep-test"][0]
        evt = gr.SelectData(None, {"index": [int(row), 3], "value": "x",
                                   "row_value": table.iloc[row].tolist()})
        chosen, summary, *_ = evaluate_tab.pick_evaluation(ctx, evt)
        assert chosen == three.id and "**real-3ep-test**" in summary and "**test** split" \
            in summary
        # the refresh opens the latest finished evaluation and keeps the ticked ones
        out = evaluate_tab.refresh_page(ctx, None, [two.id, "eval_gone"])
        assert out[0]["value"] == val.id and out[7]["value"] == [two.id]

        # compare: one legend entry per run ticked, the differing field listed first
        fig, diff = evaluate_tab.compare_view(ctx, [two.id, three.id])
        assert [t.name for t in fig.data if t.showlegend is not False] == [
            "real-2ep-test (test)", "real-3ep-test (test)"]
        assert len({t.line.color for t in fig.data}) == 2
        assert "the test split" in fig.layout.title.text
        assert list(diff.columns) == ["field", "differs", "real-2ep-test", "real-3ep-test"]
        differing = list(diff.loc[diff["differs"] == "≠", "field"])
        assert "epochs" in differing and "mix" not in differing
        assert diff["differs"].tolist() == sorted(diff["differs"], key=lambda d: d != "≠")
        styled = evaluate_tab.show_compare(ctx, [two.id, three.id])[1]  # what the page gets
        cells = styled.to_html()
        assert styled.data.equals(diff) and cells.count("background-color: #fff3c4") > 0
        fig, diff = evaluate_tab.compare_view(ctx, [two.id, three.id, val.id])
        assert sum(t.showlegend is not False for t in fig.data) == 3
        assert "each run's split" in fig.layout.title.text
        assert "scored on (split)" in list(diff.loc[diff["differs"] == "≠", "field"])
        assert evaluate_tab.compare_view(ctx, [])[0] is None

        # models: their loss curves overlaid, their configs side by side
        base = project.get(Model, model_id)
        project.update(Model, model_id, metrics_json=dumps({"losses": [[1, 0.9], [2, 0.5]]}))
        project.add(Model(id="mdl_other", name="other-rcdm", dataset_id=base.dataset_id,
                          encoder="pca", status="trained",
                          config_json=dumps({**base.config, "steps": 7}),
                          metrics_json=dumps({"losses": [0.8, 0.6, 0.4]})))
        fig, diff = train_tab.compare_models(ctx, [model_id, "mdl_other"])
        assert [t.name for t in fig.data] == ["tiny-rcdm", "other-rcdm"]
        assert list(fig.data[1].x) == [1.0, 2.0, 3.0]
        assert diff.loc[diff["differs"] == "≠", "field"].tolist() == ["steps"]
        assert diff["field"].iloc[0] == "steps"
        choices, _, _ = train_tab.refresh_compare(ctx, ["mdl_other", "mdl_gone"])
        assert choices["value"] == ["mdl_other"]
    finally:
        ctx.close()
