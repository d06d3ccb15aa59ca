"""Signals: ``rcdm-studio`` stops cleanly on SIGTERM and SIGINT, also as PID 1.

Each test starts the real studio (``python -m studio.cli``, the console script's module) on
a free port, waits until it answers HTTP, sends the signal and asserts: exit code 0, the
DuckDB file checkpointed (no ``.wal`` left beside it) and a check of the project that finds
nothing to repair. As PID 1 of a new PID namespace (``unshare --pid --fork --mount-proc``,
the situation of a container started without an init) the kernel drops any signal the
process installed no handler for, so without the studio's own handlers SIGTERM would be
ignored and this test would time out.

A worker running when the studio stops is left to finish: the next owner ingests its result
(``docs/RELIABILITY.md``, "Stopping the studio").

Timeouts here only guard against a hang; nothing asserts how fast anything is.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine.check import check_project
from engine.jobs import JobManager, pid_alive
from engine.project import Dataset, Job, Project
from engine.worker import FAULT_HOLD_ENV, FAULT_HOLD_FILE

from .conftest import ROOT, wait_for

START_TIMEOUT = 300.0  # a loaded 2-core machine imports torch and gradio slowly
STOP_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               RCDM_STUDIO_HOME=str(tmp_path / "home"), GRADIO_ANALYTICS_ENABLED="False",
               **extra)
    env.pop("RCDM_STUDIO_AUTH", None)
    return env


def _studio(tmp_path: Path, project: Path, port: int, prefix: tuple[str, ...] = (),
            demo: bool = False, **env: str) -> subprocess.Popen:
    """Start ``rcdm-studio`` (behind ``prefix``, e.g. unshare) with its output in a file."""
    cmd = [*prefix, sys.executable, "-m", "studio.cli", "--project", str(project),
           "--no-browser", "--port", str(port)] + (["--demo"] if demo else [])
    out = open(tmp_path / "studio.out", "wb")  # the child keeps its own copy
    try:
        return subprocess.Popen(cmd, cwd=str(ROOT), env=_env(tmp_path, **env), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        out.close()


def _output(tmp_path: Path) -> str:
    return (tmp_path / "studio.out").read_text(errors="replace")


def _wait_until_served(proc: subprocess.Popen, port: int, tmp_path: Path) -> None:
    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the studio exited with {proc.returncode}:\n"
                                 f"{_output(tmp_path)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_for(answers, START_TIMEOUT, "the studio to answer HTTP", interval=0.5)


def _stop(proc: subprocess.Popen, target: int, sig: signal.Signals, tmp_path: Path) -> int:
    """Send ``sig`` to ``target`` and wait for ``proc`` to end (a hang guard, not a timing)."""
    os.kill(target, sig)
    try:
        return proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the studio did not stop within {STOP_TIMEOUT:.0f} s of "
                             f"{sig.name}:\n{_output(tmp_path)}") from None


def _assert_closed_cleanly(project: Path) -> None:
    db = project.with_suffix(".duckdb")
    assert db.exists()
    assert not Path(f"{db}.wal").exists(), "DuckDB was not checkpointed: the WAL is left"
    with Project(project, create=False) as p:
        report = check_project(p, repair=False)
    assert report.problems == [], report.problems


def _namespace_init(unshare: subprocess.Popen) -> int:
    """The host PID of the process ``unshare --fork`` started: PID 1 in its namespace."""
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    found: list[int] = []

    def started() -> bool:
        if unshare.poll() is not None:
            raise AssertionError(f"unshare exited with {unshare.returncode}")
        found[:] = [int(x) for x in children.read_text().split()]
        return bool(found)

    wait_for(started, 30, "unshare to fork")
    return found[0]


@pytest.fixture(scope="module")
def unshare_pid() -> list[str]:
    """The ``unshare`` prefix that runs a command as PID 1 of a new PID namespace."""
    exe = shutil.which("unshare")
    if exe is None:
        pytest.skip("unshare (util-linux) is not installed")
    prefix = [exe, "--pid", "--fork", "--mount-proc"]
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"unshare --pid cannot run here: {exc}")
    if probe.returncode != 0 or probe.stdout.strip() != "1":
        pytest.skip(f"unshare --pid is not permitted here (needs root or user namespaces): "
                    f"{probe.stderr.strip() or probe.stdout.strip()}")
    return prefix


def _assert_stopped_cleanly(rc: int, sig: signal.Signals, tmp_path: Path,
                            project: Path) -> None:
    """Exit 0, the shutdown line naming the signal, no traceback, the project closed."""
    out = _output(tmp_path)
    assert rc == 0, out
    assert f"RCDM Studio stopped ({sig.name})" in out, out
    assert "Traceback" not in out, out
    _assert_closed_cleanly(project)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_studio_stops_cleanly_on_a_signal(tmp_path, sig):
    project, port = tmp_path / "p", _free_port()
    proc = _studio(tmp_path, project, port)
    try:
        _wait_until_served(proc, port, tmp_path)
        rc = _stop(proc, proc.pid, sig, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_stopped_cleanly(rc, sig, tmp_path, project)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_studio_stops_cleanly_as_pid_1(tmp_path, sig, unshare_pid):
    project, port = tmp_path / "p", _free_port()
    proc = _studio(tmp_path, project, port, prefix=tuple(unshare_pid))
    init = 0
    try:
        init = _namespace_init(proc)
        # NSpid: the PID in each namespace from the host's down; the last is its own
        nspid = next(line for line in Path(f"/proc/{init}/status").read_text().splitlines()
                     if line.startswith("NSpid:"))
        assert nspid.split()[-1] == "1", nspid
        _wait_until_served(proc, port, tmp_path)
        rc = _stop(proc, init, sig, tmp_path)  # unshare returns the exit code of its child
    finally:
        if init and pid_alive(init):  # a failed test: killing unshare would not end it
            os.kill(init, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_stopped_cleanly(rc, sig, tmp_path, project)


def test_a_running_worker_is_left_to_finish_and_ingested_by_the_next_owner(tmp_path):
    """SIGTERM while the demo import runs: the studio exits 0 and says the job runs on;
    the worker (its own session) survives, finishes, and the next owner ingests it."""
    project, port = tmp_path / "p", _free_port()
    jobs = project.parent / "p.assets" / "jobs"
    proc = _studio(tmp_path, project, port, demo=True, **{FAULT_HOLD_ENV: "1"})
    worker = 0
    try:
        _wait_until_served(proc, port, tmp_path)
        wait_for(lambda: any(jobs.glob(f"*/{FAULT_HOLD_FILE}")), START_TIMEOUT,
                 "the demo import's worker to reach the fault hold")
        hold = next(jobs.glob(f"*/{FAULT_HOLD_FILE}"))
        worker = int(hold.read_text().split()[-1])
        rc = _stop(proc, proc.pid, signal.SIGTERM, tmp_path)
        out = _output(tmp_path)
        assert rc == 0, out
        assert "1 job(s) keep running in their own processes" in out, out
        assert pid_alive(worker), "the worker died with the studio"
        hold.unlink()  # release the worker: it imports the rest and writes its status
        wait_for(lambda: not pid_alive(worker), START_TIMEOUT, "the worker to finish")
        assert (hold.parent / "status.json").exists(), (hold.parent / "log.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if worker and pid_alive(worker):
            os.killpg(worker, signal.SIGKILL)
    assert not Path(f"{project}.duckdb.wal").exists()
    with Project(project, create=False) as p:
        JobManager(p).reconcile()  # what the next studio does at its start
        [job] = p.list(Job)
        assert (job.kind, job.status) == ("import", "done"), job
        [dataset] = p.list(Dataset)
        assert job.result_id == dataset.id
        report = check_project(p, repair=False)
    assert report.problems == [], report.problems
