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
