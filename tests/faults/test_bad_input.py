"""The bad-input catalogue: files, folders and class names made by the tests themselves.

Each refused file gets a one-line reason; a class left without a valid image fails the
import with a DatasetError naming the class, the file and the reason, and leaves the project
exactly as it was (rows and files). Awkward but valid images (CMYK, 16-bit, palette, alpha,
greyscale, EXIF-rotated, 1x1, 10,000 x 10,000) are imported as RGB PNGs. Single-file checks
of each kind live in tests/test_data.py; here they go through a whole import.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import import_folder
from PIL import Image
from test_data import _png_with_header_size

from engine.config import ImportConfig
from engine.data import validate_image
from engine.errors import DatasetError, JobError

from .conftest import ROOT, assert_repairable, snapshot

RNG = np.random.default_rng(0)
NOISY = Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
SIGNATURE = {"png": 8, "jpg": 2, "webp": 12}  # bytes that identify the format
PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def _encoded(ext: str) -> bytes:
    buf = io.BytesIO()
    NOISY.save(buf, format=PIL_FORMAT[ext])
    return buf.getvalue()


def _garbled(data: bytes, start: int, n: int = 40) -> bytes:
    out = bytearray(data)
    out[start:start + n] = bytes((i * 37 + 11) % 256 for i in range(n))
    return bytes(out)


# name -> (file name, bytes maker, expected words in the reason)
REFUSED = {
    **{f"zero-byte {e}": (f"zero.{e}", lambda e=e: b"", "empty file (0 bytes)")
       for e in SIGNATURE},
    **{f"truncated {e}": (f"cut.{e}", lambda e=e: _encoded(e)[: len(_encoded(e)) // 2],
                          "corrupt or truncated") for e in SIGNATURE},
    **{f"damaged header {e}": (f"bad.{e}", lambda e=e: _garbled(_encoded(e), SIGNATURE[e]),
                               "not an image") for e in SIGNATURE},
    "damaged png data (CRC)": ("crc.png", lambda: _garbled(_encoded("png"),
                                                           len(_encoded("png")) // 2),
                               "corrupt or truncated"),
    "text with an image extension": ("notes.jpg", lambda: b"just some text\n" * 20,
                                     "not an image"),
    "decompression bomb (header 12000x10000)": ("bomb.png",
                                                lambda: _png_with_header_size(12_000, 10_000),
                                                "decompression bomb refused"),
    "decompression bomb (header 100000^2)": ("bomb2.png",
                                             lambda: _png_with_header_size(100_000, 100_000),
                                             "decompression bomb"),
}


def _good(path: Path, color=(200, 30, 30), size=(6, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_class_of_only_bad_files_fails_the_import_and_changes_nothing(project, tmp_path,
                                                                         case):
    name, make, reason = REFUSED[case]
    src = tmp_path / "src"
    for i in range(3):
        _good(src / "good" / f"{i}.png")
    (src / "zbad").mkdir(parents=True)
    (src / "zbad" / name).write_bytes(make())
    img, why = validate_image(src / "zbad" / name, ImportConfig())
    assert img is None and reason in why
    before = snapshot(project, without_jobs=True)
    with pytest.raises((DatasetError, JobError)) as info:
        import_folder(project, src, "x")
    message = str(info.value)
    assert "'zbad'" in message and name in message and reason in message
    # class 'good' was written first; nothing is left but the failed job's own record
    assert snapshot(project, without_jobs=True) == before
    assert_repairable(project)


def _write_awkward(folder: Path) -> dict[str, tuple[int, int]]:
    """Valid images in every awkward mode; returns file -> expected stored (w, h)."""
    folder.mkdir(parents=True)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(np.array([[0, 65535, 1000, 9]], dtype=np.uint16)).save(folder / "deep.png")
    pal = Image.new("P", (5, 3))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(folder / "pal.png")
    pal.save(folder / "pal_t.png", transparency=0)
    Image.new("RGBA", (4, 4), (0, 0, 255, 0)).save(folder / "alpha.png")
    Image.new("LA", (3, 3), (9, 128)).save(folder / "la.png")
    Image.new("L", (7, 2), 77).save(folder / "grey.png")
    Image.new("1", (2, 2), 1).save(folder / "bilevel.png")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(folder / "one.png")
    NOISY.save(folder / "webp.webp", format="WEBP", lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    Image.new("RGB", (8, 4)).save(folder / "rotated.jpg", exif=exif.tobytes())
    return {"cmyk.jpg": (8, 8), "deep.png": (4, 1), "pal.png": (5, 3), "pal_t.png": (5, 3),
            "alpha.png": (4, 4), "la.png": (3, 3), "grey.png": (7, 2), "bilevel.png": (2, 2),
            "one.png": (1, 1), "webp.webp": (32, 32), "rotated.jpg": (4, 8)}


def test_awkward_modes_import_as_rgb_and_bad_files_are_listed(project, tmp_path):
    src = tmp_path / "src"
    expected = _write_awkward(src / "awkward")
    for i in range(2):
        _good(src / "mixed" / f"{i}.png")
    for case, (name, make, _) in REFUSED.items():
        (src / "mixed" / name).write_bytes(make())
    ds = import_folder(project, src, "awkward")
    images = project.images(ds.id)
    assert ds.num_images == len(expected) + 2 == len(images)
    skipped = {s["path"]: s["reason"] for s in json.loads(ds.skipped_json)}
    assert set(skipped) == {f"mixed/{name}" for name, _, _ in REFUSED.values()}
    for name, _, reason in REFUSED.values():
        assert reason in skipped[f"mixed/{name}"]
    stored = {Path(s).name: (w, h) for s, w, h in
              zip(images["source_path"], images["width"], images["height"])}
    assert {k: stored[k] for k in expected} == expected
    # 8-bit RGB / grey PNG and WebP are kept byte for byte (issue 17); the awkward rest is
    # converted to RGB PNG, and the dataset's file record says which is which
    kept = {"grey.png", "one.png", "webp.webp", "0.png", "1.png"}
    record = pd.read_parquet(project.abs(ds.root) / "files.parquet")
    assert record["idx"].tolist() == images["idx"].tolist()
    for source, rel, what in zip(images["source_path"], images["path"], record["stored"]):
        name = Path(source).name
        assert what == ("kept" if name in kept else "converted"), name
        with Image.open(project.abs(rel)) as im:
            if name in kept:
                assert im.mode in ("RGB", "L")
                assert project.abs(rel).read_bytes() == (src / source).read_bytes()
            else:
                assert im.format == "PNG" and im.mode == "RGB", name
    assert check_clean(project)


def check_clean(project) -> bool:
    from engine.check import check_project

    return check_project(project).problems == []


_PEAK = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    from engine.config import ImportConfig
    from engine.data import validate_image
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    img, reason = validate_image(Path(sys.argv[1]), ImportConfig(max_pixels=int(sys.argv[2])))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"size": img.size if img else None, "reason": reason,
                      "growth_mb": (peak - base) / 1024, "seconds": time.perf_counter() - t}))
""")


def _validate_in_child(path: Path, max_pixels: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(max_pixels)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """10,000 x 10,000, one colour, 1-bit: about 32 KB on disk, 12.5 MB to make."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (10_000, 10_000), 1).save(path)
    assert path.stat().st_size < 100_000
    return path


def test_a_10000x10000_image_is_refused_from_its_header_by_default(huge_png):
    got = _validate_in_child(huge_png, ImportConfig().max_pixels)
    assert got["size"] is None and "decompression bomb refused: 10000x10000" in got["reason"]
    assert got["growth_mb"] < 20, got  # nothing was decoded


def test_a_10000x10000_image_under_a_raised_limit_is_downscaled_in_bounded_memory(huge_png):
    got = _validate_in_child(huge_png, 10 ** 8)
    assert got["size"] == [1024, 1024] and got["reason"] == ""
    # one 8-bit RGB copy of 10^8 pixels is 300 MB; the peak stays below twice that
    assert got["growth_mb"] < 600, got


def test_an_empty_class_folder_fails_and_changes_nothing(project, tmp_path):
    src = tmp_path / "src"
    _good(src / "a" / "1.png")
    (src / "b").mkdir()
    (src / "b" / ".DS_Store").write_bytes(b"\0")  # hidden files are not images of the class
    before = snapshot(project, without_jobs=True)
    with pytest.raises((DatasetError, JobError), match="class 'b' has no image"):
        import_folder(project, src, "x")
    assert snapshot(project, without_jobs=True) == before


def test_thousands_of_classes(project, tmp_path):
    n = 2000
    src = tmp_path / "src"
    px = Image.new("RGB", (2, 2), (5, 6, 7))
    for c in range(n):
        (src / f"c{c:04d}").mkdir(parents=True)
        px.save(src / f"c{c:04d}" / "x.png")
    t = time.perf_counter()
    ds = import_folder(project, src, "many", ImportConfig(thumbnail_size=8))
    seconds = time.perf_counter() - t
    assert (ds.num_classes, ds.num_images, ds.num_train, ds.num_test) == (n, n, n, 0)
    assert json.loads(ds.classes_json) == sorted(f"c{c:04d}" for c in range(n))
    assert project.images(ds.id)["label"].tolist() == list(range(n))
    print(f"{n} classes imported in {seconds:.1f} s")
    assert check_clean(project)


def test_class_names_with_spaces_unicode_dots_and_separators(project, tmp_path):
    names = ["with space", "ünïcödé ✓ 猫", "v1.2", "dots..", "trailing.", "back\\slash",
             "semi;colon", "quote'\"", "-dash", "%20"]
    src = tmp_path / "src"
    for i, name in enumerate(names):
        _good(src / name / "a.png", color=(i * 20, 0, 0))
        _good(src / name / "b.png", color=(i * 20, 9, 0))
    _good(src / ".hidden" / "a.png")  # hidden folders (leading dot) are not classes
    _good(src / "..dots" / "a.png")
    # '/' cannot be in a file name; a nested folder is not a class but files of its class
    _good(src / "outer" / "inner" / "a.png")
    ds = import_folder(project, src, "names")
    classes = json.loads(ds.classes_json)
    assert classes == sorted(names + ["outer"])
    images = project.images(ds.id)
    assert sorted(set(images["class_name"])) == sorted(classes)
    assert "outer/inner/a.png" in set(images["source_path"])
    # stored paths never contain the class name: they are label numbers
    assert all(p.split("/")[3].isdigit() for p in images["path"])
    assert check_clean(project)


def test_symlink_loops_dangling_links_and_links_outside(project, tmp_path):
    src = tmp_path / "src"
    for c in ("a", "b"):
        for i in range(2):
            _good(src / c / f"{i}.png")
    os.symlink(src / "b", src / "a" / "to_b")  # a -> b ...
    os.symlink(src / "a", src / "b" / "to_a")  # ... -> a: a loop across classes
    os.symlink(src / "a", src / "a" / "self")  # a loop onto itself
    os.symlink(tmp_path / "nowhere.png", src / "a" / "dangling.png")
    outside = _good(tmp_path / "outside" / "o.png")
    os.symlink(outside, src / "b" / "linked.png")
    ds = import_folder(project, src, "links")
    per_class = project.images(ds.id).groupby("class_name").size().to_dict()
    # a: its 2 files + b's 2 files and the outside link seen through a/to_b (b is entered
    # once from a); b: its 2 files + the outside link + a's 2 files seen through b/to_a
    assert per_class == {"a": 5, "b": 5}
    assert ds.num_images == 10
    assert check_clean(project)
