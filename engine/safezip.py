"""Safe extraction of an uploaded zip (an ImageFolder sent through the browser).

``extract_zip`` reads the archive's central directory first and refuses it, writing nothing,
when an entry would leave ``dest`` (``../``, absolute paths, drive letters, backslashes
used as separators), is a symbolic link or a special file, or when the archive would unpack
to more than ``max_bytes`` bytes or ``max_files`` files (a zip bomb). The declared sizes are
not trusted: every entry is streamed and counted while it is written, into a temp folder
that is renamed into place only when the whole archive is out. Any failure removes it.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from engine.errors import DatasetError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024**3  # 20 GiB
DEFAULT_MAX_FILES = 2_000_000
_CHUNK = 1 << 20


class UnsafeArchiveError(DatasetError):
    """An uploaded archive is corrupt, escapes its folder, holds links, or is a zip bomb."""


def _safe_name(name: str) -> PurePosixPath:
    """The entry's relative path, or UnsafeArchiveError when it could leave the folder."""
    if "\\" in name:
        raise UnsafeArchiveError(f"entry {name!r} uses a backslash; refusing a path that "
                                 f"may leave the folder on Windows")
    if "\0" in name:
        raise UnsafeArchiveError(f"entry {name!r} holds a NUL byte")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchiveError(f"entry {name!r} is an absolute path")
    if any(part == ".." for part in path.parts):
        raise UnsafeArchiveError(f"entry {name!r} leaves the folder ('..')")
    return path


def _kind(info: zipfile.ZipInfo) -> str:
    """'dir', 'file', or 'link' / 'special' from the Unix mode bits (when the zip has them)."""
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip has no Unix file type
    if kind == stat.S_IFLNK:
        return "link"
    if info.is_dir():
        return "dir"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special"
    return "file"


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsafeArchiveError(f"{path.name} is not a readable zip file ({exc})") from exc


def _plan(archive: zipfile.ZipFile, path: Path, max_bytes: int,
          max_files: int) -> list[tuple[zipfile.ZipInfo, PurePosixPath, str]]:
    """(entry, safe relative name, kind) of every entry, from the central directory alone."""
    infos = archive.infolist()
    if len(infos) > max_files:
        raise UnsafeArchiveError(f"{path.name} holds {len(infos):,} entries, more than "
                                 f"the limit of {max_files:,}")
    plan = []
    declared = 0
    for info in infos:
        rel = _safe_name(info.filename)
        kind = _kind(info)
        if kind in ("link", "special"):
            what = "symbolic link" if kind == "link" else "special file"
            raise UnsafeArchiveError(f"entry {info.filename!r} is a {what}; only files "
                                     f"and folders are accepted")
        declared += info.file_size
        if declared > max_bytes:
            raise UnsafeArchiveError(f"{path.name} unpacks to more than {max_bytes:,} "
                                     f"bytes (a zip bomb?)")
        plan.append((info, rel, kind))
    return plan


def check_zip(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES,
              max_files: int = DEFAULT_MAX_FILES) -> int:
    """The checks ``extract_zip`` makes before writing anything (names, links, entry count,
    declared sizes), reading only the archive's directory: quick enough for a request
    handler, so a hostile zip is refused at once; the extraction (a job) still counts the real
    bytes. Returns the number of entries.

    Raises:
        UnsafeArchiveError: as ``extract_zip``, from the directory.
    """
    path = Path(path)
    with _open(path) as archive:
        return len(_plan(archive, path, max_bytes, max_files))


def extract_zip(path: str | os.PathLike, dest: str | os.PathLike,
                max_bytes: int = DEFAULT_MAX_BYTES, max_files: int = DEFAULT_MAX_FILES) -> Path:
    """Unpack ``path`` into the new folder ``dest``, all or nothing.

    Args:
        path: the zip file.
        dest: a folder that must not exist yet; it appears only when every entry is out.
        max_bytes: most bytes the entries may unpack to (counted while writing).
        max_files: most files (and folders) the archive may hold.

    Returns:
        ``dest``.

    Raises:
        UnsafeArchiveError: not a zip, corrupt, an entry outside ``dest``, a symbolic link
            or special file, too many files, or more than ``max_bytes`` unpacked.
        DatasetError: ``dest`` exists already.
    """
    path, dest = Path(path), Path(dest)
    if dest.exists():
        raise DatasetError(f"{dest} exists already; extract into a new folder")
    archive = _open(path)
    tmp = dest.with_name(f".{dest.name}.unzip.tmp")
    with archive:
        # 1. every name and kind, and the declared sizes, before writing anything
        plan = _plan(archive, path, max_bytes, max_files)
        # 2. stream each entry, counting the real bytes (declared sizes can lie)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            written = 0
            for info, rel, kind in plan:
                if not rel.parts:
                    continue
                target = tmp.joinpath(*rel.parts)
                if kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "xb") as out:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_bytes:
                            raise UnsafeArchiveError(
                                f"{path.name} unpacks to more than {max_bytes:,} bytes "
                                f"(a zip bomb?)")
                        out.write(chunk)
            os.replace(tmp, dest)
        except UnsafeArchiveError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except FileExistsError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UnsafeArchiveError(f"{path.name} holds {exc.filename!r} twice") from exc
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError,
                NotImplementedError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UnsafeArchiveError(f"{path.name} is corrupt ({exc})") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("extracted %d entries of %s to %s (%d bytes)", len(plan), path, dest, written)
    return dest
