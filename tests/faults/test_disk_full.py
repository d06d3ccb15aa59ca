"""The operating system refuses: a full disk, a read-only one, a permission; the studio and
the CLI say so in one sentence (``engine.errors.describe_os_error``), the CLI exits with 2,
and nothing is left behind: no row, no output folder, nothing for ``check`` to fix.

The disks are small ``tmpfs`` mounts on one folder of a project's assets (the tests run as
root and are skipped where ``mount`` is not permitted): ``datasets/`` or ``encodings/`` (the
worker's writes fail) or ``jobs/`` (the job cannot even be created: the issue's traceback,
which left an empty ``encodings/enc_*`` folder behind).
"""

from __future__ import annotations

import errno
import shutil
import zipfile
from pathlib import Path

import pytest
from conftest import write_tiny_folder

from engine.check import check_project
from engine.errors import describe_os_error
from engine.project import Dataset, Encoding, Job, Project

from .conftest import tmpfs
from .test_bad_cli import run_cli

FULL = "no space left on device"
HINT = "(the disk is full: free some space and retry)"


def _files(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (relative), the tmpfs filler left out."""
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.name != "filler")


def _one_error_line(code: int, out: str, err: str) -> str:
    """The CLI failed with exit code 2 and one ``error:`` line, no traceback (a progress bar
    drawn before the failure may precede it)."""
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert err.rstrip().endswith(lines[0])  # nothing after it
    return lines[0]


def _assert_one_disk_full_sentence(line: str) -> None:
    assert FULL in line and line.endswith(HINT), line
    assert "Errno" not in line and "OSError" not in line, line


@pytest.fixture
def cli_copy(built_base, tmp_path):
    """A closed copy of the built project (tiny dataset, PCA encoding, tiny model)."""
    shutil.copy2(built_base, tmp_path / "p.duckdb")
    shutil.copytree(built_base.with_name("base.assets"), tmp_path / "p.assets", symlinks=True)
    return tmp_path / "p.duckdb"


@pytest.fixture
def cli_paths(tmp_path):
    """(an empty closed project, a tiny ImageFolder of 3 classes x 8 images)."""
    path = tmp_path / "p.duckdb"
    Project(path).close()
    return path, write_tiny_folder(tmp_path / "src")


@pytest.mark.parametrize("where", ["datasets", "jobs"])
def test_a_full_disk_during_import_is_one_sentence_and_leaves_nothing(cli_paths, where):
    """datasets/: 64 KiB fill up while the worker writes the images (PNGs + thumbnails);
    jobs/: already full, the job's spec cannot be written."""
    path, src = cli_paths
    assets = path.with_name("p.assets")
    with tmpfs(assets / where, full=where == "jobs"):
        line = _one_error_line(*run_cli(["import", str(src), "--name", "tiny",
                                         "--project", str(path)]))
        _assert_one_disk_full_sentence(line)
        with Project(path) as p:
            assert p.list(Dataset) == []
            assert _files(assets / "datasets") == []  # the .partial folder is gone
            jobs = p.list(Job)
            if where == "jobs":
                assert jobs == [] and _files(assets / "jobs") == []
            else:  # the failed job is the record of what happened, in one sentence
                assert [j.status for j in jobs] == ["failed"]
                _assert_one_disk_full_sentence(jobs[0].error)
            assert check_project(p).problems == []
    # space again: the same import works
    code, out, err = run_cli(["import", str(src), "--name", "tiny", "--project", str(path)])
    assert code == 0, err
    with Project(path) as p:
        assert [d.num_images for d in p.list(Dataset)] == [24]
        assert check_project(p).problems == []


@pytest.mark.parametrize("where", ["encodings", "jobs"])
def test_a_full_disk_during_encode_is_one_sentence_and_leaves_no_folder(cli_paths, where):
    """encodings/: full, the worker cannot save the fitted encoder; jobs/: full, the job
    cannot be created. Either way no ``encodings/enc_*`` folder is left (the issue's
    repro), and ``check`` finds nothing to fix."""
    path, src = cli_paths
    assets = path.with_name("p.assets")
    code, _, err = run_cli(["import", str(src), "--name", "tiny", "--project", str(path)])
    assert code == 0, err
    encode = ["encode", "--encoder", "pca", "--dim", "4", "--image-size", "8",
              "--project", str(path)]
    with tmpfs(assets / where, full=True):
        _assert_one_disk_full_sentence(_one_error_line(*run_cli(encode)))
        with Project(path) as p:
            assert p.list(Encoding) == []
            assert _files(assets / "encodings") == []
            failed = [j for j in p.list(Job) if j.kind == "encode"]
            if where == "jobs":
                assert failed == [] and _files(assets / "jobs") == []
            else:
                assert [j.status for j in failed] == ["failed"]
                _assert_one_disk_full_sentence(failed[0].error)
            assert check_project(p).problems == []
    code, _, err = run_cli(encode)
    assert code == 0, err
    with Project(path) as p:
        assert [(e.count, e.dim) for e in p.list(Encoding)] == [(24, 4)]
        assert check_project(p).problems == []


def test_check_repair_removes_an_orphan_folder_and_keeps_referenced_ones(cli_copy):
    """The leftover of the issue (an empty ``encodings/enc_*`` no row or job knows) is
    reported, and ``check --repair`` deletes it; every referenced folder and file stays."""
    assets = cli_copy.with_name("p.assets")
    orphan = assets / "encodings" / "enc_0badf00d"
    orphan.mkdir()
    before = {p.relative_to(assets).as_posix() for p in assets.rglob("*")}
    code, out, err = run_cli(["check", "--project", str(cli_copy)])
    assert code == 1 and "encodings/enc_0badf00d" in out and "--repair" in out, out + err
    code, out, err = run_cli(["check", "--project", str(cli_copy), "--repair"])
    assert code == 0 and "1 repaired, 0 left" in out, out + err
    assert not orphan.exists()
    assert {p.relative_to(assets).as_posix() for p in assets.rglob("*")} == \
        before - {"encodings/enc_0badf00d"}
    code, out, _ = run_cli(["check", "--project", str(cli_copy)])
    assert code == 0 and "0 problem(s)" in out


@pytest.mark.parametrize("exc,words", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/in/cat/1.png"),
     "permission denied: /data/in/cat/1.png (check the folder's permissions)"),
    (OSError(errno.ENOSPC, "No space left on device", "/p.assets/x.npy"),
     f"{FULL}: /p.assets/x.npy {HINT}"),
    (OSError(errno.ENOSPC, "No space left on device"), f"{FULL} {HINT}"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/p.assets/x.npy"),
     "disk quota exceeded: /p.assets/x.npy (the disk quota is used up: free some space and "
     "retry)"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro"),
     "read-only file system: /mnt/ro (the file system is read-only)"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/in/gone.png"),
     "no such file or directory: /data/in/gone.png (a file or folder is missing (moved or "
     "deleted meanwhile?))"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
     f"{FULL} {HINT}"),
    (RecursionError("maximum recursion depth exceeded"),
     "the input is nested too deeply to process (Python's recursion limit was reached)"),
], ids=["EACCES", "ENOSPC", "ENOSPC without path", "EDQUOT", "EROFS", "ENOENT",
       "safetensors ENOSPC", "recursion"])
def test_the_studio_words_os_refusals_like_the_cli(exc, words):
    """One function words them for the studio's status line, the CLI and a job's row."""
    from studio import ui
    from studio.cli import os_error_text

    assert describe_os_error(exc) == words
    assert ui.error_text(exc) == words
    if isinstance(exc, OSError):
        assert os_error_text(exc) == words


def test_a_bug_is_still_unexpected_in_the_studio():
    """An OSError the input cannot cause (EINVAL: the issue's 43 TB memmap) is a bug: the
    page says so and points to the log, as before."""
    from studio import ui

    exc = OSError(errno.EINVAL, "Invalid argument")
    assert describe_os_error(exc) is None and describe_os_error(ValueError("x")) is None
    assert ui.error_text(exc).startswith("unexpected OSError: ")


@pytest.fixture
def studio_ctx(tmp_path, monkeypatch):
    """A StudioContext on a new project in the projects folder, and Gradio's upload cache
    in ``tmp_path/gradio``."""
    from studio.context import StudioContext

    root = tmp_path / "projects"
    root.mkdir()
    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(root))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    ctx = StudioContext(root / "p.duckdb")
    try:
        yield ctx, root
    finally:
        ctx.close()


def _upload(tmp_path: Path, folder: Path) -> Path:
    """A zip of ``folder`` where Gradio puts an upload: ``GRADIO_TEMP_DIR/<hash>/name.zip``."""
    dest = tmp_path / "gradio" / "5f1d0c9e" / "tiny.zip"
    dest.parent.mkdir(parents=True)
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, p.relative_to(folder).as_posix())
    return dest


def test_a_full_disk_under_an_upload_is_one_sentence_in_the_studio(studio_ctx, tmp_path):
    """The Data tab's zip import with ``uploads/`` on a full disk: the extraction fails, the
    status line says so in one sentence, nothing is left in ``uploads/``, no job is made,
    and the upload is deleted from Gradio's cache all the same."""
    from studio.tabs import data_tab

    ctx, root = studio_ctx
    upload = _upload(tmp_path, write_tiny_folder(tmp_path / "src"))
    with tmpfs(ctx.project.assets / "uploads", full=True):
        status, _ = data_tab.on_zip(ctx, str(upload), "tiny", None, None, None)
        assert FULL in status and HINT in status and "unexpected" not in status, status
        assert _files(ctx.project.assets / "uploads") == []
    assert ctx.project.list(Job) == [] and ctx.project.list(Dataset) == []
    assert not upload.exists() and not upload.parent.exists()
    assert check_project(ctx.project).problems == []


def test_a_read_only_disk_in_a_studio_handler_is_one_sentence(studio_ctx, tmp_path):
    """The Data tab's folder import with ``jobs/`` read-only (EROFS: refused even to root,
    like a permission): one sentence naming the folder, no job, nothing left."""
    from studio.tabs import data_tab

    ctx, root = studio_ctx
    src = write_tiny_folder(root / "src")
    with tmpfs(ctx.project.assets / "jobs", read_only=True) as jobs:
        status, _ = data_tab.on_folder(ctx, str(src), "tiny", None, None, None)
        assert "read-only file system: " in status and str(jobs) in status, status
        assert "(the file system is read-only)</div>" in status, status
        assert "unexpected" not in status and "Errno" not in status
    assert ctx.project.list(Job) == [] and _files(ctx.project.assets / "jobs") == []
    assert _files(ctx.project.assets / "datasets") == []
    assert check_project(ctx.project).problems == []


def test_an_imported_upload_is_deleted_from_gradios_cache(studio_ctx, tmp_path):
    """After the zip is unpacked and its import queued, the uploaded file (and its folder in
    Gradio's cache) is gone; a file outside the cache is never deleted."""
    from studio.tabs import data_tab

    ctx, root = studio_ctx
    src = write_tiny_folder(tmp_path / "src")
    upload = _upload(tmp_path, src)
    status, pending = data_tab.on_zip(ctx, str(upload), "tiny", None, None, None)
    assert pending and "queued" in status, status
    assert not upload.exists() and not upload.parent.exists()
    assert (tmp_path / "gradio").is_dir()  # the cache itself stays
    job = ctx.jobs.wait(pending, timeout=180, interval=0.2)
    assert job.status == "done", job.error
    assert [d.num_images for d in ctx.project.list(Dataset)] == [24]
    # a zip of the user's own (a path outside Gradio's cache) is kept, imported or refused
    own = tmp_path / "mine.zip"
    shutil.copy2(_upload(tmp_path, src), own)
    assert not data_tab.discard_upload(str(own)) and own.exists()
    status, _ = data_tab.on_zip(ctx, str(own), "tiny", None, None, None)  # a taken name
    assert "unexpected" not in status and own.exists()
    assert not data_tab.discard_upload(None)
    assert check_project(ctx.project).problems == []
