"""Channels follow the data (issue 15, item 4): a greyscale dataset trains a 1-channel RCDM
that writes greyscale (mode "L") files; colour and mixed datasets train RGB ones; ``--channels``
overrides; every reader of the files (encoders, classifier data, export, inversion) takes them;
RGB model folders made before keep loading and generating as they did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import GenerateConfig, TrainConfig
from engine.errors import InvalidConfigError
from engine.image_formats import is_grey, to_channels, to_pil
from studio.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

D = 4
FAST = ["--sampler", "ddim", "--steps", "2", "--json"]
TRAIN = ["--preset", "quick", "--steps", "2", "--batch-size", "4", "--image-size", "8",
         "--json"]


def _folder(root: Path, kind: str, classes: int = 2, per_class: int = 6) -> Path:
    """An ImageFolder of 8x8 images: "grey" (mode L PNGs, and RGB PNGs with R == G == B),
    "colour" (RGB), "mixed" (greyscale but for one colour image)."""
    rng = np.random.default_rng(1)
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey = rng.integers(0, 60, (8, 8), dtype=np.uint8)
            grey[c * 3:c * 3 + 3, 2:5] = 220
            if kind == "colour" or (kind == "mixed" and c == 1 and i == 0):
                img = Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1))
            elif i % 2:  # greyscale content stored as RGB
                img = Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
            else:
                img = Image.fromarray(grey)  # mode L
            img.save(d / f"{i:02d}.png")
    return root


def _project(root: Path, kind: str) -> Path:
    path = root / "proj"
    folder = _folder(root / "images", kind)
    assert main(["import", str(folder), "--project", str(path), "--name", kind,
                 "--test-fraction", "0.25"]) == 0
    assert main(["encode", "--project", str(path), "--encoder", "pca", "--dim", str(D),
                 "--image-size", "8"]) == 0
    return path


def _model(path: Path, name: str):
    from engine.project import Model, Project
    from engine.rcdm.model import read_rcdm_meta

    with Project(path) as project:
        m = project.get(Model, name)
        return m, read_rcdm_meta(project.abs(m.checkpoint))


def _files(path: Path, gen_name: str) -> list[Path]:
    from engine.project import Generation, Project

    with Project(path) as project:
        gen = project.get(Generation, gen_name)
        return [project.abs(p) for p in project.samples(gen.id)["path"]]


@pytest.fixture(scope="module")
def grey_project(tmp_path_factory):
    return _project(tmp_path_factory.mktemp("grey"), "grey")


# ------------------------------------------------------------------------- the conversions


def test_to_channels_is_pillows_conversion():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 7, 5, 3), dtype=np.uint8)
    grey = to_channels(rgb, 1)
    assert grey.shape == (3, 7, 5, 1)
    for img, g in zip(rgb, grey):
        assert np.array_equal(np.asarray(Image.fromarray(img).convert("L")), g[..., 0])
    back = to_channels(grey, 3)
    assert back.shape == rgb.shape and is_grey(back) and not is_grey(rgb)
    assert np.array_equal(to_channels(back, 1), grey)  # R == G == B -> L is exact
    assert to_channels(rgb, 3) is rgb
    assert to_pil(grey[0]).mode == "L" and to_pil(rgb[0]).mode == "RGB"
    with pytest.raises(ValueError, match="1 or 3"):
        to_channels(rgb, 2)


def test_channels_option_is_bounded():
    assert TrainConfig().channels is None
    assert TrainConfig(channels=1).channels == 1
    for bad in (0, 2, 4, 1.0, "1", True):
        with pytest.raises(InvalidConfigError, match="channels"):
            TrainConfig(channels=bad)
    with pytest.raises(SystemExit):
        main(["train", "--channels", "2"])


def test_import_records_which_images_are_greyscale(tmp_path):
    from engine.image_store import content_channels
    from engine.project import Dataset, Project

    for mode in ("L", "LA", "I;16", "1", "F"):
        assert content_channels(Image.new(mode, (4, 4))) == 1, mode
    assert content_channels(Image.new("RGB", (4, 4), (9, 9, 9))) == 1  # grey content
    assert content_channels(Image.new("RGB", (4, 4), (9, 9, 10))) == 3
    assert content_channels(Image.new("P", (4, 4))) == 1  # a palette of greys (black)
    colour = np.zeros((40, 40, 3), np.uint8)
    colour[39, 39] = (10, 11, 10)  # one pixel off grey, missed by a strided look
    assert content_channels(Image.fromarray(colour)) == 3
    assert content_channels(Image.fromarray(np.full((40, 40, 3), 7, np.uint8))) == 1
    path = _project(tmp_path / "m", "mixed")
    with Project(path) as project:
        ds = project.list(Dataset)[0]
        rows = project.images(ds.id)
    recorded = dict(zip(rows["source_path"], rows["channels"]))
    assert recorded["c1/00.png"] == 3
    assert sorted(set(recorded.values())) == [1, 3]
    assert sum(v == 3 for v in recorded.values()) == 1


# ------------------------------------------------------------------------ train and generate


def test_greyscale_data_train_a_greyscale_model_that_writes_L_files(grey_project, capsys):
    path = grey_project
    assert main(["train", "--project", str(path), "--name", "g", *TRAIN]) == 0
    m, meta = _model(path, "g")
    assert m.config["channels"] == 1 and meta["train_config"]["channels"] == 1
    from engine.project import Project

    with Project(path) as project:
        folder = project.abs(m.checkpoint)
    assert json.loads((folder / "unet" / "config.json").read_text())["in_channels"] == 1
    for fmt in ("png", "webp", "jpeg"):
        assert main(["generate", "--project", str(path), "--model", "g", "--variations", "1",
                     "--format", fmt, "--name", f"g-{fmt}", *FAST]) == 0
        files = _files(path, f"g-{fmt}")
        assert files
        for f in files:
            with Image.open(f) as img:
                assert img.size == (8, 8)
                if fmt == "webp":  # WebP has no greyscale mode: RGB, R ~ G ~ B (lossy)
                    rgb = np.asarray(img).astype(int)
                    assert img.mode == "RGB" and np.abs(rgb - rgb[..., 1:2]).max() <= 2, f
                else:
                    assert img.mode == "L", (fmt, f)


def test_colour_data_train_rgb_and_the_override_trains_greyscale(tmp_path):
    path = _project(tmp_path / "c", "colour")
    assert main(["train", "--project", str(path), "--name", "rgb", *TRAIN]) == 0
    assert main(["train", "--project", str(path), "--name", "forced-grey", "--channels", "1",
                 *TRAIN]) == 0
    m, meta = _model(path, "rgb")
    assert m.config["channels"] == 3 and meta["train_config"]["channels"] == 3
    m, meta = _model(path, "forced-grey")
    assert m.config["channels"] == 1 and meta["train_config"]["channels"] == 1
    assert main(["generate", "--project", str(path), "--model", "rgb", "--variations", "1",
                 "--name", "c", *FAST]) == 0
    with Image.open(_files(path, "c")[0]) as img:
        assert img.mode == "RGB"


def test_mixed_data_train_rgb_and_greyscale_data_can_be_forced_to_rgb(tmp_path, grey_project):
    path = _project(tmp_path / "m", "mixed")
    assert main(["train", "--project", str(path), "--name", "mix", *TRAIN]) == 0
    assert _model(path, "mix")[0].config["channels"] == 3
    assert main(["train", "--project", str(grey_project), "--name", "forced-rgb",
                 "--channels", "3", *TRAIN]) == 0
    assert _model(grey_project, "forced-rgb")[1]["train_config"]["channels"] == 3


def test_train_rcdm_resolves_channels_from_the_pixels(tmp_path):
    from engine.rcdm.model import load_rcdm
    from engine.rcdm.training import train_rcdm

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8), 3, axis=-1)
    colour = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    cond = rng.standard_normal((6, D)).astype(np.float32)
    cfg = TrainConfig(image_size=8, block_channels=(8, 16), cross_attention_dim=16,
                      attention_head_dim=8, steps=1, batch_size=2, warmup_steps=0,
                      checkpoint_every=0, preview_every=1)
    for name, pixels, channels in (("g", grey, 1), ("c", colour, 3)):
        out = train_rcdm(pixels, cond, cfg, tmp_path / name)
        model, config, _ = load_rcdm(Path(out["model_dir"]))
        assert config.channels == channels == model.unet.config.in_channels
        preview = next((tmp_path / name / "previews").glob("*.png"))
        with Image.open(preview) as img:
            assert img.mode == ("L" if channels == 1 else "RGB")


# --------------------------------------------------------------------- readers of the files


def test_encoders_classifier_data_and_export_read_L_files(grey_project, tmp_path):
    from engine import encoders
    from engine.data import load_pixels
    from engine.imagefolder import _write_resized
    from engine.project import Encoding, Project
    from engine.streams import ImageFiles

    if not _files_or_none(grey_project, "g-png"):
        assert main(["train", "--project", str(grey_project), "--name", "g", *TRAIN]) == 0
        assert main(["generate", "--project", str(grey_project), "--model", "g",
                     "--variations", "1", "--name", "g-png", *FAST]) == 0
    files = _files(grey_project, "g-png")[:4]
    pixels = load_pixels(files, 8)  # what the classifier's in-memory data and the encoders see
    assert pixels.shape == (len(files), 8, 8, 3) and is_grey(pixels)
    with Image.open(files[0]) as img:
        assert np.array_equal(pixels[0][..., 0], np.asarray(img))
    assert np.array_equal(ImageFiles(files, 8)[0], pixels[0])  # the streamed classifier data
    with Project(grey_project) as project:
        enc = project.list(Encoding)[0]
        encoder = encoders.load_encoder(project.abs(enc.state_path))
    emb = encoder.encode(pixels)
    assert emb.shape == (len(files), D) and np.isfinite(emb).all()
    # the re-encoding of the generation, as the curate stage makes it
    assert main(["encode", "--project", str(grey_project), "--generation", "g-png",
                 "--encoder", "pca", "--dim", str(D), "--image-size", "8"]) == 0
    # export: a file written at another size stays greyscale (copies are the file itself)
    _write_resized(files[0], tmp_path / "x.png", 12)
    _write_resized(files[0], tmp_path / "x.jpg", 12)
    for f in ("x.png", "x.jpg"):
        with Image.open(tmp_path / f) as img:
            assert img.mode == "L" and img.size == (12, 12)


def _files_or_none(path, name):
    try:
        return _files(path, name)
    except Exception:  # noqa: BLE001 - not generated yet (the test run alone)
        return None


def test_a_colour_source_of_a_greyscale_model_is_converted_to_L(tmp_path):
    from engine.rcdm import inversion
    from engine.rcdm.model import build_rcdm

    cfg = TrainConfig(channels=1, image_size=8, block_channels=(8, 16),
                      cross_attention_dim=16, attention_head_dim=8)
    model = build_rcdm(cfg, D).eval()
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x0 = inversion.to_model_space(model, colour)
    assert tuple(x0.shape) == (2, 1, 8, 8)
    expected = to_channels(colour, 1)[..., 0] / 127.5 - 1
    assert np.allclose(x0[:, 0].numpy(), expected, atol=1e-6)
    inv = inversion.invert(model, x0, rng.standard_normal((2, D)).astype(np.float32),
                           np.array([0, 1]), 3, 1.0)
    out = inversion.regenerate(model, inv, rng.standard_normal((2, D)).astype(np.float32))
    assert out.shape == (2, 8, 8, 1)


def test_generate_from_a_colour_file_with_a_greyscale_model(grey_project, tmp_path):
    if not _files_or_none(grey_project, "g-png"):
        assert main(["train", "--project", str(grey_project), "--name", "g", *TRAIN]) == 0
    src = tmp_path / "colour.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (10, 10, 3), np.uint8)).save(src)
    assert main(["generate", "--project", str(grey_project), "--model", "g", "--image",
                 str(src), "--variations", "1", "--name", "from-file", *FAST]) == 0
    assert main(["generate", "--project", str(grey_project), "--model", "g", "--image",
                 str(src), "--mode", "edit", "--direction", "c0:c1", "--strength", "0.5",
                 "--invert", "--name", "edited-file", *FAST]) == 0
    files = _files(grey_project, "from-file") + _files(grey_project, "edited-file")
    assert len(files) == 2
    for f in files:
        with Image.open(f) as img:
            assert img.mode == "L"


# ------------------------------------------------------------- model folders, old and adopted


def test_an_rgb_model_folder_of_before_loads_and_generates_as_before(tmp_path):
    """A folder saved before channels followed the data (``"channels": 3`` in its config):
    the same U-Net, RGB samples equal to the in-memory model's, RGB files."""
    import torch

    from engine.rcdm.generation import generate_variations
    from engine.rcdm.latent import image_shape
    from engine.rcdm.model import build_rcdm, load_rcdm, save_rcdm
    from engine.rcdm.sample import sample_images

    cfg = TrainConfig(channels=3, image_size=8, block_channels=(8, 16),
                      cross_attention_dim=16, attention_head_dim=8)
    torch.manual_seed(0)
    model = build_rcdm(cfg, D).eval()
    folder = save_rcdm(model, tmp_path / "old", cfg, D)
    meta = json.loads((folder / "rcdm.json").read_text())
    assert meta["train_config"]["channels"] == 3
    # the format of before: every other key as it was
    before = {k: v for k, v in TrainConfig(image_size=8).to_dict().items()}
    assert set(meta["train_config"]) == set(before)
    loaded, config, _ = load_rcdm(folder)
    assert config.channels == 3 and image_shape(loaded) == (8, 8, 3)
    cond = np.random.default_rng(0).standard_normal((3, D)).astype(np.float32)
    gc = GenerateConfig(sampler="ddim", steps=3)
    a = sample_images(model, cond, np.arange(3), gc)
    b = sample_images(loaded, cond, np.arange(3), gc)
    assert a.shape == (3, 8, 8, 3) and np.array_equal(a, b)
    rows = generate_variations(folder, cond, ["a", "b", "c"], np.zeros(3, np.int64), ["k"],
                               gc.replace(variations=1), tmp_path / "gen")
    for p, expected in zip(rows["path"], a):
        with Image.open(p) as img:
            assert img.mode == "RGB" and np.array_equal(np.asarray(img), expected)


def test_a_one_channel_diffusers_unet_is_a_greyscale_pixel_model(tmp_path):
    import shutil

    import torch

    from engine.rcdm.latent import image_shape
    from engine.rcdm.model import adopt_folder, build_rcdm, load_rcdm, save_rcdm

    cfg = TrainConfig(channels=1, image_size=8, block_channels=(8, 16),
                      cross_attention_dim=16, attention_head_dim=8)
    torch.manual_seed(0)
    folder = save_rcdm(build_rcdm(cfg, D), tmp_path / "m", cfg, D)
    hub = tmp_path / "hub"
    shutil.copytree(folder / "unet", hub / "unet")
    shutil.copy2(folder / "conditioner.safetensors", hub / "conditioner.safetensors")
    meta = adopt_folder(hub, tmp_path / "adopted")
    assert meta["train_config"]["space"] == "pixel" and meta["train_config"]["channels"] == 1
    model, _, _ = load_rcdm(tmp_path / "adopted")
    assert image_shape(model) == (8, 8, 1)


def test_fine_tuning_needs_the_same_channels(grey_project, tmp_path, capsys):
    from conftest import tiny_generation_project

    from engine.project import Model, Project

    rgb_path, rgb_id = tiny_generation_project(tmp_path / "rgb", dim=D)
    with Project(rgb_path) as project:
        rgb_dir = project.abs(project.get(Model, rgb_id).checkpoint)
    capsys.readouterr()
    # an RGB model on greyscale data: refused, and --channels 3 says how
    assert main(["train", "--project", str(grey_project), "--init", str(rgb_dir),
                 *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "RGB (3-channel)" in err and "greyscale (1-channel)" in err and "--channels 3" in err
    # an explicit --channels 1 on an RGB model is refused too
    assert main(["train", "--project", str(grey_project), "--init", str(rgb_dir),
                 "--channels", "1", *TRAIN]) == 2
    assert "--channels asks for greyscale" in capsys.readouterr().err
    assert main(["train", "--project", str(grey_project), "--init", str(rgb_dir),
                 "--channels", "3", "--name", "tuned-rgb", *TRAIN]) == 0
    assert _model(grey_project, "tuned-rgb")[0].config["channels"] == 3


# ---------------------------------------------------------------------------- latent space


def test_a_greyscale_latent_model_decodes_to_L(tmp_path):
    import torch
    from diffusers import AutoencoderKL

    from engine.rcdm.model import load_rcdm
    from engine.rcdm.sample import sample_images
    from engine.rcdm.training import train_rcdm

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                        layers_per_block=1)
    vae.save_pretrained(tmp_path / "vae")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    cond = rng.standard_normal((4, D)).astype(np.float32)
    cfg = TrainConfig(space="latent", vae_id=str(tmp_path / "vae"), channels=1, image_size=16,
                      block_channels=(8, 16), cross_attention_dim=16, attention_head_dim=8,
                      steps=1, batch_size=2, warmup_steps=0, checkpoint_every=0,
                      preview_every=1)
    out = train_rcdm(pixels, cond, cfg, tmp_path / "run")
    model, config, _ = load_rcdm(Path(out["model_dir"]))
    assert config.channels == 1 and model.unet.config.in_channels == 4
    images = sample_images(model, cond[:2], np.arange(2), GenerateConfig(sampler="ddim",
                                                                          steps=2))
    assert images.shape == (2, 16, 16, 1)
