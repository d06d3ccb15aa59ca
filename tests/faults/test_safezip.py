"""Uploaded zips: ``engine.safezip.extract_zip`` refuses traversal, absolute paths, links,
bombs and corrupt archives before anything reaches the disk, and unpacks a good ImageFolder
whole (then it imports like any folder)."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from conftest import import_folder
from PIL import Image

from engine.errors import DatasetError, StudioError
from engine.safezip import UnsafeArchiveError, extract_zip


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, entries: list[tuple[str, bytes]], links: dict[str, str] | None = None,
         method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _nothing_written(tmp_path: Path, dest: Path) -> None:
    assert not dest.exists()
    assert not any(p.name.endswith(".unzip.tmp") for p in dest.parent.iterdir())
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/rcdm-evil.png").exists()


def test_a_good_imagefolder_zip_unpacks_and_imports(project, tmp_path):

    z = _zip(tmp_path / "ok.zip", [("cats/", b""), ("cats/1.png", _png()),
                                   ("cats/2.png", _png()), ("dogs/a/1.png", _png()),
                                   ("dogs/2.png", _png())])
    dest = extract_zip(z, tmp_path / "out")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == [
        "cats/1.png", "cats/2.png", "dogs/2.png", "dogs/a/1.png"]
    ds = import_folder(project, dest, "zipped")
    assert (ds.num_classes, ds.num_images) == (2, 4)


@pytest.mark.parametrize("entries,links,words", [
    ([("cats/1.png", b"x"), ("../evil.png", b"x")], None, "leaves the folder"),
    ([("cats/../../evil.png", b"x")], None, "leaves the folder"),
    ([("/tmp/rcdm-evil.png", b"x")], None, "absolute path"),
    ([("C:/evil.png", b"x")], None, "absolute path"),
    ([("..\\evil.png", b"x")], None, "backslash"),
    ([("cats/1.png", b"x")], {"cats/link.png": "/etc/passwd"}, "symbolic link"),
    ([("cats/1.png", b"x")], {"cats": "../../"}, "symbolic link"),
], ids=["dotdot", "nested dotdot", "absolute", "drive letter", "backslash", "file link",
        "folder link"])
def test_entries_that_escape_are_refused_before_writing(tmp_path, entries, links, words):
    z = _zip(tmp_path / "bad.zip", entries, links)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=words):
        extract_zip(z, dest)
    _nothing_written(tmp_path, dest)


def test_a_zip_bomb_is_refused_by_its_declared_size(tmp_path):
    z = _zip(tmp_path / "bomb.zip", [("a/zeros.png", b"\0" * (20 << 20))])  # 20 MB -> 20 KB
    assert z.stat().st_size < 100_000
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        extract_zip(z, tmp_path / "out", max_bytes=10 << 20)
    _nothing_written(tmp_path, tmp_path / "out")


def test_a_zip_that_lies_about_its_sizes_is_refused(tmp_path):
    """Declared sizes say 1 byte each; the data is far larger. zipfile reads no more than the
    declared size, so the CRC check fails and nothing is kept (the byte counter of
    extract_zip is a second line behind it)."""
    z = _zip(tmp_path / "liar.zip", [("a/1.png", b"\0" * (3 << 20)),
                                     ("a/2.png", b"\0" * (3 << 20))], method=zipfile.ZIP_STORED)
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        infos = zf.infolist()
    # patch the central directory's uncompressed sizes (offset 24 in each record) to 1
    pos = 0
    for _ in infos:
        pos = data.index(b"PK\x01\x02", pos)
        data[pos + 24:pos + 28] = (1).to_bytes(4, "little")
        pos += 4
    z.write_bytes(bytes(data))
    with pytest.raises(UnsafeArchiveError, match="corrupt"):
        extract_zip(z, tmp_path / "out", max_bytes=1 << 20)
    _nothing_written(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED],
                         ids=["deflated", "stored"])
def test_a_lying_entry_after_a_good_one_is_refused_while_streaming(tmp_path, method,
                                                                   monkeypatch):
    """A good first entry, then one whose headers (local and central) declare 100 bytes but
    whose data inflates to 4 MB, with a limit (1 MB) above the declared total: the
    declared sizes pass, the first entry is written, and the liar is stopped while it
    streams (never more than its declared bytes are read); the temp folder, first entry
    included, is removed."""
    z = _zip(tmp_path / "liar.zip", [("a/1.png", _png()), ("a/2.png", b"\0" * (4 << 20))],
             method=method)
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        liar = zf.getinfo("a/2.png")
    # local header: uncompressed size at offset 22; central directory record: offset 24
    data[liar.header_offset + 22:liar.header_offset + 26] = (100).to_bytes(4, "little")
    central = data.rindex(b"PK\x01\x02")  # the last record is a/2.png's
    data[central + 24:central + 28] = (100).to_bytes(4, "little")
    z.write_bytes(bytes(data))
    with zipfile.ZipFile(z) as zf:
        assert sum(i.file_size for i in zf.infolist()) < 1 << 20  # the declared sizes pass
    opened = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):  # which entries extraction streams, in order
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(UnsafeArchiveError, match="corrupt"):
        extract_zip(z, tmp_path / "out", max_bytes=1 << 20)
    assert opened == ["a/1.png", "a/2.png"]  # refused while streaming, after a good entry
    _nothing_written(tmp_path, tmp_path / "out")


def test_too_many_files(tmp_path):
    z = _zip(tmp_path / "many.zip", [(f"a/{i}.png", b"x") for i in range(11)])
    with pytest.raises(UnsafeArchiveError, match="11 entries"):
        extract_zip(z, tmp_path / "out", max_files=10)
    _nothing_written(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("make", ["text", "truncated", "empty"])
def test_not_a_zip_or_a_corrupt_one(tmp_path, make):
    z = tmp_path / "x.zip"
    good = _zip(tmp_path / "good.zip", [("a/1.png", _png())]).read_bytes()
    z.write_bytes({"text": b"hello, not a zip\n" * 10, "truncated": good[: len(good) // 2],
                   "empty": b""}[make])
    with pytest.raises(UnsafeArchiveError, match="not a readable zip"):
        extract_zip(z, tmp_path / "out")
    _nothing_written(tmp_path, tmp_path / "out")


def test_a_corrupt_member_removes_everything(tmp_path):
    z = _zip(tmp_path / "crc.zip", [("a/1.png", _png()), ("a/2.png", b"A" * 5000)],
             method=zipfile.ZIP_STORED)
    data = z.read_bytes()
    i = data.index(b"A" * 100)
    z.write_bytes(data[:i] + b"B" + data[i + 1:])  # the CRC of a/2.png no longer matches
    with pytest.raises(UnsafeArchiveError, match="corrupt"):
        extract_zip(z, tmp_path / "out")
    _nothing_written(tmp_path, tmp_path / "out")


def test_an_existing_destination_is_not_overwritten(tmp_path):
    z = _zip(tmp_path / "ok.zip", [("a/1.png", _png())])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="exists already"):
        extract_zip(z, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert issubclass(UnsafeArchiveError, StudioError)
