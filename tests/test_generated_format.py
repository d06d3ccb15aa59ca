"""Generated images as PNG, WebP or JPEG (issue 17, item 3): written once in the chosen
format with its quality recorded, read by everything downstream (re-encode, evaluation,
export, check), decoded once per size through the generation's pixel cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import image_formats
from engine.config import GENERATED_FORMATS, EvalConfig, ExportConfig, GenerateConfig
from engine.errors import InvalidConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- config


def test_format_and_quality_are_validated_with_clear_errors():
    assert GenerateConfig().image_format == "png" and GenerateConfig().quality == 95
    assert GENERATED_FORMATS == tuple(image_formats.IMAGE_FORMATS)
    for fmt, ext in (("png", ".png"), ("webp", ".webp"), ("jpeg", ".jpg")):
        assert image_formats.suffix(GenerateConfig(image_format=fmt).image_format) == ext
    with pytest.raises(InvalidConfigError, match=r"image_format must be one of .*'gif'"):
        GenerateConfig(image_format="gif")
    for bad in (0, 101, -5):
        with pytest.raises(InvalidConfigError, match=rf"quality must be in \[1, 100\], got {bad}"):
            GenerateConfig(image_format="webp", quality=bad)
    with pytest.raises(InvalidConfigError, match="quality must be a whole number"):
        GenerateConfig(image_format="jpeg", quality=90.5)
    with pytest.raises(InvalidConfigError, match="quality must be a number"):
        GenerateConfig(quality="high")
    # a JSON round trip keeps both; a config from before they existed reads as PNG at 95
    conf = GenerateConfig(image_format="jpeg", quality=80)
    assert GenerateConfig.from_dict(json.loads(conf.to_json())) == conf
    old = {k: v for k, v in GenerateConfig().to_dict().items()
           if k not in ("image_format", "quality")}
    assert GenerateConfig.from_dict(old).image_format == "png"


def test_studio_quality_box_takes_whole_numbers_only():
    from studio.tabs.generate_tab import quality_value

    assert quality_value(90.0) == 90 and quality_value(None) == GenerateConfig.quality
    for bad in ("abc", float("nan"), float("inf"), 90.5):
        with pytest.raises(InvalidConfigError, match="whole number"):
            quality_value(bad)


# ---------------------------------------------------------------------------- files


@pytest.mark.parametrize("fmt,quality", [("png", 95), ("webp", 90), ("webp", 100),
                                         ("jpeg", 92)])
def test_files_decode_to_rgb_with_their_metadata(tmp_path, fmt, quality):
    from engine.rcdm.generation import _already_written

    rng = np.random.default_rng(0)
    # smooth, image-like: a blurred gradient with a little noise
    yy, xx = np.mgrid[0:24, 0:24]
    base = np.stack([xx * 10, yy * 10, (xx + yy) * 5], -1) + rng.integers(0, 8, (24, 24, 3))
    image = np.clip(base, 0, 255).astype(np.uint8)
    text = {"rcdm:seed": "7", "rcdm:class": "zwölf", "rcdm:source": "img_1"}
    path = tmp_path / f"x{image_formats.suffix(fmt)}"
    image_formats.write_image_atomic(path, image, fmt, quality, text)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    with Image.open(path) as img:
        assert img.format == image_formats.PILLOW_NAMES[fmt]
        assert img.mode == "RGB" and img.size == (24, 24)
        assert image_formats.read_metadata(img) == text  # non-ASCII kept
        pixels = np.asarray(img)
    err = np.abs(pixels.astype(int) - image).mean()
    if fmt == "png" or (fmt == "webp" and quality == 100):
        assert err == 0  # lossless
    else:
        assert 0 < err < 12  # lossy, close
    # a rerun skips a complete file written for this very sample, rewrites the others
    assert _already_written(path, text)
    assert not _already_written(path, {**text, "rcdm:seed": "8"})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    assert not _already_written(path, text)


def test_webp_and_jpeg_are_smaller_than_png_on_a_smooth_image(tmp_path):
    # image-like: smooth shapes (8x8 noise upsampled) with a little fine noise, as a
    # generated image has (a pure gradient PNG compresses better than any lossy format)
    rng = np.random.default_rng(0)
    low = Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
    smooth = np.asarray(low.resize((64, 64), Image.Resampling.BICUBIC)).astype(int)
    image = np.clip(smooth + rng.integers(-3, 4, (64, 64, 3)), 0, 255).astype(np.uint8)
    sizes = {}
    for fmt in GENERATED_FORMATS:
        path = tmp_path / f"x{image_formats.suffix(fmt)}"
        image_formats.write_image_atomic(path, image, fmt, 90)
        sizes[fmt] = path.stat().st_size
    assert sizes["webp"] < sizes["png"] and sizes["jpeg"] < sizes["png"]


# ---------------------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def formats_project(tmp_path_factory):
    """The tiny generation project with a WebP generation (through the CLI's flags) and a
    JPEG one (through the stage)."""
    from conftest import tiny_generation_project

    from engine.jobs import JobManager
    from engine.project import Generation, Project
    from engine.stages import generate_stage
    from studio.cli import main

    root = tmp_path_factory.mktemp("formats")
    path, _ = tiny_generation_project(root)
    assert main(["generate", "--project", str(path), "--variations", "2", "--sampler", "ddim",
                 "--steps", "2", "--format", "webp", "--quality", "90", "--name", "webp",
                 "--json"]) == 0
    config = GenerateConfig(variations=2, sampler="ddim", steps=2, image_format="jpeg",
                            quality=80)
    with Project(path) as project:
        JobManager(project).run_inline(generate_stage.prepare(project, config, "tiny-rcdm",
                                                              name="jpeg"))
        gens = {g.name: g.id for g in project.list(Generation)}
    return {"path": path, "gens": gens, "root": root}


def test_generation_writes_the_format_and_records_it(formats_project):
    from engine.image_formats import read_metadata
    from engine.project import Generation, Project

    with Project(formats_project["path"]) as project:
        for name, fmt, ext, quality in (("webp", "webp", ".webp", 90),
                                        ("jpeg", "jpeg", ".jpg", 80)):
            gen = project.get(Generation, formats_project["gens"][name])
            conf = json.loads(gen.config_json)
            assert conf["image_format"] == fmt and conf["quality"] == quality
            samples = project.samples(gen.id)
            assert len(samples) == 36  # 18 training images x 2 seeds
            assert all(Path(p).suffix == ext for p in samples["path"])
            folder = project.abs(gen.folder) / "images"
            assert sorted(p.suffix for p in folder.rglob("*") if p.is_file()) == [ext] * 36
            row = samples.iloc[5]
            with Image.open(project.abs(row["path"])) as img:
                assert img.format == image_formats.PILLOW_NAMES[fmt]
                assert img.mode == "RGB" and img.size == (8, 8)
                meta = read_metadata(img)
            assert meta["rcdm:seed"] == str(row["seed"])
            assert meta["rcdm:source"] == row["source_image_id"]


def test_cli_flags_parse_and_bad_values_are_refused(formats_project, capsys):
    from studio.cli import main

    common = ["generate", "--project", str(formats_project["path"]), "--steps", "1"]
    with pytest.raises(SystemExit) as exc:
        main([*common, "--format", "gif"])
    assert exc.value.code == 2 and "invalid choice: 'gif'" in capsys.readouterr().err
    assert main([*common, "--format", "jpeg", "--quality", "101"]) == 2
    assert "quality must be in [1, 100], got 101" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--help"])
    text = capsys.readouterr().out
    assert "--format {png,webp,jpeg}" in text and "--quality Q" in text


def test_reencode_and_evaluate_share_one_pixel_cache(formats_project):
    """The offline re-encode builds the generation's pixel cache at its size; evaluations at
    that size read it (in memory and streamed) instead of decoding the files again."""
    from engine import data
    from engine.config import EncodeConfig
    from engine.jobs import JobManager
    from engine.project import Encoding, Evaluation, Generation, Project
    from engine.stages import encode_stage, evaluate_stage

    with Project(formats_project["path"]) as project:
        gen = project.get(Generation, formats_project["gens"]["webp"])
        jobs = JobManager(project)
        jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca"),
                                             generation_ref=gen.id))
        enc = project.list(Encoding, target="generation", target_id=gen.id)[-1]
        assert enc.count == 36
        cache = project.abs(gen.folder) / "pixels_8.npy"  # the PCA encoder looks at 8 px
        assert cache.is_file()
        files = [project.abs(p) for p in project.samples(gen.id)["path"]]
        cached = np.load(cache, allow_pickle=False)
        assert np.array_equal(cached, data.load_pixels(files, 8))  # the files' pixels
        # the embeddings are those of the decoded files
        from engine import encoders
        encoder = encoders.load_encoder(project.abs(enc.state_path))
        emb = np.load(project.abs(enc.array_path), allow_pickle=False)
        np.testing.assert_allclose(emb, encoder.encode(data.load_pixels(files, 8)),
                                   rtol=1e-5, atol=1e-5)
        before = cache.stat().st_mtime_ns
        for path in ("memory", "stream"):
            config = EvalConfig(arch="resnet_tiny", image_size=8, epochs=1, batch_size=16,
                                data_path=path, loader_workers=0)
            job = jobs.run_inline(evaluate_stage.prepare(project, config, mix="synthetic",
                                                         generation_ref=gen.id))
            ev = project.get(Evaluation, job.result_id)
            assert ev.status == "done" and ev.num_train == 36
            assert json.loads(ev.results_json)["data_path"] == path
        assert cache.stat().st_mtime_ns == before  # read, never rebuilt


def test_evaluation_of_a_selection_decodes_at_its_own_size(formats_project):
    """Another size, another cache; a selection takes its rows of it. A streamed evaluation
    reads a cache but does not build one."""
    from engine.jobs import JobManager
    from engine.project import Evaluation, Generation, Project
    from engine.stages import curate_stage, evaluate_stage

    with Project(formats_project["path"]) as project:
        gen = project.get(Generation, formats_project["gens"]["jpeg"])
        sel = curate_stage._store(project, gen, "", np.arange(0, 36, 3), "every-third",
                                  {"kind": "test"})
        config = EvalConfig(arch="resnet_tiny", image_size=12, epochs=1, batch_size=16,
                            data_path="memory")
        spec = evaluate_stage.prepare(project, config, mix="real+synthetic",
                                      selection_ref=sel.id)
        assert spec.params["synthetic_rows"] == list(range(0, 36, 3))
        job = JobManager(project).run_inline(spec)
        ev = project.get(Evaluation, job.result_id)
        assert ev.status == "done"
        cache = np.load(project.abs(gen.folder) / "pixels_12.npy", allow_pickle=False)
        assert cache.shape == (36, 12, 12, 3)
        # streamed (a mix too large for memory) with no cache at its size: the files are
        # decoded per batch and no cache is built
        config = config.replace(image_size=10, data_path="stream", loader_workers=0)
        job = JobManager(project).run_inline(evaluate_stage.prepare(
            project, config, mix="synthetic", selection_ref=sel.id))
        assert project.get(Evaluation, job.result_id).status == "done"
        assert not (project.abs(gen.folder) / "pixels_10.npy").exists()


def test_export_keeps_or_reencodes_the_format_and_records_it(formats_project, tmp_path):
    import pandas as pd

    from engine.jobs import JobManager
    from engine.project import Generation, Project
    from engine.stages import curate_stage, export_stage

    with Project(formats_project["path"]) as project:
        gen = project.get(Generation, formats_project["gens"]["webp"])
        sel = curate_stage._store(project, gen, "", np.arange(10), "first-ten",
                                  {"kind": "test"})
        files = [project.abs(p) for p in project.samples(gen.id)["path"][:10]]
        jobs = JobManager(project)
        for size, out in ((8, tmp_path / "as-is"), (12, tmp_path / "resized")):
            jobs.run_inline(export_stage.prepare(project, ExportConfig(size=size), sel.id,
                                                 out_dir=out))
            manifest = pd.read_csv(out / "manifest.csv")
            assert len(manifest) == 10 and set(manifest["format"]) == {"webp"}
            assert set(manifest["quality"]) == {90}
            exported = [out / rel for rel in manifest["relative_path"]]
            assert all(p.suffix == ".webp" for p in exported)
            for p in exported:
                with Image.open(p) as img:
                    assert img.format == "WEBP" and img.size == (size, size)
            if size == 8:  # no resize: the files as they are, byte for byte
                src = {f.name: f.read_bytes() for f in files}
                assert all(p.read_bytes() == src[Path(s).name] for p, s in
                           zip(exported, manifest["source_path"]))
            else:
                assert manifest["resized"].all()
        card = (tmp_path / "as-is" / "README.md").read_text(encoding="utf-8")
        assert "webp" in card


def test_check_reads_every_format(formats_project):
    from engine.check import check_project
    from engine.project import Project

    with Project(formats_project["path"]) as project:
        report = check_project(project)
    assert report.problems == []


def test_sharded_jpeg_merges_into_the_unsharded_generation(formats_project):
    """Shards written in JPEG, merged: the same files, byte for byte, as one process."""
    from engine.project import Generation, Project
    from engine.stages import generate_stage, shard_stage

    out = formats_project["root"] / "jpeg-shards"
    config = GenerateConfig(variations=2, sampler="ddim", steps=2, image_format="jpeg",
                            quality=80)
    with Project(formats_project["path"]) as project:
        params, plan = generate_stage.plan_params(project, config, "tiny-rcdm")
        shard_stage.write_plan(out, params, plan.cond)
        for k in range(2):
            shard_stage.run_shard(out, k, 2)
        assert sorted({p.suffix for p in out.rglob("images/*/*")}) == [".jpg"]
        merged = project.get(Generation, shard_stage.merge_shards(project, [out]))
        whole = project.get(Generation, formats_project["gens"]["jpeg"])
        a, b = project.samples(merged.id), project.samples(whole.id)
        assert json.loads(merged.config_json)["image_format"] == "jpeg"
        for pa, pb in zip(a["path"], b["path"]):
            assert Path(pa).relative_to(merged.folder) == Path(pb).relative_to(whole.folder)
            assert project.abs(pa).read_bytes() == project.abs(pb).read_bytes()


def test_png_plans_keep_their_fingerprint():
    """A PNG plan's fingerprint ignores image_format / quality (PNG plans written before the
    options existed still match); a WebP plan's does not."""
    from engine.stages.shard_stage import plan_fingerprint

    base = {"model_id": "m", "config": {k: v for k, v in GenerateConfig().to_dict().items()
                                        if k not in ("image_format", "quality")}}
    cond = np.zeros((2, 3), np.float32)
    old = plan_fingerprint(base, cond, "h")
    png = {**base, "config": GenerateConfig().to_dict()}
    webp = {**base, "config": GenerateConfig(image_format="webp").to_dict()}
    assert plan_fingerprint(png, cond, "h") == old != plan_fingerprint(webp, cond, "h")
