"""Import modes (issue 17): the user's bytes kept by hard link, copy or reference; only what
must be converted is converted; ``check`` sees a source changed or deleted after the import;
a killed import resumes where it stopped; the worker pool cancels cleanly."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import import_folder
from PIL import Image

from engine import data
from engine.check import check_project
from engine.config import ImportConfig
from engine.errors import Cancelled, DatasetError, InvalidConfigError
from engine.jobs import JobManager, read_progress
from engine.progress import CancelToken
from engine.project import Dataset, Job

CONVERTED = {"cmyk.jpg": (8, 8), "deep.png": (4, 1), "rotated.jpg": (4, 8)}


def write_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """Two classes of noise JPEGs (RGB and greyscale: kept), plus in class ``b`` a CMYK JPEG,
    a 16-bit PNG and an EXIF-rotated JPEG (converted)."""
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (24, 32, 3) if i % 3 else (24, 32)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                root / c / f"{i:03d}.jpg", quality=90)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(root / "b" / "cmyk.jpg", quality=95)
    Image.fromarray(np.array([[0, 65535, 1000, 9]], dtype=np.uint16)).save(root / "b" / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    Image.new("RGB", (8, 4)).save(root / "b" / "rotated.jpg", exif=exif.tobytes())
    return root


def _stored(project, ds):
    images = project.images(ds.id)
    record = data.file_record(project, ds)
    assert record is not None and record["idx"].tolist() == images["idx"].tolist()
    return images, record


@pytest.mark.parametrize("mode", ["link", "copy", "reference"])
def test_import_modes_keep_the_bytes_and_convert_only_what_must_be(project, tmp_path, mode):
    src = write_folder(tmp_path / "src")
    ds = import_folder(project, src, "pets", ImportConfig(mode=mode, workers=2))
    images, record = _stored(project, ds)
    assert ds.num_images == 23 and ds.config["mode"] == mode
    how = {"link": "linked", "copy": "copied", "reference": "referenced"}[mode]
    assert data.stored_counts(project, ds) == {how: 20, "converted": 3}
    for row, what, via in zip(images.itertuples(), record["stored"], record["how"]):
        source = src / row.source_path
        stored = project.abs(row.path)
        assert project.abs(row.thumb).is_file()
        assert project.assets.resolve() in project.abs(row.thumb).parents
        name = source.name
        if name in CONVERTED:
            assert (what, via) == ("converted", "written")
            assert project.assets.resolve() in stored.parents and stored.suffix == ".png"
            with Image.open(stored) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", CONVERTED[name])
            assert (row.width, row.height) == CONVERTED[name]
            continue
        assert (what, via) == ("kept", how)
        assert stored.read_bytes() == source.read_bytes()  # the user's bytes
        assert (row.width, row.height) == Image.open(source).size
        if mode == "reference":
            assert row.path == str(source) and stored == source.resolve()
        else:
            assert stored.suffix == ".jpg" and project.assets.resolve() in stored.parents
            assert os.path.samefile(stored, source) == (mode == "link")
    # the CMYK red, the 16-bit scale and the rotation, as the PNG path always did
    red = images[images["source_path"] == "b/cmyk.jpg"].iloc[0]
    r, g, b = Image.open(project.abs(red["path"])).getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15
    # every stage reads them the same way: the pixel cache, whatever the mode
    px = data.dataset_pixels(project, ds, 8)
    assert px.shape == (23, 8, 8, 3)
    assert check_project(project).problems == []


def test_modes_give_the_same_pixels_and_splits(project, tmp_path):
    src = write_folder(tmp_path / "src")
    made = {m: import_folder(project, src, m, ImportConfig(mode=m)) for m in
            ("link", "copy", "reference")}
    first = project.images(made["link"].id)
    for ds in made.values():
        other = project.images(ds.id)
        assert other["split"].tolist() == first["split"].tolist()
        assert other["source_path"].tolist() == first["source_path"].tolist()
    pixels = [np.asarray(data.dataset_pixels(project, ds, 12)) for ds in made.values()]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    np.testing.assert_array_equal(pixels[0], pixels[2])


def test_check_reports_sources_changed_or_deleted_after_import(project, tmp_path):
    src = write_folder(tmp_path / "src")
    linked = import_folder(project, src, "linked", ImportConfig(mode="link"))
    copied = import_folder(project, src, "copied", ImportConfig(mode="copy"))
    ref_src = write_folder(tmp_path / "ref", seed=1)
    referenced = import_folder(project, ref_src, "referenced", ImportConfig(mode="reference"))
    assert check_project(project, hashes=True).problems == []

    def row_of(ds, source):
        images = project.images(ds.id)
        return images[images["source_path"] == source].iloc[0]

    # a linked source edited in place: the project's file is the same file
    with open(src / "a" / "001.jpg", "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"\0" * 10)
    # a referenced source deleted, another rewritten
    (ref_src / "a" / "002.jpg").unlink()
    (ref_src / "b" / "004.jpg").write_bytes((ref_src / "b" / "005.jpg").read_bytes())
    # a linked source deleted: the project keeps its bytes (not a problem)
    (src / "b" / "000.jpg").unlink()
    report = check_project(project)
    found = {(p["kind"], p["row"]) for p in report.problems}
    assert found == {
        ("changed_file", f"image:{row_of(linked, 'a/001.jpg')['id']}"),
        ("missing_file", f"image:{row_of(referenced, 'a/002.jpg')['id']}"),
        ("changed_file", f"image:{row_of(referenced, 'b/004.jpg')['id']}")}, report.problems
    assert not report.ok
    missing = [p for p in report.problems if p["kind"] == "missing_file"][0]
    assert missing["path"] == str(ref_src / "a" / "002.jpg")
    # the copy is the project's own: untouched by any of it
    assert project.abs(row_of(copied, "a/001.jpg")["path"]).stat().st_size < \
        (src / "a" / "001.jpg").stat().st_size
    # same size and time, other bytes: only the full hash check sees it
    path = project.abs(row_of(copied, "a/003.jpg")["path"])
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    row = f"image:{row_of(copied, 'a/003.jpg')['id']}"
    assert row not in {p["row"] for p in check_project(project).problems}
    hashed = [p for p in check_project(project, hashes=True).problems if p["row"] == row]
    assert [p["kind"] for p in hashed] == ["changed_file"] and "other content" in \
        hashed[0]["message"]


def test_reference_mode_needs_a_folder_that_stays_and_bounds(project, tmp_path):
    from engine.stages import import_stage

    with pytest.raises(DatasetError, match="reference mode"):
        import_stage.prepare(project, None, "d", ImportConfig(mode="reference"), demo=True)
    with pytest.raises(InvalidConfigError, match="mode must be one of"):
        ImportConfig(mode="symlink")
    with pytest.raises(InvalidConfigError, match="workers must be in"):
        ImportConfig(workers=65)
    # a path outside the assets and outside every referenced folder is still refused
    from engine.errors import StudioError

    with pytest.raises(StudioError, match="outside"):
        project.abs(str(tmp_path / "elsewhere.jpg"))


def test_a_killed_import_resumes_where_it_stopped(project, tmp_path, monkeypatch):
    """The worker (two worker processes of its own) is killed mid-import; its retry goes on
    from the chunks done, rewrites none of their files, and gives the dataset a fresh import
    gives."""
    from engine.stages import import_stage
    from engine.worker import FAULT_HOLD_ENV, FAULT_HOLD_FILE

    src = write_folder(tmp_path / "src", per_class=40)  # 83 files: chunks of 11 for 2 workers
    jobs = JobManager(project)
    # pause at the first progress report after a chunk (reports are throttled to 10 a
    # second, so a loaded machine may report several chunks at once: no fixed count)
    monkeypatch.setenv(FAULT_HOLD_ENV, "1")
    job = jobs.submit(import_stage.prepare(project, src, "big",
                                           ImportConfig(mode="link", workers=2)))
    start = time.time()
    while not (jobs.folder(job) / FAULT_HOLD_FILE).exists():
        assert time.time() - start < 300, "the import never paused"
        jobs.poll()
        now = project.get(Job, job.id)
        assert now.status in ("queued", "running"), f"{now.status}: {now.error}"
        time.sleep(0.2)
    monkeypatch.delenv(FAULT_HOLD_ENV)
    work_root = Path(json.loads((jobs.folder(job) / "spec.json").read_text())
                     ["params"]["work_root"])
    before = {p: p.stat().st_mtime_ns for p in (work_root / "thumbs").rglob("*.*")}
    journal = (work_root / ".import" / "done.jsonl").read_text().splitlines()
    done = {r["pos"] for line in journal for r in json.loads(line)}
    assert 8 <= len(done) < 83  # at least one chunk, not all of them
    os.killpg(job.pid, signal.SIGKILL)
    time.sleep(0.5)
    fresh = JobManager(project)
    fresh.reconcile()
    assert project.get(Job, job.id).status == "interrupted" and project.list(Dataset) == []
    assert work_root.is_dir()  # kept for the retry
    fresh.retry(job.id)
    job = fresh.wait(job.id, timeout=180)
    assert job.status == "done", job.error
    events = read_progress(fresh.folder(job))
    resumed = [e for e in events if e["message"].startswith("resuming")]
    assert len(resumed) == 1 and resumed[0]["step"] == len(done)
    ds = project.get(Dataset, job.result_id)
    root = project.abs(ds.root)
    assert not (root / ".import").exists() and not work_root.exists()
    # the files of the chunks done before the kill were not written again
    for p, mtime in before.items():
        pos = int(p.stem)
        if pos in done:
            assert (root / "thumbs" / p.parent.name / p.name).stat().st_mtime_ns == mtime
    again = import_folder(project, src, "again", ImportConfig(mode="link"))
    a, b = project.images(ds.id), project.images(again.id)
    for col in ("source_path", "split", "width", "height", "label"):
        assert a[col].tolist() == b[col].tolist(), col
    assert [Path(p).name for p in a["path"]] == [Path(p).name for p in b["path"]]
    assert check_project(project).problems == []


def test_a_cancelled_parallel_import_leaves_nothing(project, tmp_path):
    src = write_folder(tmp_path / "src", per_class=40)
    token = CancelToken()

    def cancel_midway(event):
        if 0 < event.step < event.total:
            token.cancel()

    with pytest.raises(Cancelled):
        import_folder(project, src, "x", ImportConfig(workers=2), progress=cancel_midway,
                      cancel=token)
    assert project.list(Dataset) == []
    assert not (project.assets / "datasets").exists() or \
        not any((project.assets / "datasets").iterdir())
    assert (src / "a" / "000.jpg").is_file()  # the user's files are untouched


def test_a_kept_jpeg_is_fully_decoded_even_at_reduced_scale(project, tmp_path):
    """A big JPEG is decoded at a reduced scale for its thumbnail (DCT scaling), which still
    decodes every block: a truncated one is skipped, its thumbnail is right."""
    import io

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=90)
    raw = buf.getvalue()
    for c in ("a", "b"):
        (tmp_path / "src" / c).mkdir(parents=True)
        (tmp_path / "src" / c / "ok.jpg").write_bytes(raw)
    (tmp_path / "src" / "a" / "cut.jpg").write_bytes(raw[: int(len(raw) * 0.9)])
    ds = import_folder(project, tmp_path / "src", "big")
    assert [s["path"] for s in ds.skipped] == ["a/cut.jpg"]
    assert "truncated" in ds.skipped[0]["reason"]
    row = project.images(ds.id).iloc[0]
    assert (row["width"], row["height"]) == (600, 400)
    with Image.open(project.abs(row["thumb"])) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (96, 64)
