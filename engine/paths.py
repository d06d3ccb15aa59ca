"""Names and paths: the one place where a name given by a user (or made from one) is checked
before it is stored, turned into a safe path component before it reaches the filesystem, and
where a path is checked to stay inside a folder.

- ``check_name``: a name typed by a user (dataset, model, generation, selection, experiment,
  evaluation): not empty, at most ``MAX_NAME_CHARS`` characters, no control character, no path
  separator, no ``..``. ``nested=True`` accepts ``/`` between parts (the evaluations of an
  experiment are named ``experiment/run/seed0``), each part checked like a name.
- ``sanitize_name``: any name -> one safe path component (for a class folder, a file, the
  default folder of an export named after its selection).
- ``inside``: ``path`` with symlinks resolved, refused unless it lies in ``root``.
- ``projects_root`` / ``resolve_project``: the projects folder, and what a project reference
  (a bare name, or a path) means — the same rule in the command line and the studio, so
  ``--project demo`` and the Projects tab's demo are one project.
- ``new_memmap``: a new ``.npy`` array file, memory-mapped, its disk space reserved first
  (a write into a memory map on a full disk is a SIGBUS that kills the process; a
  reservation is an ``OSError`` the caller can report).
"""

from __future__ import annotations

import errno
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from engine.errors import InvalidConfigError

MAX_NAME_CHARS = 120  # a name typed by a user
MAX_NESTED_CHARS = 1000  # a nested name (experiment/run/seed): several names and their labels
MAX_NAME_BYTES = 120  # a path component: well under the 255-byte limit of common filesystems
_SEPARATORS = ("/", "\\")
_CONTROL = ("Cc", "Cf", "Cs", "Zl", "Zp")  # control, format, surrogate, line/paragraph breaks
_FORBIDDEN = re.compile(r'[/\\<>:"|?*]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


def check_name(name: object, what: str = "name", nested: bool = False) -> str:
    """``name`` without its outer spaces, when it is a valid name; else one sentence.

    Args:
        name: the name as given (a CLI flag, a form field, a Python argument).
        what: what it names, for the message ("selection name").
        nested: accept ``/`` between non-empty parts (each part is then checked as a name).

    Raises:
        InvalidConfigError: not a string, empty, too long, a control character (NUL, a line
            break...), a path separator (``/`` unless ``nested``, ``\\``), or ``..``.
    """
    if not isinstance(name, str):
        raise InvalidConfigError(f"{what} must be text, got {name!r}")
    text = name.strip()
    limit = MAX_NESTED_CHARS if nested else MAX_NAME_CHARS
    if not text:
        raise InvalidConfigError(f"{what} must not be empty, got {name!r}")
    if len(text) > limit:
        raise InvalidConfigError(f"{what} must be at most {limit} characters, got "
                                 f"{len(text)} ({text[:40]!r}...)")
    bad = sorted({ch for ch in text if unicodedata.category(ch) in _CONTROL})
    if bad:
        raise InvalidConfigError(f"{what} must not contain control characters, got {name!r}")
    parts = text.split("/") if nested else [text]
    for part in parts:
        if "\\" in part or "/" in part:
            raise InvalidConfigError(f"{what} must not contain a path separator ('/' or "
                                     f"'\\'), got {name!r}")
        if not part.strip() or ".." in part or part.strip() == ".":
            raise InvalidConfigError(f"{what} must not contain '..', '.' or empty parts "
                                     f"(it could name a folder elsewhere), got {name!r}")
    return text


def sanitize_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """A safe single path component for any name (a class, a file, a selection).

    Unicode is kept (NFC-normalised) and inner spaces are kept. Replaced by "_": path
    separators, the characters Windows forbids (``<>:"|?*``), control and format characters
    (Unicode categories Cc, Cf), and leading dots (so "." / ".." / hidden names cannot occur).
    Trailing dots and spaces are stripped (Windows drops them), the result is capped at
    ``max_bytes`` UTF-8 bytes on a character boundary, Windows device names (CON, NUL, COM1,
    ... also with an extension) get a leading "_", and an empty result becomes "_".

    Distinct names can map to the same result ("a/b" and "a_b"): callers that need distinct
    components add a suffix or an id.
    """
    text = unicodedata.normalize("NFC", str(name))
    chars = []
    for ch in text:
        if unicodedata.category(ch) in _CONTROL or _FORBIDDEN.match(ch):
            chars.append("_")
        else:
            chars.append(ch)
    text = "".join(chars).strip()
    stripped = text.lstrip(".")
    text = "_" * (len(text) - len(stripped)) + stripped
    text = text.rstrip(". ")
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:
        text = encoded[:max_bytes].decode("utf-8", errors="ignore").rstrip(". ")
    if text.split(".")[0].upper().rstrip(" ") in _WINDOWS_RESERVED:
        text = "_" + text
    return text or "_"


def inside(path: str | os.PathLike, root: str | os.PathLike, what: str = "folder",
           where: str = "") -> Path:
    """``path`` (``~`` expanded, symlinks resolved) when it is ``root`` or lies under it.

    Args:
        path: the path to check; a relative one is taken relative to ``root``.
        root: the folder it must stay in.
        what: what the path is, for the message ("export folder").
        where: what ``root`` is, for the message (default: its path).

    Raises:
        InvalidConfigError: the resolved path leaves ``root`` (``..``, an absolute path
            elsewhere, a symlink pointing out), or is not a usable path (a NUL byte).
    """
    text = os.fspath(path)
    if "\x00" in str(text):
        raise InvalidConfigError(f"{what} {text!r} contains a NUL character")
    real_root = Path(root).expanduser().resolve()
    p = Path(text).expanduser()
    real = (p if p.is_absolute() else real_root / p).resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise InvalidConfigError(f"{what} {text} is outside {where or real_root}; "
                                 f"choose a folder inside it")
    return real


def given_name(name: object, what: str = "name", nested: bool = False) -> str | None:
    """None when no name was given (None or blank: the caller picks a default), else
    ``check_name(name, what, nested)``."""
    if name is None or (isinstance(name, str) and not name.strip()):
        return None
    return check_name(name, what, nested)


PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def projects_root() -> Path:
    """The folder projects named by a bare name live in (``$RCDM_STUDIO_PROJECTS``, default
    ``./projects``)."""
    return Path(os.environ.get("RCDM_STUDIO_PROJECTS") or "projects").expanduser().absolute()


def resolve_project(ref: str | os.PathLike, root: Path | None = None,
                    restrict: bool = False) -> Path:
    """A project reference -> its ``.duckdb`` path.

    A bare name (letters, digits, ``_ . -``; ``NAME`` or ``NAME.duckdb``, no folder) is
    ``ROOT/NAME.duckdb``; anything with a folder (``./NAME``, ``/data/NAME.duckdb``, ``~/x``)
    is that path.

    Args:
        ref: the reference as given (a CLI flag, a form field).
        root: the projects folder (default ``projects_root()``).
        restrict: refuse paths outside ``root`` (the studio is reachable from the network).

    Raises:
        InvalidConfigError: empty or malformed name, or a path outside ``root`` when
            ``restrict``.
    """
    root = (root or projects_root()).absolute()
    text = os.fspath(ref).strip() if ref is not None else ""
    if not text:
        raise InvalidConfigError("type a project name, e.g. flowers")
    if "\x00" in text:
        raise InvalidConfigError(f"project {text!r} contains a NUL character")
    if "/" not in text and os.sep not in text and not text.startswith("~"):
        stem = text[:-len(".duckdb")] if text.endswith(".duckdb") else text
        if not PROJECT_NAME.match(stem):
            raise InvalidConfigError(f"project name {text!r}: use letters, digits, '_', '.' "
                                     f"or '-' (at most 64 characters)")
        return root / f"{stem}.duckdb"
    p = Path(text).expanduser()
    if p.name in ("", ".", ".."):
        raise InvalidConfigError(f"project path {text!r} names a folder, not a project file: "
                                 f"give NAME or NAME.duckdb")
    db = (p if p.suffix == ".duckdb" else p.with_name(p.name + ".duckdb")).absolute()
    if restrict:
        real_root, real_db = root.resolve(), db.resolve()
        if real_root not in real_db.parents:
            raise InvalidConfigError(f"{db} is outside the projects folder {root}; this studio "
                                     f"is reachable from the network, so it opens projects "
                                     f"only from there")
    return db
def new_memmap(path: str | os.PathLike[str], dtype: Any, shape: tuple[int, ...]) -> Any:
    """``np.lib.format.open_memmap(path, "w+", dtype, shape)`` with the file's blocks reserved
    (``posix_fallocate``) before anything is written through the map: on a full disk this
    raises ``OSError`` (ENOSPC) here instead of killing the process with SIGBUS later.
    File systems without the call keep the sparse file."""
    import numpy as np

    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        try:
            with open(path, "rb+") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                del out
                raise
    return out
