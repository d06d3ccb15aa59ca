"""Any image as a source and direction editing: tiny real projects through the CLI, and the
edit maths on fixed numbers."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from engine.config import GenerateConfig
from engine.errors import DatasetError, InvalidConfigError
from engine.rcdm import conditions
from studio.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

D = 5
FAST = ["--sampler", "ddim", "--steps", "2"]


@pytest.fixture(scope="module")
def gen_project(tmp_path_factory):
    from conftest import tiny_generation_project

    path, _ = tiny_generation_project(tmp_path_factory.mktemp("sources"), dim=D)
    return path


def _generation(path, gen_id):
    from engine.project import Generation, Project

    with Project(path) as project:
        gen = project.get(Generation, gen_id)
        samples = project.samples(gen.id)
        return (gen, json.loads(gen.config_json), samples,
                [project.abs(p) for p in samples["path"]], project.abs(gen.folder))


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the maths


def test_edit_direction_fixed_numbers():
    cond = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    d = conditions.class_direction(cond, labels, 0, 1)  # mean(B) - mean(A)
    assert np.allclose(d, [0.0, 4.0])
    assert np.allclose(conditions.class_direction(cond, labels, 0, 1, normalise=True),
                       [0.0, 1.0])
    src = np.array([[1.0, 1.0], [3.0, -1.0]], np.float32)
    assert np.allclose(conditions.edit(src, d, 0.5), [[1.0, 3.0], [3.0, 1.0]], atol=1e-6)
    assert np.allclose(conditions.edit(src, d, -0.25), [[1.0, 0.0], [3.0, -2.0]], atol=1e-6)
    # λ = 0 gives the source representation exactly, even for a normalised pool
    unit = np.array([[0.6, 0.8]], np.float32)
    assert np.array_equal(conditions.edit(unit, d, 0.0, unit=True), unit)
    assert np.allclose(np.linalg.norm(conditions.edit(unit, d, 0.5, unit=True)), 1.0,
                       atol=1e-6)
    plan = conditions.edit_plan(src, ["a", "b"], np.array([0, 1]), d, (0.0, 0.5, 1.0))
    assert plan.mode == "edit" and len(plan) == 6
    assert plan.source_ids == ["a"] * 3 + ["b"] * 3 and plan.labels.tolist() == [0] * 3 + [1] * 3
    assert plan.weights.tolist() == [0.0, 0.5, 1.0] * 2
    assert np.array_equal(plan.cond[[0, 3]], src)
    assert np.allclose(plan.cond[5], [3.0, 3.0], atol=1e-6)
    with pytest.raises(DatasetError, match="same mean"):
        conditions.group_direction(cond[:2], cond[:2], normalise=True)
    lab, dist = conditions.nearest_centroid(np.array([[1.0, 3.5]]), cond, labels)
    assert lab.tolist() == [1] and np.allclose(dist, [0.5])


def test_edit_config_bounds():
    with pytest.raises(InvalidConfigError, match="direction 'A:B'"):
        GenerateConfig(mode="edit")
    with pytest.raises(InvalidConfigError, match=r"in \[-10, 10\]"):
        GenerateConfig(mode="edit", direction="a:b", strength=11.0)
    with pytest.raises(InvalidConfigError, match="at most 64"):
        GenerateConfig(mode="edit", direction="a:b", sweep=tuple([0.1] * 65))
    conf = GenerateConfig(mode="edit", direction="a:b", sweep=(0.0, 1.0))
    assert GenerateConfig.from_dict(conf.to_dict()) == conf and conf.strengths() == (0.0, 1.0)


# ----------------------------------------------------------------------------- any image


def test_generate_from_an_outside_image_via_the_cli(gen_project, tmp_path, capsys):
    # a greyscale, odd-sized PNG outside the project
    src = tmp_path / "my digit.png"
    Image.fromarray(np.linspace(0, 255, 14 * 9).reshape(14, 9).astype(np.uint8),
                    "L").save(src)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert main(["generate", "--project", str(gen_project), "--image", str(src),
                 "--variations", "2", *FAST, "--json"]) == 0
    gen, conf, samples, files, folder = _generation(gen_project, _last_json(capsys)["id"])
    assert gen.count == 2 and set(samples["source_image_id"]) == {f"sha256:{sha}"}
    (ext,) = conf["conditions"]["external"]
    assert (ext["sha256"], ext["name"], ext["label_from"]) == (sha, "my digit.png",
                                                              "nearest class centroid")
    assert ext["class_name"] in ("class_0", "class_1", "class_2")
    assert set(samples["class_name"]) == {ext["class_name"]}
    (copy,) = (folder / "sources").iterdir()
    assert ext["file"].endswith(copy.name)
    assert copy.read_bytes() == src.read_bytes()
    with Image.open(files[0]) as img:
        assert img.text["rcdm:source"] == f"sha256:{sha}"
        assert img.text["rcdm:source_name"] == "my digit.png"
    # the representation is the encoder's of the image as an import would store it
    from engine import encoders
    from engine.data import image_pixels
    from engine.project import Encoding, Model, Project

    with Project(gen_project) as project:
        enc = project.get(Encoding, project.get(Model, gen.model_id).encoding_id)
        encoder = encoders.load_encoder(project.abs(enc.state_path))
    with Image.open(src) as img:
        want = encoder.encode(image_pixels(img, encoder.load_size)[None])
    assert np.allclose(np.load(folder / "source_cond.npy"), want, atol=1e-5)
    # the curation's details name the file and show its copy
    from engine.config import EncodeConfig
    from engine.jobs import JobManager
    from engine.stages import curate_stage, encode_stage

    with Project(gen_project) as project:
        JobManager(project).run_inline(encode_stage.prepare(
            project, EncodeConfig(encoder="pca", dim=D, image_size=8), generation_ref=gen.id))
        info = curate_stage.provenance(project, curate_stage.band_data(project, gen.id), 1)
    assert (info["source_name"], info["source_sha256"]) == ("my digit.png", sha)
    assert info["source_path"] == str(copy)

    # a given class; a transparent wide image; two files interpolate
    other = tmp_path / "wide.png"
    Image.fromarray(np.full((6, 20, 4), 200, np.uint8), "RGBA").save(other)
    assert main(["generate", "--project", str(gen_project), "--image", str(src),
                 "--image", str(other), "--mode", "interpolate", "--points", "3",
                 "--label", "class_2", *FAST, "--json"]) == 0
    gen, conf, samples, _, folder = _generation(gen_project, _last_json(capsys)["id"])
    assert gen.count == 3 and set(samples["label"]) == {2}
    assert [e["label_from"] for e in conf["conditions"]["external"]] == ["given"] * 2
    assert conf["conditions"]["pair"][1].startswith("sha256:")
    assert len(list((folder / "sources").iterdir())) == 2

    # a file that is not an image, an unknown class: one sentence, exit code 2
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert main(["generate", "--project", str(gen_project), "--image", str(bad), *FAST]) == 2
    err = capsys.readouterr().err
    assert "notes.png cannot be a source image: not an image" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["generate", "--project", str(gen_project), "--image", str(src),
                 "--label", "nope", *FAST]) == 2
    assert "not a class" in capsys.readouterr().err


# ----------------------------------------------------------------------------- edits


def test_edit_sweep_of_a_class_via_the_cli(gen_project, capsys):
    sweep = [0.0, 0.5, 1.0]
    assert main(["generate", "--project", str(gen_project), "--mode", "edit",
                 "--direction", "class_0:class_2", "--sweep", "0,0.5,1", "--class", "class_0",
                 *FAST, "--json"]) == 0
    gen, conf, samples, files, folder = _generation(gen_project, _last_json(capsys)["id"])
    from engine.project import Dataset, Project

    with Project(gen_project) as project:
        images = project.images(project.list(Dataset)[0].id)
    train0 = images[(images["split"] == "train") & (images["label"] == 0)]
    assert gen.count == len(train0) * len(sweep)
    assert gen.name == "tiny-rcdm-edit-class_0-to-class_2"
    assert samples.groupby("source_image_id").size().eq(len(sweep)).all()
    assert set(samples["source_image_id"]) == set(train0["id"])
    edit = conf["conditions"]["edit"]
    assert edit["direction"] == "class_0:class_2" and edit["strengths"] == sweep
    assert conf["conditions"]["weights"] == sweep * len(train0)
    table = __import__("pandas").read_parquet(folder / "samples.parquet")
    assert table["mode"].eq("edit").all() and table["weight"].tolist() == sweep * len(train0)
    with Image.open(files[1]) as img:
        assert img.text["rcdm:mode"] == "edit" and img.text["rcdm:strength"] == "0.5"
        assert img.text["rcdm:direction"] == "class_0:class_2"
    # λ = 0 rows are the sources' own representations; λ = 1 adds the whole direction
    with Project(gen_project) as project:
        from engine.project import Encoding

        emb = project.embeddings(project.list(Encoding)[0])
    first = emb[int(images.set_index("id").loc[samples["source_image_id"].iloc[0], "idx"])]
    cond = np.load(folder / "source_cond.npy")
    d = np.load(folder / "edit_direction.npy")
    assert np.array_equal(cond[0], np.asarray(first, np.float32))
    assert np.allclose(cond[2], first + d, atol=1e-5)
    assert main(["generate", "--project", str(gen_project), "--mode", "edit",
                 "--direction", "class_0:nope", *FAST]) == 2
    assert "not a class" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the studio


def test_studio_uploads_and_lambda_strip(gen_project, tmp_path, monkeypatch):
    """The Generate tab's handlers: uploaded images as sources (alone, with a given class;
    beside picked images), an edit's λ strip shown one row per source with λ captions and
    provenance, and one-sentence refusals."""
    from engine.jobs import JobManager
    from engine.project import Dataset, Generation, Model
    from studio.context import StudioContext
    from studio.tabs import generate_tab

    ctx = StudioContext(gen_project)
    try:
        monkeypatch.setattr(ctx, "submit", lambda spec: JobManager(ctx.project).run_inline(spec))
        model_id = ctx.project.list(Model)[0].id
        ds = ctx.project.list(Dataset)[0]
        train = ctx.project.images(ds.id, split="train")
        up = tmp_path / "upload.png"
        Image.fromarray(np.full((10, 10, 3), 90, np.uint8)).save(up)
        sha = hashlib.sha256(up.read_bytes()).hexdigest()
        # the class lists follow the model's dataset
        a, b, c = generate_tab.class_lists(ctx, model_id, None)
        assert a["value"] == "class_0" and b["value"] == "class_2"
        assert c["value"] == generate_tab.AUTO_CLASS
        assert "1 uploaded image(s)" in generate_tab.show_uploads([str(up)])
        common = dict(per_class=1, sampler="ddim", steps=2, guidance=1.0, seed=0)

        # the upload alone: two variations of it, in the class given
        generate_tab.generate(ctx, model_id, "selected images", [], variations=2,
                              name="from-upload", uploads=[str(up)], upload_class="class_1",
                              **common)
        gen = ctx.project.get(Generation, "from-upload")
        samples = ctx.project.samples(gen.id)
        assert gen.count == 2 and set(samples["source_image_id"]) == {f"sha256:{sha}"}
        assert set(samples["class_name"]) == {"class_1"}
        _, md = generate_tab.sample_details(ctx, samples["id"].iloc[0])
        assert "uploaded file upload.png (class_1, label given" in md

        # an edit strip of 3 λ for two picked images and the upload: 9 images, one row each
        picked = train["id"][:2].tolist()
        job = generate_tab.generate(ctx, model_id, "selected images", picked, variations=1,
                                    name="strip", mode="edit", uploads=[str(up)],
                                    edit_from="class_0", edit_to="class_2", strip="0, 0.5 1",
                                    **common)
        assert "Generate 9 images (edit class_0:class_2, λ = 0, 0.5, 1)" in job.title
        gen = ctx.project.get(Generation, "strip")
        gallery, text, ids, _ = generate_tab.sample_view(ctx, gen.id, 1)
        assert gallery["columns"] == 3 and len(ids) == 9
        assert [cap for _, cap in gallery["value"]][:3] == ["λ 0", "λ 0.5", "λ 1"]
        assert "edit class_0 → class_2, one row per source" in text
        _, md = generate_tab.sample_details(ctx, ids[-1])
        assert "edit of uploaded file upload.png" in md
        assert "λ = 1 from class class_0 towards class class_2" in md
        _, md = generate_tab.sample_details(ctx, ids[1])
        assert f"edit of {picked[0]}" in md and "λ = 0.5" in md
        # the same strip from the sources' inverted noise: λ 0 gives each source back
        generate_tab.generate(ctx, model_id, "selected images", picked[:1], variations=1,
                              name="strip-inverted", mode="edit", edit_from="class_0",
                              edit_to="class_2", strip="0, 1", invert=True,
                              **{**common, "sampler": "ddpm"})
        gen = ctx.project.get(Generation, "strip-inverted")
        _, _, ids, _ = generate_tab.sample_view(ctx, gen.id, 1)
        _, md = generate_tab.sample_details(ctx, ids[0])
        assert "regenerated from the source's inverted DDPM noise (2 steps)" in md
        # other generations keep 12 columns
        gallery, *_ = generate_tab.sample_view(ctx, ctx.project.get(Generation,
                                                                     "from-upload").id, 1)
        assert gallery["columns"] == generate_tab.SAMPLE_COLUMNS

        # refusals, one sentence each, nothing queued
        before = len(ctx.project.list(Generation))
        with pytest.raises(InvalidConfigError, match="two different classes"):
            generate_tab.generate(ctx, model_id, "selected images", picked, variations=1,
                                  name="x", mode="edit", edit_from="class_0",
                                  edit_to="class_0", **common)
        with pytest.raises(InvalidConfigError, match="λ values must be numbers"):
            generate_tab.generate(ctx, model_id, "selected images", picked, variations=1,
                                  name="x", mode="edit", edit_from="class_0",
                                  edit_to="class_1", strip="0, half", **common)
        with pytest.raises(InvalidConfigError, match="at most 16 uploaded images"):
            generate_tab.generate(ctx, model_id, "selected images", [], variations=1,
                                  name="x", uploads=[str(up)] * 17, **common)
        assert len(ctx.project.list(Generation)) == before
    finally:
        ctx.close()


def test_inverted_edit_strip_via_the_cli(gen_project, tmp_path, capsys):
    """``--invert``: λ = 0 of an inverted edit gives the source image back; every λ of a
    source shares one inversion; provenance names the method; sharding is refused."""
    from engine.project import Dataset, Project

    with Project(gen_project) as project:
        ds = project.list(Dataset)[0]
        images = project.images(ds.id, split="train")
        first = images.iloc[0]
        src_path = project.abs(first["path"])
    assert main(["generate", "--project", str(gen_project), "--mode", "edit",
                 "--direction", "class_0:class_2", "--sweep", "0,1", "--invert",
                 "--images", first["id"], "--sampler", "ddpm", "--steps", "6", "--json"]) == 0
    gen, conf, samples, files, folder = _generation(gen_project, _last_json(capsys)["id"])
    assert gen.count == 2
    inv = conf["conditions"]["inversion"]
    assert "edit-friendly DDPM inversion" in inv["method"] and inv["steps"] == 6
    assert np.load(folder / "invert_cond.npy").shape == (2, D)
    from engine.data import image_pixels

    with Image.open(src_path) as img:
        want = image_pixels(img.convert("RGB"), 8).astype(int)
    with Image.open(files[0]) as img:  # λ = 0: the source itself, to a grey level
        got = np.asarray(img.convert("RGB")).astype(int)
    assert np.abs(got - want).max() <= 1
    with Image.open(files[1]) as img:  # λ = 1: moved
        assert not np.array_equal(np.asarray(img.convert("RGB")).astype(int), want)
    # an outside file, interpolated with inversion; sharding refused in one sentence
    up = tmp_path / "up.png"
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(up)
    assert main(["generate", "--project", str(gen_project), "--mode", "interpolate",
                 "--images", first["id"], "--image", str(up), "--points", "3", "--invert",
                 "--steps", "4", "--json"]) == 0
    gen, conf, _, files, _ = _generation(gen_project, _last_json(capsys)["id"])
    with Image.open(files[0]) as img:  # t = 0: the first image
        assert np.abs(np.asarray(img.convert("RGB")).astype(int) - want).max() <= 1
    assert main(["generate", "--project", str(gen_project), "--mode", "edit",
                 "--direction", "class_0:class_2", "--invert", "--images", first["id"],
                 "--plan-only", "--out", str(tmp_path / "plan")]) == 2
    assert "without --shard / --plan-only" in capsys.readouterr().err
    assert main(["generate", "--project", str(gen_project), "--invert", *FAST]) == 2
    assert "invert applies to edits and interpolations" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fine-tuning


def test_train_init_fine_tunes_a_trained_model(tmp_path, capsys):
    """``train --init MODEL``: the run takes the model's architecture and starts from its
    weights (with a vanishing learning rate the result is the initial model), provenance
    names it; another representation size is refused in one sentence."""
    from conftest import tiny_generation_project

    from engine.project import Model, Project
    from engine.rcdm.model import load_rcdm, read_rcdm_meta

    path, model_id = tiny_generation_project(tmp_path / "ft", dim=D)
    assert main(["train", "--project", str(path), "--init", "tiny-rcdm", "--preset", "quick",
                 "--steps", "1", "--batch-size", "4", "--lr", "1e-12", "--name", "tuned",
                 "--json"]) == 0
    capsys.readouterr()
    with Project(path) as project:
        tuned = project.get(Model, "tuned")
        start = project.get(Model, model_id)
        folder, init_folder = project.abs(tuned.checkpoint), project.abs(start.checkpoint)
    meta = read_rcdm_meta(folder)
    assert meta["train_config"]["block_channels"] == [8, 16]  # the initial model's, not quick's
    assert meta["train_config"]["steps"] == 1
    assert meta["extra"]["init"]["name"] == "tiny-rcdm"
    a, _, _ = load_rcdm(folder, load_vae=False)
    b, _, _ = load_rcdm(init_folder, load_vae=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa) < 1e-5
    # a model folder of another representation size is refused before any work
    other, _ = tiny_generation_project(tmp_path / "other", dim=D + 2)
    with Project(other) as project:
        other_folder = project.abs(project.list(Model)[0].checkpoint)
    assert main(["train", "--project", str(path), "--init", str(other_folder),
                 "--steps", "1"]) == 2
    assert "takes 7-d representations" in capsys.readouterr().err
    assert main(["train", "--project", str(path), "--init", "nope", "--steps", "1"]) == 2
    assert "neither a model of this project nor a model folder" in capsys.readouterr().err
