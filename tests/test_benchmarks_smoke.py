"""Smoke tests of the benchmark scripts at toy size: they run end to end and print their
JSON line (the figures themselves are recorded in docs/BENCHMARKS.md, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_rehearsal_runs_every_stage_at_toy_size(tmp_path):
    """benchmarks/scale.py at 1,000 images of 8 px, without the studio: every stage runs
    through the CLI, and the last line is the JSON report with one row per stage."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--scale", "0.002",
         "--size", "8", "--workers", "1", "--skip-studio", "--dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"claim", "ratio", "goal", "met", "margins", "stages", "import_overhead",
            "real", "generated", "kept"} <= set(report)
    assert [s["stage"] for s in report["stages"]] == [
        "import", "encode", "register", "encode gen", "curate", "train", "export"]
    assert report["real"] == 1000 and report["generated"] == 4 * report["train"]
    assert 0 < report["kept"] <= report["generated"]
    for stage in report["stages"]:
        assert stage["seconds"] > 0 and stage["images_per_s"] > 0, stage
        assert stage["peak_rss_mb"] > 0 and stage["project_disk_mb"] > 0, stage
    assert report["stages"][-1]["project_disk_mb"] >= report["stages"][0]["project_disk_mb"]
    assert report["studio"] is None and set(report["margins"]) == {"import_rate",
                                                                   "import_overhead"}
    assert isinstance(report["met"], bool) and report["goal"] == 1.0
    # the build folder holds the export's ImageFolder: one sub-folder per class kept
    classes = [d for d in (tmp_path / "export").iterdir() if d.is_dir()]
    assert classes and all(any(d.iterdir()) for d in classes)
