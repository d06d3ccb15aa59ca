"""Models trained elsewhere (issue 15, item 6): ``rcdm-studio import-model`` adds a model
folder of this project's format or a diffusers ``UNet2DConditionModel`` folder with its
conditioner; the model generates without training, exactly as the original, and fine-tunes
with ``train --init``; wrong folders are refused in one sentence, with nothing left behind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from studio.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

D = 5
FAST = ["--sampler", "ddim", "--steps", "2", "--json"]


def _diffusers_folder(model_dir, out, schedule=True):
    """The tiny model's files in a diffusers pipeline's layout: unet/, the conditioner,
    scheduler/scheduler_config.json; no rcdm.json."""
    meta = json.loads((model_dir / "rcdm.json").read_text())
    shutil.copytree(model_dir / "unet", out / "unet")
    shutil.copy2(model_dir / "conditioner.safetensors", out / "conditioner.safetensors")
    if schedule:
        tc = meta["train_config"]
        (out / "scheduler").mkdir()
        (out / "scheduler" / "scheduler_config.json").write_text(json.dumps({
            "_class_name": "DDPMScheduler", **{k: tc[k] for k in (
                "num_train_timesteps", "beta_schedule", "prediction_type")}}))
    return out


def _images(path, gen_name):
    from engine.project import Generation, Project

    with Project(path) as project:
        gen = project.get(Generation, gen_name)
        return [np.asarray(Image.open(project.abs(p))) for p in project.samples(gen.id)["path"]]


def test_a_diffusers_unet_with_its_conditioner_generates_like_the_original(tmp_path, capsys):
    from conftest import tiny_generation_project

    from engine.project import Model, Project
    from engine.rcdm.model import read_rcdm_meta

    path, model_id = tiny_generation_project(tmp_path / "p", dim=D)
    with Project(path) as project:
        original = project.abs(project.get(Model, model_id).checkpoint)
    folder = _diffusers_folder(original, tmp_path / "from-hub")
    assert main(["import-model", "--project", str(path), "--folder", str(folder),
                 "--name", "hub-rcdm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["name"] == "hub-rcdm" and out["format"] == "diffusers"
    with Project(path) as project:
        m = project.get(Model, "hub-rcdm")
        assert m.status == "trained" and m.encoder == "pca"
        kept = project.abs(m.checkpoint)
        assert project.assets in kept.parents  # a copy inside the project
    meta = read_rcdm_meta(kept)
    theirs = read_rcdm_meta(original)["train_config"]
    for key in ("image_size", "cond_tokens", "cross_attention_dim", "block_channels",
                "attention_head_dim", "num_train_timesteps", "beta_schedule",
                "prediction_type", "space"):
        assert meta["train_config"][key] == theirs[key], key
    assert meta["cond_dim"] == D and meta["extra"]["format"] == "diffusers"
    # no training: it generates, the same images as the model it came from, seed for seed
    for model, name in ((model_id, "from-original"), ("hub-rcdm", "from-import")):
        assert main(["generate", "--project", str(path), "--model", model, "--variations", "1",
                     "--name", name, *FAST]) == 0
    a, b = _images(path, "from-original"), _images(path, "from-import")
    assert len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))
    # and it fine-tunes
    assert main(["train", "--project", str(path), "--init", "hub-rcdm", "--steps", "1",
                 "--batch-size", "4", "--lr", "1e-12", "--name", "tuned", "--json"]) == 0
    with Project(path) as project:
        assert project.get(Model, "tuned").status == "trained"


def test_import_refuses_what_does_not_fit_and_leaves_nothing(tmp_path, capsys):
    from conftest import tiny_generation_project

    from engine.project import Model, Project

    path, model_id = tiny_generation_project(tmp_path / "p", dim=D)
    with Project(path) as project:
        original = project.abs(project.get(Model, model_id).checkpoint)
        models_before = sorted(p.name for p in (project.assets / "models").iterdir())

    def refused(folder, *extra):
        assert main(["import-model", "--project", str(path), "--folder", str(folder),
                     *extra]) == 2
        return capsys.readouterr().err

    # this project's format is copied as it is; a diffusers folder without its schedule
    # takes the defaults; a diffusers folder without the conditioner is refused
    assert main(["import-model", "--project", str(path), "--folder", str(original),
                 "--name", "copy"]) == 0
    bare = _diffusers_folder(original, tmp_path / "bare")
    (bare / "conditioner.safetensors").unlink()
    assert "no conditioner.safetensors" in refused(bare)
    assert "not a model folder" in refused(tmp_path)
    # a latent U-Net needs its VAE named
    latent = _diffusers_folder(original, tmp_path / "latent")
    cfg = json.loads((latent / "unet" / "config.json").read_text())
    (latent / "unet" / "config.json").write_text(json.dumps({**cfg, "in_channels": 4}))
    assert "name the VAE" in refused(latent)
    # another representation size than the encoding's
    other, _ = tiny_generation_project(tmp_path / "other", dim=D + 2)
    with Project(other) as project:
        other_dir = project.abs(project.list(Model)[0].checkpoint)
    assert "takes 7-d representations" in refused(other_dir)
    # --init on a diffusers folder points to import-model
    assert main(["train", "--project", str(path), "--init", str(bare), "--steps", "1"]) == 2
    assert "a diffusers U-Net folder" in capsys.readouterr().err
    with Project(path) as project:
        names = sorted(m.name for m in project.list(Model))
        left = sorted(p.name for p in (project.assets / "models").iterdir())
    assert names == ["copy", "tiny-rcdm"]
    assert len(left) == len(models_before) + 1  # only the accepted copy, no temp folder


# ---------------------------------------------------------------------- the studio (an adopt job)


@pytest.fixture
def studio_model(tmp_path, monkeypatch):
    """A tiny project inside the projects folder, a StudioContext on it, Gradio's upload cache
    in ``tmp_path/gradio``, and the trained model's folder (the one to import)."""
    from conftest import tiny_generation_project

    from engine.project import Model, Project

    root = tmp_path / "projects"
    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(root))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    path, model_id = tiny_generation_project(root, dim=D)
    with Project(path) as project:
        original = project.abs(project.get(Model, model_id).checkpoint)
    return path, model_id, original


def _upload(tmp_path, folder, name="hub-rcdm.zip", top="hub-rcdm"):
    """A zip of ``folder`` (as its one top folder ``top``) where Gradio puts an upload."""
    import zipfile

    dest = tmp_path / "gradio" / "9a3e77c1" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{top}/{p.relative_to(folder).as_posix()}" if top else
                         p.relative_to(folder).as_posix())
    return dest


def _left(project):
    """(model rows, model folders, upload folders) of a project."""
    from engine.project import Model

    uploads = project.assets / "uploads"
    return (sorted(m.name for m in project.list(Model)),
            sorted(p.name for p in (project.assets / "models").iterdir()),
            sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else [])


def test_the_studio_imports_an_uploaded_zip_in_a_job(studio_model, tmp_path):
    """The Train tab's import: a zip of a diffusers folder is checked and copied in the
    handler, unpacked, copied and loaded in the job's worker; the model it adds generates
    the same images as the original, seed for seed; the upload is gone from both places."""
    from engine.check import check_project
    from engine.project import Encoding, Job, Model
    from studio.context import StudioContext
    from studio.tabs import train_tab

    path, model_id, original = studio_model
    upload = _upload(tmp_path, _diffusers_folder(original, tmp_path / "hub"))
    ctx = StudioContext(path)
    try:
        (enc,) = ctx.project.list(Encoding, target="dataset")
        ds_id = enc.dataset_id
        choices = train_tab.adopt_encoding_choices(ctx, ds_id)
        assert [v for _, v in choices] == [enc.id] and f"{D}-d" in choices[0][0]
        status = train_tab.on_import_model(ctx, ds_id, "", str(upload), enc.id, "", "hub-zip")
        assert "queued" in status, status
        assert not upload.exists()  # Gradio's copy is deleted at once
        (job,) = ctx.project.list(Job, kind="adopt")
        job = ctx.jobs.wait(job.id, timeout=180, interval=0.2)
        assert job.status == "done", job.error
        m = ctx.project.get(Model, "hub-zip")
        assert m.status == "trained" and m.encoding_id == enc.id and m.job_id == job.id
        assert m.metrics == {"imported_from": "upload:hub-rcdm.zip", "format": "diffusers"}
        rows, _, uploads = _left(ctx.project)
        assert rows == ["hub-zip", "tiny-rcdm"] and uploads == []  # the upload's folder too
        assert check_project(ctx.project).problems == []
    finally:
        ctx.close()
    for model, name in ((model_id, "from-original"), ("hub-zip", "from-zip")):
        assert main(["generate", "--project", str(path), "--model", model, "--variations", "1",
                     "--name", name, *FAST]) == 0
    a, b = _images(path, "from-original"), _images(path, "from-zip")
    assert len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_the_studio_refuses_in_one_sentence_and_leaves_nothing(studio_model, tmp_path):
    """A folder outside the projects folder, a zip that leaves its folder, a file that is no
    zip: one sentence in the status, no job, no folder, the upload deleted. A folder inside
    the projects folder imports; a zip of no model fails in its job and leaves nothing; a
    visitor of a public studio may not import."""
    import zipfile

    from engine.project import Encoding, Job
    from studio.access import Access
    from studio.context import StudioContext
    from studio.tabs import train_tab

    path, _, original = studio_model
    outside = shutil.copytree(original, tmp_path / "elsewhere")
    ctx = StudioContext(path)
    try:
        (enc,) = ctx.project.list(Encoding, target="dataset")
        before = _left(ctx.project)

        def refused(folder, upload, expect):
            status = train_tab.on_import_model(ctx, enc.dataset_id, folder, upload, enc.id,
                                               "", "")
            assert "status-error" in status and expect in status, status
            assert status.count(". ") == 0, status  # one sentence
            assert ctx.project.list(Job, kind="adopt") == [] and _left(ctx.project) == before
            assert upload is None or not upload.exists()

        refused(str(outside), None, "is outside the projects folder")
        refused("../elsewhere", None, "model folder ../elsewhere is outside the projects folder")
        evil = tmp_path / "gradio" / "evil" / "evil.zip"
        evil.parent.mkdir(parents=True)
        with zipfile.ZipFile(evil, "w") as zf:
            zf.writestr("../../escape/rcdm.json", "{}")
        refused(None, evil, "leaves the folder")
        junk = tmp_path / "gradio" / "junk" / "junk.zip"
        junk.parent.mkdir(parents=True)
        junk.write_bytes(b"not a zip at all")
        refused(None, junk, "not a readable zip file")
        refused("", None, "upload a .zip of it")

        # a folder inside the projects folder imports (this project's format, as it is)
        inside = shutil.copytree(original, path.parent / "incoming" / "rcdm")
        status = train_tab.on_import_model(ctx, enc.dataset_id, "incoming/rcdm", None, enc.id,
                                           "", "from-folder")
        assert "queued" in status, status
        (job,) = ctx.project.list(Job, kind="adopt")
        assert ctx.jobs.wait(job.id, timeout=180, interval=0.2).status == "done"
        assert "from-folder" in _left(ctx.project)[0] and inside.is_dir()  # the source stays
        before = _left(ctx.project)

        # a zip of no model folder: refused by its job, which leaves nothing behind
        empty = _upload(tmp_path, tmp_path / "gradio" / "junk", name="empty.zip", top="x")
        status = train_tab.on_import_model(ctx, enc.dataset_id, "", str(empty), enc.id, "", "")
        assert "queued" in status, status
        job = [j for j in ctx.project.list(Job, kind="adopt") if j.id != job.id][0]
        job = ctx.jobs.wait(job.id, timeout=180, interval=0.2)
        assert job.status == "failed" and "the upload empty.zip is not a model folder" in job.error
        assert _left(ctx.project) == before
    finally:
        ctx.close()

    visitor = StudioContext(path, access=Access("public"))
    try:
        status = train_tab.on_import_model(visitor, enc.dataset_id, "incoming/rcdm", None,
                                           enc.id, "", "")
        assert "sign in to import a model" in status, status
    finally:
        visitor.close()
