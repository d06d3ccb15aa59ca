"""The studio's boundaries: it reads the project through the engine's read model (no SQL of
its own), and tests keep the studio's home folder out of the user's real one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL_MARKERS = ("SELECT", ".query(", "duck()")


def test_the_studio_issues_no_sql():
    """Every read the studio needs is in ``engine.project`` (``reads``, ``get``, ``list``)."""
    offenders = []
    for path in sorted((ROOT / "studio").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            offenders += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                          for marker in SQL_MARKERS if marker in line]
    assert not offenders, "SQL in the studio:\n" + "\n".join(offenders)


def test_studio_home_comes_from_the_environment(monkeypatch, tmp_path):
    from studio.choices import studio_home

    monkeypatch.setenv("RCDM_STUDIO_HOME", str(tmp_path / "home"))
    assert studio_home() == tmp_path / "home"
    monkeypatch.delenv("RCDM_STUDIO_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert studio_home() == tmp_path / "xdg" / "rcdm-studio"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert studio_home() == Path.home() / ".config" / "rcdm-studio"


def test_tests_never_write_the_real_home(tmp_path, _studio_home):
    """The session's home is a temporary folder, for this process and its subprocesses;
    remembering a project writes there, not in ``~/.config/rcdm-studio``."""
    from studio.choices import studio_home
    from studio.tabs.projects_tab import recent_projects, remember

    real = Path.home() / ".config" / "rcdm-studio" / "recent.json"
    before = real.stat().st_mtime_ns if real.exists() else None
    assert studio_home() == _studio_home
    assert Path.home() / ".config" not in studio_home().parents
    db = tmp_path / "p.duckdb"
    db.write_bytes(b"")
    remember(db)
    assert (_studio_home / "recent.json").is_file()
    assert recent_projects()[0] == db
    assert (real.stat().st_mtime_ns if real.exists() else None) == before
    out = subprocess.run(
        [sys.executable, "-c", "from studio.choices import studio_home; print(studio_home())"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        check=True).stdout.strip()
    assert Path(out) == _studio_home
