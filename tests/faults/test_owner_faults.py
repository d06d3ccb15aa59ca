"""Faults of the owner (the studio or a CLI command): SIGKILL while it ingests a job's
results or imports a dataset, and a second owner opening the same project.

The owner runs in a child process that pauses at a chosen point (inside the database
transaction, or halfway through the files) and is SIGKILLed there; the test then reopens the
project and asserts that it shows the whole result or none of it, that ``check --repair``
settles it, and that the work can be done again.
"""

from __future__ import annotations

import signal
import textwrap

import pytest
from conftest import import_folder, write_tiny_folder

from engine.config import GenerateConfig, ImportConfig
from engine.errors import ProjectLockedError
from engine.jobs import JobManager, execute
from engine.project import Dataset, Generation, Job, Project

from .conftest import assert_repairable, child, snapshot, wait_for

# Makes Project.duck() pause right after the statement that starts with PREFIX, inside the
# transaction, after writing MARKER: the parent SIGKILLs the process there.
_PAUSE_IN_TRANSACTION = textwrap.dedent("""
    import sys, time
    from contextlib import contextmanager
    from pathlib import Path
    import engine.project.store as store

    PREFIX, MARKER = sys.argv[2], Path(sys.argv[3])
    _duck = store.Project.duck

    class _Pausing:
        def __init__(self, con):
            self._con = con
        def __getattr__(self, name):
            return getattr(self._con, name)
        def execute(self, sql, *args):
            caller = sys._getframe(1).f_locals
            if "frame" in caller and " frame" in sql:  # DuckDB finds DataFrames by name
                self._con.register("frame", caller["frame"])
            out = self._con.execute(sql, *args)
            if sql.startswith(PREFIX):
                MARKER.write_text("paused")
                time.sleep(600)
            return out

    @contextmanager
    def duck(self):
        with _duck(self) as con:
            yield _Pausing(con)

    store.Project.duck = duck
""")


def _kill_child_at_marker(proc, marker) -> None:
    wait_for(lambda: marker.exists() or proc.poll() is not None, 120, "the owner to pause")
    assert marker.exists(), proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def test_sigkill_of_the_owner_inside_the_ingest_transaction(built, tmp_path):
    """The worker finished; the owner dies between inserting the sample rows and the
    generation row. Reopened: no sample and no generation; repair finishes the ingest."""
    from engine.stages import generate_stage

    before = snapshot(built)
    jobs = JobManager(built)
    spec = generate_stage.prepare(built, GenerateConfig(variations=2, steps=1), "tiny-model")
    job = jobs.create(spec)
    assert execute(jobs.folder(job))["status"] == "done"  # the worker's body, to the end
    built.update(Job, job.id, status="running", pid=2 ** 22 + 7)  # its process is gone
    path = built.path
    built.close()
    marker = tmp_path / "paused"
    code = _PAUSE_IN_TRANSACTION + textwrap.dedent("""
        from engine.jobs import JobManager
        from engine.project import Project
        JobManager(Project(sys.argv[1])).reconcile()  # finishes the job: ingests
    """)
    proc = child(code, str(path), "INSERT INTO sample", str(marker))
    _kill_child_at_marker(proc, marker)
    with Project(path) as project:
        assert project.list(Generation) == []
        assert snapshot(project)["rows"]["sample"] == 0  # the half transaction is gone
        assert project.get(Job, job.id).status == "ingesting"
        report = assert_repairable(project)  # reconciling ingests again, whole this time
        assert [p["kind"] for p in report.problems] == ["stale_job"]
        job = project.get(Job, job.id)
        assert job.status == "done"
        gen = project.get(Generation, job.result_id)
        assert gen.count == 36 and len(project.samples(gen.id)) == 36
        rows = snapshot(project)["rows"]
        assert rows["image"] == before["rows"]["image"] and rows["model"] == before["rows"]["model"]
        assert check_clean(project)


def check_clean(project) -> bool:
    from engine.check import check_project

    return check_project(project).problems == []


@pytest.mark.parametrize("where", ["files", "transaction"])
def test_sigkill_of_the_owner_while_it_imports(tmp_path, where):
    """files: killed halfway through writing the images (a ``.partial`` folder is left);
    transaction: killed inside the insert of the image rows (the folder is in place)."""
    folder = write_tiny_folder(tmp_path / "src", classes=3, per_class=6)
    path = tmp_path / "proj.duckdb"
    with Project(path) as project:
        before = snapshot(project, without_jobs=True)  # the killed import job stays listed
    marker = tmp_path / "paused"
    if where == "files":
        code = textwrap.dedent("""
            import sys, time
            from pathlib import Path
            from engine.jobs import JobManager
            from engine.project import Project
            from engine.stages import import_stage

            def hold(event):
                if event.stage == "import" and event.step >= 9:
                    Path(sys.argv[3]).write_text("paused")
                    time.sleep(600)

            project = Project(sys.argv[1])
            JobManager(project).run_inline(
                import_stage.prepare(project, Path(sys.argv[2]), "tiny"), progress=hold)
        """)
        proc = child(code, str(path), str(folder), str(marker))
    else:
        code = _PAUSE_IN_TRANSACTION.replace("sys.argv[2], Path(sys.argv[3])",
                                             "'INSERT INTO image', Path(sys.argv[3])")
        code += textwrap.dedent("""
            from engine.jobs import JobManager
            from engine.project import Project
            from engine.stages import import_stage
            project = Project(sys.argv[1])
            JobManager(project).run_inline(import_stage.prepare(project, Path(sys.argv[2]), "tiny"))
        """)
        proc = child(code, str(path), str(folder), str(marker))
    _kill_child_at_marker(proc, marker)
    with Project(path) as project:
        assert project.list(Dataset) == []
        assert snapshot(project, without_jobs=True)["rows"] == before["rows"]
        leftovers = sorted(p.name for p in (project.assets / "datasets").iterdir())
        assert len(leftovers) == 1
        if where == "files":
            # the half-written import is a temp folder: repair deletes it
            assert leftovers[0].endswith(".partial")
            # (the killed import job is stale: repairing it removes its partial folder, or
            # the temp-file check does)
            report = assert_repairable(project)
            assert {p["kind"] for p in report.problems} <= {"stale_job", "temp_file"}
            assert report.problems
            assert not any((project.assets / "datasets").iterdir())
        else:
            # the folder was renamed into place just before the rows: an orphan, which
            # repair deletes (nothing is lost: the source folder is intact)
            report = assert_repairable(project)
            orphans = [p for p in report.problems if p["kind"] == "orphan_folder"]
            assert {p["kind"] for p in report.problems} <= {"orphan_folder", "stale_job"}
            # (an orphan unless the stale import job's record already accounts for it)
            assert [p["path"] for p in orphans] in ([f"datasets/{leftovers[0]}"], []), \
                report.problems
            if orphans:
                assert not (project.assets / "datasets" / leftovers[0]).exists()
        # importing again works and gives the whole dataset

        ds = import_folder(project, folder, "tiny", ImportConfig())
        assert ds.num_images == 18 and len(project.images(ds.id)) == 18


def test_a_second_owner_is_refused_with_the_holders_pid(tmp_path):
    path = tmp_path / "held.duckdb"
    Project(path).close()
    marker = tmp_path / "open"
    proc = child(textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from engine.project import Project
        p = Project(sys.argv[1])
        Path(sys.argv[2]).write_text("open")
        time.sleep(600)
    """), str(path), str(marker))
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, 60, "the first owner")
        with pytest.raises(ProjectLockedError) as info:
            Project(path)
        assert f"PID {proc.pid}" in str(info.value) and "close that studio" in str(info.value)
        with pytest.raises(ProjectLockedError, match=f"PID {proc.pid}"):
            Project(path, read_only=True)  # a reader is refused too while a writer holds it
        # the CLI says the same in one line, exit code 2, no traceback
        from .test_bad_cli import run_cli

        code, out, err = run_cli(["status", "--project", str(path)])
        assert code == 2 and f"PID {proc.pid}" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    finally:
        proc.kill()
        proc.wait(30)
    with Project(path) as project:  # the holder is gone: it opens, nothing to fix
        assert_repairable(project)
