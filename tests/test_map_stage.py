"""The map stage: a seeded layout computed once per (encoding, method, seed, max_points) in a
job, saved under the project's assets, found again; the `rcdm-studio map` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_curate_stage import curated_project  # noqa: F401 - the shared fixture


def test_map_job_writes_a_reusable_seeded_layout(curated_project):  # noqa: F811
    from engine.config import MapConfig
    from engine.errors import InvalidConfigError
    from engine.jobs import JobManager
    from engine.project import MapLayout
    from engine.stages import map_stage

    project, re8, _ = curated_project
    config = MapConfig(method="pca", seed=3, max_points=40)
    assert map_stage.find(project, "gen-test", config, re8) is None
    job = JobManager(project).run_inline(map_stage.prepare(project, config, "gen-test", re8))
    row = project.get(MapLayout, job.result_id)
    assert map_stage.find(project, "gen-test", config, re8).id == row.id
    assert map_stage.find(project, "gen-test", MapConfig(seed=4, max_points=40), re8) is None
    pts = map_stage.load(project, row)
    n = row.count
    assert n == 40 and row.n_real + row.n_syn == n and row.n_real > 0 and row.n_syn > 0
    assert pts["xy"].shape == (n, 2) and np.isfinite(pts["xy"]).all()
    # the synthetic points name rows of the generation, the real ones training images
    samples = project.samples("gen-test")
    syn = pts["kind"] == 1
    np.testing.assert_array_equal(pts["label"][syn],
                                  samples["label"].to_numpy()[pts["index"][syn]])
    # the browser's file: xy in [-1, 1], then labels and kinds
    raw = (project.abs(row.folder) / map_stage.POINTS).read_bytes()
    assert len(raw) == n * (8 + 2 + 1)
    xy = np.frombuffer(raw[:8 * n], "<f4").reshape(n, 2)
    assert np.abs(xy).max() == pytest.approx(1.0) and np.abs(xy).max() <= 1.0 + 1e-6
    np.testing.assert_array_equal(np.frombuffer(raw[8 * n:10 * n], "<u2"), pts["label"])
    np.testing.assert_array_equal(np.frombuffer(raw[10 * n:], np.uint8), pts["kind"])
    # seeded: the same config lays the points out the same way again
    again = JobManager(project).run_inline(map_stage.prepare(project, config, "gen-test", re8))
    np.testing.assert_allclose(map_stage.load(project, project.get(MapLayout,
                                                                   again.result_id))["xy"],
                               pts["xy"], rtol=1e-5, atol=1e-6)
    assert not list((project.assets / "maps" / "_specs").iterdir())  # specs cleaned up
    # check knows the layouts' folders; a stray layout folder is an orphan
    from engine.check import check_project

    stray = project.assets / "maps" / "map_0123abcd"
    stray.mkdir()
    orphans = [p for p in check_project(project).problems if p["kind"] == "orphan_folder"]
    assert [p["path"] for p in orphans] == ["maps/map_0123abcd"]
    stray.rmdir()
    with pytest.raises(InvalidConfigError, match="max_points"):
        MapConfig(max_points=200_001)
    with pytest.raises(InvalidConfigError, match="method"):
        MapConfig(method="mds")


def test_tsne_is_bounded_and_umap_is_seeded():
    from engine.curation.maps import TSNE_MAX_POINTS, layout_2d
    from engine.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="t-SNE takes at most"):
        layout_2d(np.zeros((TSNE_MAX_POINTS + 1, 3), np.float32), "tsne")
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    a, b = layout_2d(x, "umap", seed=1), layout_2d(x, "umap", seed=1)
    assert a.shape == (80, 2) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b)


def test_cli_map_computes_once_then_reuses(curated_project, capsys):  # noqa: F811
    from studio.cli import main

    project, _, _ = curated_project
    path = str(project.path)
    project.close()
    args = ["map", "--project", path, "--generation", "gen", "--max-points", "30", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not first["cached"] and second["cached"] and second["map"] == first["map"]
    assert first["points"] == 30 and first["method"] == "pca"
    assert main(["map", "--project", path, "--generation", "gen", "--method", "tsne",
                 "--max-points", "300000"]) != 0
    assert "max_points must be in [2, 200000]" in capsys.readouterr().err
