"""Named exceptions raised by the engine.

Every error carries the offending value in its message so that the CLI and the studio can
show it to the user as one readable sentence. The engine never calls ``sys.exit``.
"""

from __future__ import annotations

import errno
import os
import re


class StudioError(Exception):
    """Base class of every error the engine raises on purpose (user-facing message)."""


class ProjectNotFoundError(StudioError):
    """The project file does not exist and creation was not requested."""


class ProjectLockedError(StudioError):
    """Another process holds the project's DuckDB file read-write."""


class SchemaVersionError(StudioError):
    """The project was written by an incompatible version of the studio."""


class DatasetError(StudioError):
    """An image folder cannot be imported (no classes, no valid image, ...)."""


class NotFoundError(StudioError):
    """A row (dataset, model, selection, ...) named by the user does not exist."""


class InvalidConfigError(StudioError):
    """A configuration value is out of range or inconsistent."""


class NotReadyError(StudioError):
    """A stage was asked to run before what it needs exists (e.g. an untrained model)."""


class WeightsNotFoundError(StudioError):
    """Pretrained weights are missing and cannot be downloaded (offline)."""


class JobError(StudioError):
    """A background job failed, was cancelled, or cannot be started."""


class Cancelled(StudioError):
    """Raised inside an engine loop when its cancel token is set."""


class SplitLeakError(StudioError):
    """A choice tried to read the test split before the final report (``engine.recipe``)."""


# What the input or the machine caused, not the code: (hint, errnos). Each becomes one plain
# sentence in the CLI, the studio and a failed job's row; any other OSError is a bug to log.
_OS_HINTS: dict[int, str] = {
    errno.ENOSPC: "the disk is full: free some space and retry",
    errno.EDQUOT: "the disk quota is used up: free some space and retry",
    errno.EACCES: "check the folder's permissions",
    errno.EPERM: "check the folder's permissions",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "a file or folder is missing (moved or deleted meanwhile?)",
    errno.ENOTDIR: "a file stands where a folder was expected",
    errno.EISDIR: "a folder stands where a file was expected",
    errno.ELOOP: "a symbolic link loop",
    errno.ENAMETOOLONG: "shorten the name or the folder's path",
    errno.EIO: "the disk or the network share failed to read or write",
}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
RECURSION_TEXT = ("the input is nested too deeply to process (Python's recursion limit was "
                  "reached)")


def os_error_text(exc: OSError) -> str:
    """One sentence for any OSError: what failed, on which path, and a hint when the cause
    is known, e.g. "permission denied: /data/out (check the folder's permissions)"."""
    what = (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")
    paths = [os.fsdecode(p) if isinstance(p, (str, bytes, os.PathLike)) else str(p)
             for p in (exc.filename, exc.filename2) if p not in (None, "")]
    text = what[:1].lower() + what[1:] + (f": {' -> '.join(paths)}" if paths else "")
    hint = _OS_HINTS.get(exc.errno or 0)
    return f"{text} ({hint})" if hint else text


def describe_os_error(exc: BaseException) -> str | None:
    """One plain sentence for a failure caused by the input or the machine, not the code: a
    permission refused, a full disk or quota, a read-only file system, a file that vanished,
    a path too long or looping, input nested too deeply (``RecursionError``); also an I/O
    error a Rust library (safetensors) reports with its OS error number. None for any other
    exception (a bug: the caller logs its traceback).

    The CLI, the studio and the job runtime all word these failures through this one function.
    """
    if isinstance(exc, RecursionError):
        return RECURSION_TEXT
    if isinstance(exc, OSError):
        return os_error_text(exc) if (exc.errno or 0) in _OS_HINTS else None
    # libraries written in Rust (safetensors) report an I/O error as "... (os error 28)"
    found = _RUST_OS_ERROR.search(str(exc))
    if found and int(found.group(1)) in _OS_HINTS:
        code = int(found.group(1))
        return os_error_text(OSError(code, os.strerror(code)))
    return None
