"""Sharded generation: two CPU worker processes, each one shard, merged == unsharded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import GenerateConfig
from engine.errors import InvalidConfigError, NotReadyError
from engine.stages.shard_stage import collect_shards, parse_shard, shard_indices, shard_name
from studio.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ["--variations", "2", "--sampler", "ddpm", "--steps", "3", "--seed", "5",
           "--batch-size", "4"]


def test_shard_indices_partition_the_samples():
    for n in (0, 1, 7, 10, 33):
        for p in (1, 2, 3, 8):
            parts = [shard_indices(n, k, p) for k in range(p)]
            union = np.sort(np.concatenate(parts))
            assert np.array_equal(union, np.arange(n))  # every sample exactly once
            sizes = [len(x) for x in parts]
            assert max(sizes) - min(sizes) <= (1 if n else 0)  # balanced
    assert shard_indices(10, 1, 4).tolist() == [1, 5, 9]
    assert parse_shard("3/8") == (3, 8) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("8/8", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(InvalidConfigError, match="K/P"):
            parse_shard(bad)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A project, its generation run unsharded, and the same run as two worker processes."""
    from conftest import tiny_generation_project

    from engine.jobs import JobManager
    from engine.project import Project
    from engine.stages import generate_stage

    root = tmp_path_factory.mktemp("shard")
    path, _ = tiny_generation_project(root)
    out = root / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1",
           "PYTHONPATH": str(ROOT)}
    # two workers at once, each opening the project read-only and writing its own shard
    procs = [subprocess.Popen(
        [sys.executable, "-m", "studio.cli", "generate", "--project", str(path), *OPTIONS,
         "--shard", f"{k}/2", "--out", str(out), "--json"], cwd=root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
    manifests = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in results]
    config = GenerateConfig(variations=2, sampler="ddpm", steps=3, seed=5, batch_size=4)
    with Project(path) as project:
        job = JobManager(project).run_inline(generate_stage.prepare(project, config, "tiny-rcdm"))
        whole = job.result_id
    return {"path": path, "out": out, "manifests": manifests, "whole": whole, "root": root}


def test_two_processes_merge_into_the_unsharded_generation(sharded, capsys):
    from engine.project import Generation, Project

    path, out = sharded["path"], sharded["out"]
    m0, m1 = sharded["manifests"]
    assert (m0["shard"], m1["shard"]) == (0, 1) and m0["num_shards"] == 2
    assert m0["count"] + m1["count"] == m0["total"] == 36  # 18 training images x 2 seeds
    assert main(["generate-merge", "--project", str(path), str(out), "--json"]) == 0
    merged_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["id"]
    with Project(path) as project:
        merged, whole = project.get(Generation, merged_id), project.get(Generation,
                                                                         sharded["whole"])
        a, b = project.samples(merged.id), project.samples(whole.id)
        assert merged.count == whole.count == 36 and merged.model_id == whole.model_id
        cols = ["idx", "source_image_id", "label", "class_name", "seed", "sampler", "steps",
                "guidance"]
        assert a[cols].equals(b[cols])
        for pa, pb in zip(a["path"], b["path"]):
            assert Path(pa).relative_to(merged.folder) == Path(pb).relative_to(whole.folder)
            # the same image, byte for byte (pixels and provenance text)
            assert project.abs(pa).read_bytes() == project.abs(pb).read_bytes()
        with Image.open(project.abs(a["path"][7])) as img:
            assert img.text["rcdm:seed"] == "12" and img.text["rcdm:model"] == "mdl_tiny"
        conf = json.loads(merged.config_json)
        assert conf["shards"]["num_shards"] == 2 and conf["steps"] == 3
        assert json.loads(whole.config_json)["conditions"]["mode"] == "variations"
        cond_m = np.load(project.abs(merged.folder) / "source_cond.npy")
        cond_w = np.load(project.abs(whole.folder) / "source_cond.npy")
        assert np.array_equal(cond_m, cond_w)


def test_missing_or_foreign_shards_are_reported(sharded, tmp_path, capsys):
    out = sharded["out"]
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    shutil.rmtree(partial / shard_name(1, 2))
    with pytest.raises(NotReadyError, match=r"missing shard\(s\) \[1\] of 2"):
        collect_shards([partial])
    # a shard still running (no manifest yet) counts as missing, and is named
    shutil.copytree(out / shard_name(1, 2), partial / shard_name(1, 2))
    (partial / shard_name(1, 2) / "manifest.json").unlink()
    assert main(["generate-merge", "--project", str(sharded["path"]), str(partial)]) == 2
    err = capsys.readouterr().err
    assert "missing shard(s) [1] of 2" in err and "incomplete: ['shard-00001-of-00002']" in err
    # a shard with a deleted image
    shutil.rmtree(partial / shard_name(1, 2))
    shutil.copytree(out / shard_name(1, 2), partial / shard_name(1, 2))
    next((partial / shard_name(1, 2) / "images").rglob("*.png")).unlink()
    with pytest.raises(NotReadyError, match="misses 1 image"):
        collect_shards([partial])
    # another plan (other seed) refused in the same --out, and at merge time
    assert main(["generate", "--project", str(sharded["path"]), *OPTIONS[:-4], "--seed", "6",
                 "--shard", "0/2", "--out", str(out)]) == 2
    assert "already holds the plan of another generation" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["generate", "--project", str(sharded["path"]), *OPTIONS[:-4], "--seed", "6",
                 "--plan-only", "--out", str(other)]) == 0
    with pytest.raises(InvalidConfigError, match="another generation"):
        collect_shards([out, other])


def test_worker_without_the_project_uses_the_plan(sharded, tmp_path, capsys):
    """A cluster worker that cannot read the project: the plan folder is enough."""
    copy = tmp_path / "copy"
    shutil.copytree(sharded["out"], copy)
    shutil.rmtree(copy / shard_name(0, 2))
    assert main(["generate", "--project", str(tmp_path / "nowhere"), "--shard", "0/2",
                 "--out", str(copy), "--json"]) == 0
    captured = capsys.readouterr()
    assert "using the plan in" in captured.err
    manifest = json.loads(captured.out.strip().splitlines()[-1])
    assert manifest["count"] == 18
    for png in (sharded["out"] / shard_name(0, 2) / "images").rglob("*.png"):
        rel = png.relative_to(sharded["out"])
        assert (copy / rel).read_bytes() == png.read_bytes()


def test_generate_on_two_processes_is_byte_identical_to_one(tmp_path, capsys):
    """``generate --processes 2``: one job, two torchrun ranks on the CPU, each a shard,
    merged into the generation's own layout: the same rows and the same bytes as one
    process; the plan folder is gone afterwards. In WebP (the PNG default is the sharded
    tests' above): the ranks write the config's format and the move keeps it."""
    import json

    from conftest import tiny_generation_project

    from engine.project import Generation, Project
    from studio.cli import main

    path, _ = tiny_generation_project(tmp_path)
    common = ["generate", "--project", str(path), "--variations", "2", "--sampler", "ddim",
              "--steps", "2", "--format", "webp", "--quality", "90", "--json"]
    assert main([*common, "--name", "one"]) == 0
    assert main([*common, "--name", "two", "--processes", "2"]) == 0
    capsys.readouterr()
    with Project(path) as project:
        gens = {g.name: g for g in project.list(Generation)}
        one, two = (project.samples(gens[n].id).sort_values("idx") for n in ("one", "two"))
        folder = project.abs(gens["two"].folder)
        files_one = [project.abs(p) for p in one["path"]]
        files_two = [project.abs(p) for p in two["path"]]
        conf = json.loads(gens["two"].config_json)
    assert len(one) == len(two) == 36 and conf["processes"] == 2  # 18 training images x 2
    assert conf["image_format"] == "webp" and {p.suffix for p in files_two} == {".webp"}
    assert one["seed"].tolist() == two["seed"].tolist()
    assert [p.relative_to(files_one[0].parents[2]) for p in files_one] == \
        [p.relative_to(files_two[0].parents[2]) for p in files_two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files_one, files_two))
    assert not (folder / "ranks-plan").exists()
