"""Who may do what in a shared studio: share modes, signing in, per-visitor quotas.

Two share modes (``rcdm-studio --share``):

- ``private`` (the default): everyone who reaches the page may do everything; with
  ``--auth`` a login page stands in front of the whole studio.
- ``public`` (the Docker image's default): anyone may **browse** every project of the projects
  folder, **curate** (save selections, hand decisions; draw the map and build the neighbour
  index, curation's caches) and **download** exports as zips; importing, encoding,
  training, generating, evaluating, changing settings, creating projects and deleting need a
  signed-in **editor**. A visitor signs in in the header with a user and password of
  ``--auth`` / ``RCDM_STUDIO_AUTH``, or with Hugging Face (the Space's OAuth, when it enables
  it) as one of the users in ``RCDM_STUDIO_EDITORS``.

Quotas bound what one visitor (one browser session; a signed-in user across their sessions)
can ask of a public studio: jobs queued or running at once, the size of an upload, and the
disk the projects folder may fill. Each refusal is one sentence naming the limit.

The checks are made in the owner process, on every write, whatever the page shows: a visitor's
project is a ``VisitorProject`` (reads pass through, writes other than curation raise
``SignInRequiredError``), and ``StudioContext.submit`` checks the job's kind and the quotas.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from engine.errors import InvalidConfigError, StudioError

SHARE_MODES = ("private", "public")
# job kinds a visitor may start: curation's output (export) and its read caches, computed once
# per encoding (the map's layout, the neighbour index), bounded by the per-visitor job quota
VISITOR_JOBS = frozenset({"export", "zip", "map", "index"})
VISITOR_ROWS = frozenset({"Selection", "Export", "HandOverride"})  # rows a visitor may add
VISITOR_FOLDERS = frozenset({"selections", "exports", "maps"})  # asset folders a visitor may write


class SignInRequiredError(StudioError):
    """A visitor of a public studio asked for something only an editor may do."""


class QuotaError(StudioError):
    """A visitor reached one of the studio's per-visitor limits."""


def parse_size(text: str | int | None, what: str = "size") -> int | None:
    """``"20gb"``, ``"512mb"``, ``"4096"`` (bytes) -> bytes; None / "" / "0" -> None (no limit).

    Raises:
        InvalidConfigError: not a number with an optional kb / mb / gb / tb unit.
    """
    if text is None or isinstance(text, int):
        return text or None
    s = str(text).strip().lower().replace(" ", "")
    if s in ("", "0", "none", "off"):
        return None
    units = {"tb": 1024 ** 4, "gb": 1024 ** 3, "mb": 1024 ** 2, "kb": 1024, "b": 1}
    for unit, factor in units.items():
        if s.endswith(unit):
            number = s[:-len(unit)]
            break
    else:
        number, factor = s, 1
    try:
        value = float(number)
    except ValueError:
        raise InvalidConfigError(f"{what} {text!r}: give a number with an optional unit, "
                                 f"e.g. 512mb or 20gb") from None
    if not value > 0 or value > 1024 ** 5:
        raise InvalidConfigError(f"{what} {text!r} must be positive and at most 1024 tb")
    return int(value * factor)


def size_text(n: int) -> str:
    for unit, factor in (("TB", 1024 ** 4), ("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Quotas:
    """Per-visitor limits of a public studio (None: no limit).

    Attributes:
        max_jobs: jobs one visitor may have queued or running at once.
        max_upload: bytes of one upload.
        max_disk: bytes the projects folder may hold; no job starts beyond it.
    """

    max_jobs: int | None = 2
    max_upload: int | None = 512 * 1024 ** 2
    max_disk: int | None = 20 * 1024 ** 3

    def __post_init__(self) -> None:
        if self.max_jobs is not None and not 1 <= self.max_jobs <= 1000:
            raise InvalidConfigError(f"max jobs per visitor must be 1..1000, got {self.max_jobs}")


class DiskUsage:
    """The size of a folder, measured at most every ``every_s`` seconds (walking 650k files
    takes a while; a quota does not need it to the byte)."""

    def __init__(self, root: Path, every_s: float = 60.0) -> None:
        self.root = root
        self.every_s = every_s
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._bytes = 0

    def bytes(self) -> int:
        with self._lock:
            if time.monotonic() - self._at >= self.every_s:
                self._bytes = folder_bytes(self.root)
                self._at = time.monotonic()
            return self._bytes

    def forget(self) -> None:
        with self._lock:
            self._at = -float("inf")


def folder_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (links not followed, unreadable entries
    skipped)."""
    total = 0
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


class Access:
    """The studio's share mode, its editors and its quotas.

    Args:
        share: ``private`` or ``public`` (see the module docstring).
        credentials: ``[(user, password), ...]`` that sign a session in (``--auth``).
        editors: Hugging Face user names that are editors when signed in with Hugging Face.
        quotas: per-visitor limits (public mode only).
        projects_root: the folder whose size ``quotas.max_disk`` bounds.
    """

    def __init__(self, share: str = "private",
                 credentials: list[tuple[str, str]] | None = None,
                 editors: Iterable[str] = (), quotas: Quotas | None = None,
                 projects_root: Path | None = None) -> None:
        if share not in SHARE_MODES:
            raise InvalidConfigError(f"--share must be one of {SHARE_MODES}, got {share!r}")
        self.share = share
        self.credentials = list(credentials or [])
        self.editors = frozenset(e.strip().lower() for e in editors if e.strip())
        self.quotas = quotas or Quotas()
        self.disk = DiskUsage(projects_root) if projects_root is not None else None

    @property
    def public(self) -> bool:
        return self.share == "public"

    @property
    def can_sign_in(self) -> bool:
        return self.public and bool(self.credentials)

    @property
    def oauth(self) -> bool:
        """Whether the Space enables "Sign in with Hugging Face" (it sets OAUTH_CLIENT_ID)."""
        return self.public and bool(os.environ.get("OAUTH_CLIENT_ID"))

    def check_password(self, user: str, password: str) -> bool:
        """Whether ``user:password`` is one of the credentials (compared in constant time)."""
        ok = False
        for u, p in self.credentials:
            same_user = hmac.compare_digest(u.encode(), (user or "").encode())
            same_pass = hmac.compare_digest(p.encode(), (password or "").encode())
            ok |= same_user and same_pass
        return ok

    def is_editor_account(self, hf_user: str | None) -> bool:
        return bool(hf_user) and hf_user.lower() in self.editors

    # ------------------------------------------------------------------ checks

    def check_job(self, kind: str, editor: bool, active_jobs: int) -> None:
        """Refuse a job a visitor may not start, or one past their quota.

        Raises:
            SignInRequiredError, QuotaError.
        """
        if not self.public:
            return
        if not editor and kind not in VISITOR_JOBS:
            raise SignInRequiredError(
                f"sign in to {_VERBS.get(kind, 'run ' + kind + ' jobs')}: this studio is shared "
                f"publicly, and visitors can browse, curate and download exports")
        q = self.quotas
        if not editor and q.max_jobs is not None and active_jobs >= q.max_jobs:
            raise QuotaError(f"you have {active_jobs} job(s) queued or running, the limit per "
                             f"visitor is {q.max_jobs}: wait until one finishes")
        if q.max_disk is not None and self.disk is not None:
            used = self.disk.bytes()
            if used >= q.max_disk:
                raise QuotaError(f"the projects folder holds {size_text(used)}, this studio's "
                                 f"limit is {size_text(q.max_disk)}: no new job can start "
                                 f"until an editor frees space")

    def check_upload(self, path: str | os.PathLike[str]) -> None:
        """Refuse an upload larger than the per-visitor limit (public mode).

        Raises:
            QuotaError.
        """
        q = self.quotas
        if not self.public or q.max_upload is None:
            return
        size = Path(path).stat().st_size
        if size > q.max_upload:
            raise QuotaError(f"the upload is {size_text(size)}, the limit is "
                             f"{size_text(q.max_upload)}")

    def check_write(self, editor: bool, what: str = "change this project") -> None:
        """Raises ``SignInRequiredError`` when a visitor of a public studio asks to write."""
        if self.public and not editor:
            raise SignInRequiredError(f"sign in to {what}: this studio is shared publicly, and "
                                      f"visitors can browse, curate and download exports")


_VERBS = {"import": "import a dataset", "encode": "encode images", "train": "train a model",
          "adopt": "import a model", "generate": "generate images", "evaluate": "evaluate a training mix",
          "shard": "shard a dataset", "curate": "re-encode a generation"}

_WRITES = {"add", "update", "delete", "set_meta", "update_settings", "add_dataset",
           "add_generation", "save_array", "new_folder"}


class VisitorProject:
    """A project as a visitor of a public studio sees it: every read passes through; the
    writes of curation (a selection, an export) pass; any other write raises
    ``SignInRequiredError``. Wraps the owner's ``Project`` (one writer per file)."""

    def __init__(self, project: Any, access: Access) -> None:
        self._project = project
        self._access = access

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._project, name)
        if name not in _WRITES:
            return attr

        def checked(*args: Any, **kwargs: Any) -> Any:
            if not self._curation_write(name, args):
                self._access.check_write(False)
            return attr(*args, **kwargs)

        return checked

    @staticmethod
    def _curation_write(name: str, args: tuple[Any, ...]) -> bool:
        first = args[0] if args else None
        if name == "add":
            return type(first).__name__ in VISITOR_ROWS
        if name == "new_folder":
            return first in VISITOR_FOLDERS
        if name == "save_array":
            return str(first).split("/", 1)[0] in VISITOR_FOLDERS
        return False

    def __repr__(self) -> str:
        return f"VisitorProject({self._project!r})"
