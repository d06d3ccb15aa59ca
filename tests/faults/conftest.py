"""Shared pieces of the fault-injection suite: tiny built projects, snapshots, final checks.

Every fault test ends with ``assert_repairable(project)``: ``engine.check`` with repair must
leave nothing to fix (or only the kinds a test names and explains).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import import_folder, write_tiny_folder

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("dataset", "image", "encoding", "model", "generation", "sample", "selection",
          "evaluation", "export", "job", "meta")


def snapshot(project, without_jobs: bool = False) -> dict[str, Any]:
    """Row counts of every table and (path, size, sha1) of every asset file;
    ``without_jobs``: leave out the job table and the job folders (the record a failed job
    keeps of itself)."""
    counts = {t: int(project.query(f"SELECT count(*) AS n FROM {t}")["n"][0]) for t in TABLES
              if not (without_jobs and t == "job")}
    files = {}
    if project.assets.exists():
        for p in sorted(project.assets.rglob("*")):
            if without_jobs and p.relative_to(project.assets).parts[0] == "jobs":
                continue
            if p.is_file():
                files[p.relative_to(project.assets).as_posix()] = (
                    p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest())
    return {"rows": counts, "files": files}


def assert_repairable(project, allow: tuple[str, ...] = ()) -> Any:
    """Run check + repair; every problem left must be of a kind in ``allow``."""
    from engine.check import check_project

    report = check_project(project, repair=True)
    left = [p for p in report.problems if not p["repaired"] and p["kind"] not in allow]
    assert left == [], left
    return report


def wait_for(predicate, timeout: float = 120.0, what: str = "condition",
             interval: float = 0.1) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def kill_group(pid: int) -> None:
    """SIGKILL a worker's process group and wait until the process is gone."""
    from engine.jobs import pid_alive

    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait_for(lambda: not pid_alive(pid), 30, f"pid {pid} to die")


def child(code: str, *args: str) -> subprocess.Popen:
    """A Python child process (the 'studio' that will be killed) running ``code``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=str(ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextmanager
def tmpfs(folder: Path, size: str = "64k", full: bool = False, read_only: bool = False):
    """A small ``tmpfs`` mounted on ``folder`` (made if missing) for the block: a disk that
    fills up after ``size`` bytes, already full (``full``: a filler file takes every block),
    or read-only. The tests run as root; skipped where mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        if full:
            with open(folder / "filler", "wb", buffering=0) as f:
                try:
                    while f.write(b"\0" * 4096):
                        pass
                except OSError:  # ENOSPC: full
                    pass
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only); skipped where mounting is not permitted."""
    with tmpfs(tmp_path / "small") as mnt:
        yield mnt


TRAIN = dict(image_size=8, block_channels=(8, 16), cross_attention_dim=16, attention_head_dim=8,
             batch_size=4, warmup_steps=1, preview_every=10_000)


@pytest.fixture(scope="session")
def built_base(tmp_path_factory) -> Path:
    """A closed project: tiny dataset (3 classes x 8, 18 train / 6 test), a PCA encoding
    (dim 4, 8 px) and a trained tiny RCDM (3 steps). Copied by ``built``; never opened."""
    import torch

    from engine.config import EncodeConfig, ImportConfig, TrainConfig
    from engine.jobs import JobManager
    from engine.project import Project
    from engine.stages import encode_stage, train_stage

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("faults_base")
    folder = write_tiny_folder(root / "tiny")
    with Project(root / "base") as project:
        jobs = JobManager(project)
        import_folder(project, folder, "tiny", ImportConfig(test_fraction=0.25))
        jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca", dim=4,
                                                             image_size=8)))
        jobs.run_inline(train_stage.prepare(project, TrainConfig(steps=3, checkpoint_every=100,
                                                           **TRAIN), encoder="pca",
                                      name="tiny-model"))
    return root / "base.duckdb"


@pytest.fixture
def built(built_base, tmp_path):
    """A fresh, open copy of ``built_base`` (this test may break it at will)."""
    from engine.project import Project

    dst = tmp_path / "p.duckdb"
    shutil.copy2(built_base, dst)
    shutil.copytree(built_base.with_name("base.assets"), tmp_path / "p.assets", symlinks=True)
    project = Project(dst)
    yield project
    project.close()
