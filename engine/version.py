"""The code version every run row records: the package version, plus the git revision of
the source tree when the engine runs from a git checkout.

``code_version()`` -> ``"0.1.0"`` (an installed package), ``"0.1.0+g1a2b3c4"`` (a clean
checkout), ``"0.1.0+g1a2b3c4.dirty"`` (a checkout with uncommitted changes to tracked files).
It is computed once per process and cached.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "rcdm-studio"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding engine/ and studio/
GIT_TIMEOUT_S = 2.0


def package_version() -> str:
    """The installed package's version, else ``pyproject.toml``'s, else ``"0+unknown"``."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = SOURCE_ROOT / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    m = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    return m.group(1) if m else "0+unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True,
                             text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision() -> str | None:
    """``"1a2b3c4"`` or ``"1a2b3c4.dirty"`` when the source tree is a git checkout; else None.

    Only a checkout whose top level is the source root counts (``.git`` beside ``engine/``),
    so an installed package inside some other repository reports no revision.
    """
    if not (SOURCE_ROOT / ".git").exists():
        return None
    rev = _git("rev-parse", "--short", "HEAD")
    if not rev:
        return None
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return f"{rev}.dirty" if changes else rev


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version + git revision (a PEP 440 local label), computed once per process."""
    version = package_version()
    rev = git_revision()
    return f"{version}+g{rev}" if rev else version
