"""engine.data: validation of awkward files, ImageFolder import, splits, demo, pixel caches."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import import_folder
from PIL import Image, ImageOps

from engine.config import ImportConfig
from engine.data import (
    SPLITS,
    dataset_pixels,
    load_pixels,
    make_thumbnail,
    pixels_cache_path,
    resize_pixels,
    split_images,
    split_warnings,
    stratified_split,
    validate_image,
    write_dataset_files,
    write_demo_dataset,
)
from engine.errors import Cancelled, DatasetError, JobError
from engine.progress import CancelToken
from engine.project import Dataset, Project

CFG = ImportConfig()
# a bad folder found by the import job's worker is reported as the job's failure
IMPORT_ERRORS = (DatasetError, JobError)


@pytest.fixture
def project(tmp_path):
    p = Project(tmp_path / "p")
    yield p
    p.close()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _rgb(w: int = 6, h: int = 4, color=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), color)


def _save_image(path: Path, color=(200, 30, 30), size=(6, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _rgb(*size, color=color).save(path)
    return path


def _png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid 1x1 PNG whose IHDR then claims ``width x height`` (CRC fixed)."""
    data = bytearray(_png_bytes(Image.new("L", (1, 1))))
    # signature (8) + length (4) + b"IHDR" (4) -> width, height at 16..24
    ihdr_start = 12
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_start:ihdr_start + 4 + 13])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


# ---------------------------------------------------------------------------- validate_image


def test_validate_plain_rgb(tmp_path):
    path = _save_image(tmp_path / "ok.png")
    img, reason = validate_image(path, CFG)
    assert reason == "" and img.mode == "RGB" and img.size == (6, 4)
    assert img.getpixel((0, 0)) == (200, 30, 30)


@pytest.mark.parametrize("name,content,expect", [
    ("empty.png", b"", "empty file"),
    ("text.jpg", b"this is not a picture, just text\n" * 3, "not an image"),
])
def test_validate_refuses_non_images(tmp_path, name, content, expect):
    path = tmp_path / name
    path.write_bytes(content)
    img, reason = validate_image(path, CFG)
    assert img is None and expect in reason


def test_validate_refuses_truncated_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for name, data in [("t.png", _png_bytes(noisy)), ("t.jpg", _jpeg_bytes(noisy))]:
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        img, reason = validate_image(path, CFG)
        assert img is None, name
        assert "truncated" in reason or "corrupt" in reason, reason


def test_validate_refuses_bomb_by_config_before_decoding(tmp_path):
    path = _save_image(tmp_path / "big.png", size=(20, 10))
    img, reason = validate_image(path, ImportConfig(max_pixels=199))
    assert img is None and "decompression bomb" in reason and "20x10" in reason
    img, reason = validate_image(path, ImportConfig(max_pixels=200))
    assert img is not None


@pytest.mark.parametrize("width,height", [
    (12_000, 10_000),  # above the default max_pixels, below Pillow's own error threshold
    (100_000, 100_000),  # far above: Pillow refuses it while opening
])
def test_validate_refuses_huge_header(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_header_size(width, height))
    assert struct.unpack(">II", path.read_bytes()[16:24]) == (width, height)
    img, reason = validate_image(path, CFG)
    assert img is None and "decompression bomb" in reason, reason


def test_validate_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)  # pure red
    assert Image.open(path).mode == "CMYK"
    img, _ = validate_image(path, CFG)
    r, g, b = img.getpixel((4, 4))
    assert img.mode == "RGB" and r > 240 and g < 15 and b < 15


def test_validate_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 65535, 128 * 257, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    img, _ = validate_image(path, CFG)
    arr = np.asarray(img)
    assert arr.shape == (1, 4, 3)
    np.testing.assert_array_equal(arr[0, :, 0], [0, 255, 128, 4])  # 1000 * 255 / 65535 = 3.9
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])


def test_validate_palette_rgba_la_grey_and_bilevel(tmp_path):
    # palette
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "pal.png")
    img, _ = validate_image(tmp_path / "pal.png", CFG)
    assert img.getpixel((1, 1)) == (10, 200, 30) and img.getpixel((0, 0)) == (0, 0, 0)
    # palette with a transparent index -> white
    pal.save(tmp_path / "pal_t.png", transparency=0)
    img, _ = validate_image(tmp_path / "pal_t.png", CFG)
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (10, 200, 30)
    # RGBA: opaque kept, transparent -> white, half -> blend
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 255), (0, 0, 255, 0), (0, 0, 0, 128)])
    rgba.save(tmp_path / "rgba.png")
    img, _ = validate_image(tmp_path / "rgba.png", CFG)
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((1, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in img.getpixel((2, 0)))
    # LA
    Image.new("LA", (2, 2), (0, 0)).save(tmp_path / "la.png")
    img, _ = validate_image(tmp_path / "la.png", CFG)
    assert img.getpixel((0, 0)) == (255, 255, 255)
    # greyscale
    Image.new("L", (2, 2), 77).save(tmp_path / "grey.png")
    img, _ = validate_image(tmp_path / "grey.png", CFG)
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (77, 77, 77)
    # 1-bit
    Image.new("1", (2, 2), 1).save(tmp_path / "bw.png")
    img, _ = validate_image(tmp_path / "bw.png", CFG)
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_validate_honours_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    src = Image.new("RGB", (8, 4), (0, 0, 0))
    src.paste((255, 255, 255), (0, 0, 2, 4))  # white band on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    src.save(path, exif=exif.tobytes(), quality=95)
    img, _ = validate_image(path, CFG)
    assert img.size == (4, 8)
    # the left band ends up on top after a 90 degree clockwise rotation
    assert img.getpixel((2, 0))[0] > 200 and img.getpixel((2, 7))[0] < 50


def test_validate_downscales_to_max_side(tmp_path):
    path = _save_image(tmp_path / "wide.png", size=(100, 50))
    img, _ = validate_image(path, ImportConfig(max_side=20))
    assert img.size == (20, 10)


def _plain_import(path: Path, max_side: int) -> Image.Image:
    """What validate_image did before it reduced big images: full decode, EXIF transpose,
    RGB, one LANCZOS resize."""
    from engine.data import _to_rgb

    with Image.open(path) as img:
        img.load()
        rgb = _to_rgb(ImageOps.exif_transpose(img))
    scale = max_side / max(rgb.size)
    size = (round(rgb.width * scale), round(rgb.height * scale))
    return rgb.resize(size, Image.Resampling.LANCZOS)


def test_big_images_import_as_a_plain_resize_did(tmp_path):
    # 3000x2000 with max_side 256 takes the bounded-memory path: the JPEG is decoded at 1/2
    # scale (draft), the PNGs are box-reduced by 3 in strips, then LANCZOS to 256
    h, w = 2000, 3000
    ramp = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)  # (h, w)
    rgb = np.stack([ramp, ramp[::-1, ::-1], np.full((h, w), 90.0)], -1).astype(np.uint8)
    rgb[:400, :600] = (10, 240, 10)  # a green block at the top left shows the orientation
    folder = tmp_path / "src"
    (folder / "a").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 2000 wide, 3000 high
    Image.fromarray(rgb).save(folder / "a" / "1.jpg", quality=95, exif=exif.tobytes())
    alpha = np.where(np.arange(w)[None, :] < w // 2, 255, 100).repeat(h, 0).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "a" / "2.png")
    Image.fromarray((ramp * 257).astype(np.uint16)).save(folder / "a" / "3.png")  # I;16
    assert Image.open(folder / "a" / "3.png").mode.startswith("I")

    config = ImportConfig(max_side=256, thumbnail_size=96)
    written = write_dataset_files(folder, tmp_path / "ds", "datasets/ds", "ds", config)
    images = written["images"]
    assert written["skipped"] == [] and len(images) == 3
    for name, (_, row) in zip(["1.jpg", "2.png", "3.png"], images.iterrows()):
        expected = _plain_import(folder / "a" / name, 256)
        stored = Image.open(tmp_path / "ds" / row["path"].removeprefix("datasets/ds/"))
        thumb = Image.open(tmp_path / "ds" / row["thumb"].removeprefix("datasets/ds/"))
        assert stored.mode == "RGB" and stored.size == expected.size, name
        assert (row["width"], row["height"]) == expected.size
        diff = np.abs(np.asarray(stored, np.int16) - np.asarray(expected, np.int16))
        assert diff.mean() < 0.5 and diff.max() <= 4, (name, diff.mean(), diff.max())
        expected_thumb = make_thumbnail(expected, 96)
        assert thumb.size == expected_thumb.size and max(thumb.size) == 96, name
        diff = np.abs(np.asarray(thumb, np.int16) - np.asarray(expected_thumb, np.int16))
        assert diff.mean() < 0.5, (name, diff.mean())
    # orientation: the JPEG shows 2000 wide, its green block (top left) now at the top right
    assert images["width"].iloc[0] == 171 and images["height"].iloc[0] == 256
    r, g, b = Image.open(tmp_path / "ds" / "images/0000/000000.png").getpixel((165, 10))
    assert g > 200 and r < 60


def test_thumbnail_sizes():
    assert make_thumbnail(_rgb(200, 100), 96).size == (96, 48)
    assert make_thumbnail(_rgb(8, 8), 96).size == (96, 96)  # crisp integer upscale
    assert make_thumbnail(_rgb(60, 30), 96).size == (60, 30)


# ---------------------------------------------------------------------------- splits


def test_stratified_split_counts_and_seed():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    split = stratified_split(labels, 0.2, seed=0)
    assert split.dtype.kind == "U" and set(split) == {"train", "test"}
    test_counts = [int(((labels == c) & (split == "test")).sum()) for c in range(4)]
    assert test_counts == [2, 1, 0, 1]
    np.testing.assert_array_equal(split, stratified_split(labels, 0.2, seed=0))
    others = [stratified_split(labels, 0.2, seed=s) for s in range(1, 6)]
    assert any(not np.array_equal(split, o) for o in others)
    # a class's split does not depend on the other classes
    alone = stratified_split(labels[:10], 0.2, seed=0)
    np.testing.assert_array_equal(alone, split[:10])


def test_stratified_split_keeps_one_train_image():
    split = stratified_split(np.array([0, 0, 1, 1]), 0.9, seed=3)
    for c in range(2):
        assert sorted(split[2 * c: 2 * c + 2]) == ["test", "train"]


def _split_counts(labels: np.ndarray, split: np.ndarray) -> dict[tuple[int, str], int]:
    return {(int(c), k): int(((labels == c) & (split == k)).sum())
            for c in np.unique(labels) for k in SPLITS}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_images_test_fixed_across_n_and_validation(seed):
    """Property: over N, seeds and validation settings, the four splits partition the
    images, the test split is the same whatever N and the validation fraction, validation
    never overlaps test, the counts per class are right, and smaller N nest in larger N."""
    rng = np.random.default_rng(100 + seed)
    sizes = rng.integers(20, 90, size=5)  # uneven classes
    labels = rng.permutation(np.repeat(np.arange(5), sizes))
    base_test = stratified_split(labels, 0.2, seed) == "test"
    for val_fraction in (0.0, 0.1, 0.25):
        trains = {}
        vals = []
        for n in (None, 50, 25, 10, 3):
            cfg = ImportConfig(test_fraction=0.2, split_seed=seed, val_fraction=val_fraction,
                               train_per_class=n)
            split = split_images(labels, cfg)
            assert set(split) <= set(SPLITS)
            # the test split is the one computed from all the images, whatever N and val
            np.testing.assert_array_equal(split == "test", base_test)
            # val never overlaps test (a partition: each image has exactly one split)
            assert not ((split == "val") & base_test).any()
            counts = _split_counts(labels, split)
            for c, size in enumerate(sizes):
                n_test = counts[(c, "test")]
                assert n_test == min(max(round(size * 0.2), 1), size - 1)
                expect_val = (min(max(round(size * val_fraction), 1), size - n_test - 1)
                              if val_fraction > 0 else 0)
                assert counts[(c, "val")] == expect_val
                rest = size - n_test - expect_val
                assert counts[(c, "train")] == (rest if n is None else min(n, rest))
                assert counts[(c, "unused")] == rest - counts[(c, "train")]
            vals.append(split == "val")
            trains[n] = set(np.flatnonzero(split == "train"))
            # the same config gives the same split
            np.testing.assert_array_equal(split, split_images(labels, cfg))
        # validation does not depend on N; smaller N are subsets of larger ones
        for v in vals[1:]:
            np.testing.assert_array_equal(v, vals[0])
        assert trains[3] <= trains[10] <= trains[25] <= trains[50] <= trains[None]


def test_split_images_defaults_keep_todays_split():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    np.testing.assert_array_equal(split_images(labels, ImportConfig(split_seed=4)),
                                  stratified_split(labels, 0.2, seed=4))


def test_split_warnings_name_small_classes():
    import pandas as pd

    labels = np.array([0] * 40 + [1] * 6)
    cfg = ImportConfig(val_fraction=0.1, train_per_class=10)
    split = split_images(labels, cfg)
    images = pd.DataFrame({"class_name": np.where(labels == 0, "big", "small"),
                           "split": split})
    warned = split_warnings(images, cfg)
    # one sentence per kind of small split, naming the classes and their counts
    assert warned == [
        "class 'small' has 1 test image, fewer than 5: a class's test accuracy moves in big "
        "steps; import more images or raise the test fraction",
        "every class has fewer than 5 validation images ('big': 4, 'small': 1): choices made "
        "on validation are noisy; import more images or raise the validation fraction",
        "class 'small' has 4 training images, fewer than the 10 asked: they train on what "
        "there is"]
    assert split_warnings(images, ImportConfig()) == [warned[0]]


def test_split_warnings_six_images_a_class_with_a_fifth_held_out():
    """Issue 16: 0.2 of 6 images a class leaves one test image each: one sentence says so."""
    import pandas as pd

    labels = np.repeat(np.arange(12), 6)
    cfg = ImportConfig(test_fraction=0.2)
    images = pd.DataFrame({"class_name": [f"circle-{c}" for c in labels],
                           "split": split_images(labels, cfg)})
    assert split_warnings(images, cfg) == [
        "every class has fewer than 5 test images ('circle-0': 1, 'circle-1': 1, "
        "'circle-2': 1, 'circle-3': 1, 'circle-4': 1 and 7 more): a class's test accuracy "
        "moves in big steps; import more images or raise the test fraction"]
    # 25 images a class hold out 5: no warning
    labels = np.repeat(np.arange(3), 25)
    images = pd.DataFrame({"class_name": labels.astype(str), "split": split_images(labels, cfg)})
    assert split_warnings(images, cfg) == []


def test_import_config_bounds():
    from engine.errors import InvalidConfigError

    for bad in (dict(train_per_class=0), dict(train_per_class=2.5),
                dict(train_per_class=True), dict(val_fraction=-0.1), dict(val_fraction=1.0),
                dict(test_fraction=0.5, val_fraction=0.5)):
        with pytest.raises(InvalidConfigError, match=str(list(bad.values())[-1])):
            ImportConfig(**bad)
    assert ImportConfig.from_dict(ImportConfig(train_per_class=5).to_dict()).train_per_class == 5


# ---------------------------------------------------------------------------- import


def _make_folder(root: Path) -> Path:
    """cat: 5 images (one in a sub-folder) + 1 corrupt + hidden; dog: 4 images."""
    colors = {"cat": (250, 10, 10), "dog": (10, 10, 250)}
    for cls, n in [("cat", 5), ("dog", 4)]:
        for i in range(n):
            sub = "nested/" if (cls == "cat" and i == 4) else ""
            _save_image(root / cls / f"{sub}{i:02d}.png", color=colors[cls], size=(10 + i, 6))
    (root / "cat" / "broken.jpg").write_bytes(b"not really a jpeg")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (root / ".hidden_class").mkdir()
    _save_image(root / ".hidden_class" / "x.png")
    (root / "README.txt").write_text("top-level files are not classes")
    return root


def _leftovers(project: Project) -> list[str]:
    folder = project.assets / "datasets"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_import_folder(project, tmp_path):
    src = _make_folder(tmp_path / "src")
    events = []
    ds = import_folder(project, src, "pets", ImportConfig(test_fraction=0.25),
                             progress=events.append)
    assert ds.name == "pets" and ds.source == str(src.absolute())
    assert (ds.num_classes, ds.num_images) == (2, 9)
    assert (ds.num_train, ds.num_test) == (7, 2)  # round(5 * .25) = 1, round(4 * .25) = 1
    assert ds.classes == ["cat", "dog"]
    assert json.loads(ds.skipped_json) == [
        {"path": "cat/broken.jpg", "reason": "not an image (unknown or unsupported format)"}]
    assert json.loads(ds.config_json)["test_fraction"] == 0.25
    assert events[-1].stage == "import" and events[-1].step == events[-1].total == 10

    images = project.images(ds.id)
    assert list(images["idx"]) == list(range(9))
    assert list(images["label"]) == [0] * 5 + [1] * 4
    assert images["source_path"].iloc[4] == "cat/nested/04.png"
    assert images["path"].iloc[5] == f"datasets/{ds.id}/images/0001/000005.png"
    assert (images.groupby("label")["split"].apply(lambda s: (s == "test").sum())
            == [1, 1]).all()
    assert images["id"].is_unique
    for _, row in images.iterrows():
        with Image.open(project.abs(row["path"])) as im:
            assert im.mode == "RGB" and im.size == (row["width"], row["height"])
        assert project.abs(row["thumb"]).is_file()
    assert ds.root == f"datasets/{ds.id}"
    assert _leftovers(project) == [ds.id]

    with pytest.raises(DatasetError, match="already exists"):
        import_folder(project, src, "pets")


def test_import_errors_leave_nothing(project, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        import_folder(project, tmp_path / "missing", "x")
    with pytest.raises(DatasetError, match="non-empty name"):
        import_folder(project, tmp_path, " ")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        import_folder(project, tmp_path / "file.txt", "x")
    flat = tmp_path / "flat"
    _save_image(flat / "a.png")
    with pytest.raises(IMPORT_ERRORS, match="no class sub-folders"):
        import_folder(project, flat, "x")

    empty = tmp_path / "empty_class"
    _save_image(empty / "a" / "1.png")
    (empty / "b").mkdir()
    with pytest.raises(IMPORT_ERRORS, match="class 'b' has no image"):
        import_folder(project, empty, "x")

    # class "a" is fully written before class "b" fails: everything must go
    bad = tmp_path / "bad_class"
    for i in range(3):
        _save_image(bad / "a" / f"{i}.png")
    (bad / "b").mkdir()
    (bad / "b" / "1.png").write_bytes(b"")
    (bad / "b" / "2.jpg").write_bytes(b"text")
    with pytest.raises(IMPORT_ERRORS) as info:
        import_folder(project, bad, "x")
    message = str(info.value)
    assert "'b'" in message and "2 file(s)" in message and "empty file" in message
    assert project.list(Dataset) == [] and project.query("SELECT * FROM image").empty
    assert _leftovers(project) == []


def test_import_cancel_leaves_nothing(project, tmp_path):
    src = _make_folder(tmp_path / "src")
    token = CancelToken()

    def cancel_after_first_image(event):
        if event.step >= 1:
            token.cancel()

    with pytest.raises(Cancelled):
        import_folder(project, src, "pets", progress=cancel_after_first_image,
                            cancel=token)
    assert project.list(Dataset) == [] and _leftovers(project) == []


def test_import_single_class_warns_and_symlink_loop_ends(project, tmp_path, caplog):
    src = tmp_path / "one"
    _save_image(src / "only" / "a.png")
    _save_image(src / "only" / "b.png")
    os.symlink(src / "only", src / "only" / "loop")  # a link back to its own folder
    with caplog.at_level("WARNING", logger="engine.data"):
        ds = import_folder(project, src, "one")
    assert ds.num_images == 2 and ds.num_classes == 1
    assert "single class" in caplog.text


# ---------------------------------------------------------------------------- demo + pixels


def test_write_demo_dataset(tmp_path):
    folder = write_demo_dataset(tmp_path / "digits")
    classes = sorted(p.name for p in folder.iterdir())
    assert classes == [str(i) for i in range(10)]
    files = sorted(folder.glob("*/*.png"))
    assert len(files) == 1797
    with Image.open(folder / "0" / "00000.png") as im:
        arr = np.asarray(im)
        assert im.mode == "L" and im.size == (8, 8)
    from sklearn.datasets import load_digits

    expected = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(arr, expected)
    assert arr[0, 0] == 0 and arr.max() > 200  # bright stroke on black


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    p = Project(tmp_path_factory.mktemp("demo") / "p")
    ds = import_folder(p, None, "digits", demo=True)
    yield p, ds
    p.close()


def test_import_demo(demo):
    project, ds = demo
    assert (ds.num_images, ds.num_classes) == (1797, 10)
    assert ds.num_train + ds.num_test == 1797 and 340 <= ds.num_test <= 380
    assert ds.classes == [str(i) for i in range(10)]
    assert "load_digits" in ds.source
    with pytest.raises(DatasetError, match="already exists"):
        import_folder(project, None, "digits", demo=True)


def test_dataset_pixels_cache(demo):
    project, ds = demo
    px = dataset_pixels(project, ds, 8)  # native size: no resampling
    assert isinstance(px, np.memmap) and px.dtype == np.uint8 and px.shape == (1797, 8, 8, 3)
    from sklearn.datasets import load_digits

    digits = load_digits()
    first = project.images(ds.id).iloc[0]
    expected = np.round(digits.images[int(first["source_path"].split("/")[1][:5])] * 255 / 16)
    np.testing.assert_array_equal(px[0, :, :, 1], expected.astype(np.uint8))

    cache = pixels_cache_path(project, ds, 16)
    big = dataset_pixels(project, ds, 16)
    assert big.shape == (1797, 16, 16, 3) and cache.is_file()
    stamp = cache.stat().st_mtime_ns
    again = dataset_pixels(project, ds, 16)
    assert cache.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(np.asarray(big), np.asarray(again))
    assert not list(cache.parent.glob("*.tmp"))


def test_load_and_resize_pixels(tmp_path):
    a = Image.new("RGB", (12, 6), (0, 0, 0))
    a.paste((255, 255, 255), (3, 0, 9, 6))  # the central 6x6 square is white
    a.save(tmp_path / "a.png")
    Image.new("L", (4, 4), 50).save(tmp_path / "b.png")
    px = load_pixels([tmp_path / "a.png", tmp_path / "b.png"], 6)
    assert px.shape == (2, 6, 6, 3) and px.dtype == np.uint8
    assert (px[0] == 255).all()  # center crop kept only the white square
    assert (np.abs(px[1].astype(int) - 50) <= 1).all()
    same = resize_pixels(px, 6)
    assert same is px
    assert resize_pixels(px, 3).shape == (2, 3, 3, 3)
