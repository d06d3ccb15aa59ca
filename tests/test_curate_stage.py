"""The curate stage on a real project, and its two callers: the CLI and the studio's Curate tab."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import BandConfig
from engine.errors import InvalidConfigError, NotReadyError


@pytest.fixture
def curated_project(tmp_path, one_thread):
    """A real project: tiny dataset encoded twice (pca 8-d and pca 4-d), and a constructed
    "generation" (2 noisy variations of every training image, sample 0 an exact copy of its
    source) re-encoded by both encoders. No RCDM training: the curation stage only needs rows,
    PNGs and embeddings."""
    import pandas as pd
    from conftest import import_folder, write_tiny_folder
    from PIL import Image as PILImage

    from engine.config import EncodeConfig, ImportConfig
    from engine.jobs import JobManager
    from engine.project import Generation, Model, Project
    from engine.stages import encode_stage

    project = Project(tmp_path / "proj")
    jobs = JobManager(project)
    ds = import_folder(project, write_tiny_folder(tmp_path / "tiny", per_class=8),
                                  "tiny", ImportConfig(test_fraction=0.25))
    enc8 = jobs.run_inline(encode_stage.prepare(project, EncodeConfig(dim=8, image_size=12),
                                          dataset_ref=ds.id)).result_id
    enc4 = jobs.run_inline(encode_stage.prepare(project, EncodeConfig(dim=4, image_size=12),
                                          dataset_ref=ds.id)).result_id
    project.add(Model(id="mdl-test", name="test-model", dataset_id=ds.id, encoding_id=enc8,
                      encoder="pca", status="trained"))
    images = project.images(ds.id, split="train")
    folder = project.new_folder("generations", "gen-test")
    rng = np.random.default_rng(0)
    rows = []
    for j, img in enumerate(images.itertuples()):
        pixels = np.asarray(PILImage.open(project.abs(img.path)).convert("RGB"), dtype=np.int16)
        for v in range(2):
            noisy = pixels if (j, v) == (0, 0) else pixels + rng.integers(-40, 40, pixels.shape)
            path = folder / f"{j:04d}_{v}.png"
            PILImage.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)
            i = len(rows)
            rows.append({"id": f"gen-test_{i:07d}", "generation_id": "gen-test", "idx": i,
                         "path": project.rel(path), "source_image_id": img.id,
                         "label": img.label, "class_name": img.class_name, "seed": 100 + i,
                         "sampler": "ddim", "steps": 5, "guidance": 1.0})
    project.add_generation(Generation(id="gen-test", name="gen", model_id="mdl-test",
                                      dataset_id=ds.id, encoder="pca",
                                      folder=project.rel(folder), count=len(rows),
                                      config_json='{"variations": 2}'), pd.DataFrame(rows))
    re8 = jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca"),
                                         generation_ref="gen-test", encoding_ref=enc8)).result_id
    re4 = jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca"),
                                         generation_ref="gen-test", encoding_ref=enc4)).result_id
    yield project, re8, re4
    project.close()


def test_stage_band_second_encoder_metrics_provenance_export(curated_project, tmp_path):
    from engine.config import ExportConfig
    from engine.jobs import JobManager
    from engine.stages import curate_stage, export_stage

    project, re8, re4 = curated_project
    assert [v for _, v in curate_stage.encoding_choices(project, "gen")] == [re8, re4]
    bd8 = curate_stage.band_data(project, "gen", re8)
    bd4 = curate_stage.band_data(project, "gen", re4)  # judged by the second encoder
    assert project.embeddings(bd4.encoding).shape[1] == 4
    assert project.embeddings(bd4.real_encoding).shape[1] == 4  # real side: same encoder
    assert len(bd8.distances) == len(bd4.distances) == 36
    assert not np.allclose(bd8.distances, bd4.distances)
    band = BandConfig(low=0.0, high=1.0, outlier="zscore", target_per_class=5)
    mask = curate_stage.band_mask(bd4, band)
    assert np.bincount(bd4.labels[mask]).tolist() == [5, 5, 5]

    m = curate_stage.metrics(project, bd8, np.ones(36, bool), k=3)
    assert m["overall"]["copies"] >= 1 and 0 in m["copies"]["sample"].tolist()
    assert 0.0 <= m["overall"]["precision"] <= 1.0 and len(m["per_class"]) == 3
    fid = curate_stage.fidelity(project, bd8)
    assert fid[0] == pytest.approx(1.0, abs=1e-5) and fid.shape == (36,)

    pts = curate_stage.embedding_map(project, bd4, max_points=30)
    assert curate_stage.embedding_map(project, bd4, max_points=30) is pts  # cached on the view
    assert (pts["kind"] == "real").any() and (pts["kind"] == "synthetic").any()

    info = curate_stage.provenance(project, bd8, 3)
    assert info["seed"] == 103 and info["model"] == "test-model" and info["sampler"] == "ddim"
    assert info["source_path"] and 0 < info["class_quantile"] < 1

    sel = curate_stage.save_selection(project, bd4, band, name="z5")
    spec = export_stage.prepare(project, ExportConfig(val_fraction=0.2), sel.id,
                                tmp_path / "out")
    JobManager(project).run_inline(spec)
    import pandas as pd

    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert len(manifest) == 15 and set(manifest["split"]) == {"train", "val"}
    assert manifest["judged_by"].eq("pca").all() and manifest["band"].str.contains(
        "target 5/class").all()
    assert manifest["selection_id"].eq(sel.id).all() and manifest["distance"].notna().all()


def test_cli_curate_options_metrics_and_export_split(curated_project, tmp_path, capsys):
    import json

    from studio.cli import main

    project, re8, re4 = curated_project
    path = str(project.path)
    project.close()
    assert main(["curate", "--project", path, "--generation", "gen", "--mode", "distance",
                 "--low", "0", "--high", "2", "--class-band", "class_1=0:0.05",
                 "--target", "4", "--encoding", re4, "--metrics", "--name", "cli",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["encoder"] == "pca" and out["band"]["per_class"] == [["class_1", 0.0, 0.05]]
    assert out["count"] <= 12 and {"precision", "recall", "density", "coverage", "frechet",
                                   "copies"} <= set(out["metrics"])
    assert main(["export", "--project", path, "--selection", "cli", "--out",
                 str(tmp_path / "exp"), "--val-fraction", "0.5", "--json"]) == 0
    assert (tmp_path / "exp" / "val" / "metadata.csv").is_file()


def test_studio_curate_view_functions(curated_project):
    """The curate tab's functions on a real StudioContext (no server): band options, a second
    encoder, provenance, map, metrics, save and combine."""
    from engine.stages import curate_stage
    from studio.context import StudioContext
    from studio.tabs import curate_tab

    project, re8, re4 = curated_project
    path = project.path
    project.close()
    ctx = StudioContext(path)
    try:
        v = curate_tab.band_view(ctx, "gen-test", 0.25, 0.75, "real", "cosine")
        assert v["kept"] == 18 and "judged by pca" in v["text"]
        v4 = curate_tab.band_view(ctx, "gen-test", 0.0, 1.0, "real", "cosine", re4, target=3,
                           per_class="class_0=0:0.5", outlier="zscore")
        assert v4["bd"].encoding.id == re4 and v4["counts"]["kept"].tolist()[1:] == [3, 3]
        assert "drop other" in v4["counts"].columns and "target 3/class" in v4["text"]
        # an encoding of another generation falls back to this generation's latest
        assert curate_tab.band_view(ctx, "gen-test", 0.2, 0.8, "real", "cosine",
                             "enc-nope")["bd"].encoding.id == re4
        with pytest.raises(InvalidConfigError):
            curate_tab.make_band(0.1, 0.9, "real", "cosine", per_class="class_0 0.1")
        i = int(v["edge_idx"]["farthest_kept"][0])
        info = curate_stage.provenance(ctx.project, v["bd"], i)
        assert "seed" in curate_tab.provenance_md(info) and info["path"].endswith(".png")
        overall, per_class, fig, text = curate_tab.metrics_view(ctx, v)
        assert {"precision", "recall", "density", "coverage", "frechet"} <= set(overall["metric"])
        assert len(per_class) == 3 and fig.data and "kept samples" in text
        a = curate_tab.save(ctx, "gen-test", 0.0, 0.5, "real", "cosine", "near")
        b = curate_tab.save(ctx, "gen-test", 0.25, 0.75, "real", "cosine", "mid")
        both = curate_stage.combine(ctx.project, a.id, b.id, "intersection", "both")
        assert both.count == 9  # ranks 0..5 and 3..8 of 12 per class share 3..5
        assert "quantile 0-0.5" in curate_tab.selections_table(ctx)["how"].tolist()
    finally:
        ctx.close()


def test_studio_hand_decisions_and_more_like_this(curated_project):
    """The Curate tab's hand buttons on a real StudioContext: drop a clicked sample, see the
    counts and the summary say so, find more like it, keep the generated neighbours, and a
    saved selection follows the hand."""
    from engine.project import Selection
    from studio.context import StudioContext
    from studio.tabs import curate_tab

    project, re8, re4 = curated_project
    path = project.path
    project.close()
    ctx = StudioContext(path)
    try:
        band = ("gen-test", 0.25, 0.75, "real", "cosine")
        v = curate_tab.band_view(ctx, *band)
        inside = int(v["edge_idx"]["farthest_kept"][0])  # kept by the band
        status, _fig, counts, summary, *_ = curate_tab.on_hand(ctx, "drop", [inside], *band)
        assert "1 image(s) dropped by hand" in status
        assert counts["- hand"].sum() == 1 and "by hand: +0 / −1" in summary
        status, items, generated, refs = curate_tab.on_more_like(ctx, [inside], *band)
        assert "nearest images of sample" in status and 0 < len(items) <= curate_tab.NEIGHBOURS_K
        assert inside not in generated and all(isinstance(i, int) for i in generated)
        assert len(refs) == len(items) and set(generated) <= set(refs)
        curate_tab.on_hand(ctx, "keep", generated, *band)
        kept = curate_tab.band_view(ctx, *band)["counts"]
        sel = curate_tab.save(ctx, *band, "hand")
        assert sel.count == int(kept["kept with hand"].sum())
        members = set(ctx.project.selection_members(ctx.project.get(Selection, sel.id)).tolist())
        assert inside not in members and set(generated) <= members
        status, *_ = curate_tab.on_hand(ctx, "keep", [], *band)
        assert "click a generated image" in status
    finally:
        ctx.close()


def test_band_view_reads_what_it_shows_and_caches_the_boxes(curated_project):
    """A band change reads only its galleries' sample rows and reuses the view's box
    statistics: same figure, same rows as the full reads."""
    import json

    import pandas as pd

    from engine.curation import box_stats
    from engine.stages import curate_stage
    from studio import figures

    project, re8, _ = curated_project
    every = project.samples("gen-test")
    assert len(every) > 17
    rows = project.sample_rows("gen-test", [5, 0, 17], ("path", "id"))
    assert rows.columns.tolist() == ["path", "id"]
    assert rows["id"].tolist() == every["id"].iloc[[5, 0, 17]].tolist()
    assert rows["path"].tolist() == every["path"].iloc[[5, 0, 17]].tolist()
    assert project.sample_rows("gen-test", [], ("path",)).empty
    with pytest.raises(ValueError, match="unknown sample columns"):
        project.sample_rows("gen-test", [0], ("path; DROP TABLE sample",))

    bd = curate_stage.band_data(project, "gen", re8, metric="euclidean")
    syn, real = bd.box_stats()
    assert bd.box_stats()[0] is syn  # computed once per view
    pd.testing.assert_frame_equal(syn, box_stats(bd.distances, bd.labels, len(bd.class_names)))
    mask = curate_stage.band_mask(bd, BandConfig.preset("middle"))
    fresh = figures.band_figure(bd.distances, bd.labels, bd.class_names, mask,
                                bd.real_distances, bd.real_labels, metric="euclidean")
    cached = figures.band_figure(bd.distances, bd.labels, bd.class_names, mask,
                                 bd.real_distances, bd.real_labels, metric="euclidean",
                                 stats=(syn, real), edges=curate_stage.summary(bd, mask)[
                                     ["low_distance", "high_distance"]].to_numpy())
    assert json.loads(fresh.to_json()) == json.loads(cached.to_json())
    assert len(fresh.data) == 3 and len(fresh.layout.shapes) == len(bd.class_names)


def test_large_indexes_are_built_by_a_job_not_in_the_request(curated_project, monkeypatch):
    """"More like this" and the scores on a view whose index is too large to build on the
    spot queue one ``index`` job (not two), say so, and work once it is done."""
    from engine.curation import knn
    from engine.project import Job
    from engine.stages import curate_stage
    from studio.context import StudioContext
    from studio.tabs import curate_tab

    project, _, _ = curated_project
    path = project.path
    project.close()
    monkeypatch.setattr(knn, "EXACT_MAX", 10)  # 18 real, 36 generated: both "large" here
    ctx = StudioContext(path)
    try:
        band = ("gen-test", 0.25, 0.75, "real", "cosine")
        bd = curate_tab.band_view(ctx, *band)["bd"]
        assert curate_stage.indexes_pending(ctx.project, bd) == ["real", "synthetic"]
        with pytest.warns(UserWarning, match=r"being built \(job job_"):  # the studio's toast
            curate_tab.on_more_like(ctx, [0], *band)
        with pytest.raises(NotReadyError, match="being built"):
            curate_tab._scores(ctx, {"bd": bd})  # browse by score / colour by score
        jobs = ctx.project.list(Job, kind="index")
        assert len(jobs) == 1  # asked twice, queued once
        assert ctx.jobs.wait(jobs[0].id, timeout=180).status == "done"
        assert curate_stage.indexes_pending(ctx.project, bd) == []
        status, items, synthetic, _ = curate_tab.on_more_like(ctx, [0], *band)
        assert len(items) == curate_tab.NEIGHBOURS_K and "nearest images" in str(status)
        assert len(curate_tab._scores(ctx, {"bd": bd})) == 36
    finally:
        ctx.close()


def test_the_cli_builds_a_large_index_as_a_job_with_progress(curated_project, monkeypatch,
                                                            capsys):
    """`neighbours` / `scores` build a missing large index as an ``index`` job (progress bar,
    Ctrl-C cancels) before searching, once."""
    import json

    from engine.curation import knn
    from engine.project import Job, Project
    from studio.cli import main

    project, _, _ = curated_project
    path = str(project.path)
    sample = project.samples("gen-test")["id"].iat[3]
    project.close()
    monkeypatch.setattr(knn, "EXACT_MAX", 10)  # 18 real, 36 generated: both "large" here
    rc = main(["neighbours", "--project", path, "--image", sample, "-k", "4", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and "-> Index the neighbours of" in err
    assert len(json.loads(out.strip().splitlines()[-1])["neighbours"]) == 4
    rc = main(["scores", "--project", path, "--generation", "gen-test", "--limit", "3"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Index the neighbours" not in err  # built once, reused
    with Project(path) as p:
        jobs = p.list(Job, kind="index")
        assert len(jobs) == 1 and jobs[0].status == "done"


def test_band_change_caches_follow_hand_decisions_and_new_encodings(curated_project):
    """What a band change keeps between calls: the view's hand state (replayed again when a
    decision is recorded or cleared), the figure sent as JSON (the same as the plotly
    Figure's), and the encodings listed once per change (a new re-encoding is used at once)."""
    import json

    import pandas as pd

    from engine.project import Encoding
    from engine.stages import curate_stage
    from studio import figures
    from studio.context import StudioContext
    from studio.tabs import curate_tab

    project, re8, re4 = curated_project
    path = project.path
    project.close()
    ctx = StudioContext(path)
    try:
        band = ("gen-test", 0.25, 0.75, "real", "cosine")
        v = curate_tab.band_view(ctx, *band, re8)
        bd = v["bd"]
        assert "- hand" not in v["counts"] and "by hand" not in v["text"]
        state = curate_stage.view_hand_state(ctx.project, bd)
        assert curate_stage.view_hand_state(ctx.project, bd) is state and not state.any()
        # the figure: the JSON plotly writes for the same Figure
        fig = figures.band_figure(bd.distances, bd.labels, bd.class_names, v["mask"],
                                  bd.real_distances, bd.real_labels, metric="cosine")
        fig.update_layout(height=430, margin=dict(l=60, r=20, t=60, b=50))
        assert v["figure"].type == "plotly"
        assert json.loads(v["figure"].plot) == json.loads(fig.to_json())

        inside = int(v["edge_idx"]["farthest_kept"][0])
        curate_stage.record_hand(ctx.project, "gen-test", [inside], "drop", by="test")
        v = curate_tab.band_view(ctx, *band, re8)
        assert v["bd"] is bd  # the same cached view: its hand state was replayed
        assert v["counts"]["- hand"].sum() == 1 and "by hand: +0 / −1" in v["text"]
        np.testing.assert_array_equal(curate_stage.view_hand_state(ctx.project, bd),
                                      curate_stage.hand_state(ctx.project, "gen-test"))
        curate_stage.record_hand(ctx.project, "gen-test", [inside], "clear", by="test")
        v = curate_tab.band_view(ctx, *band, re8)
        assert "- hand" not in v["counts"] and "by hand" not in v["text"]
        assert not curate_stage.view_hand_state(ctx.project, bd).any()

        # the latest re-encoding judges when none is chosen; a new one is used at once
        row = ctx.project.get(Encoding, re4).model_dump()
        ctx.project.delete(Encoding, re4)
        assert curate_tab.band_view(ctx, *band)["bd"].encoding.id == re8
        _, counts8, *_ = curate_tab.show_band(ctx, *band)
        ctx.project.add(Encoding(**row))
        assert curate_tab.band_view(ctx, *band)["bd"].encoding.id == re4
        _, counts, text, *_ = curate_tab.show_band(ctx, *band)
        pd.testing.assert_frame_equal(counts, curate_tab.band_view(ctx, *band, re4)["counts"])
        assert not counts.equals(counts8)
    finally:
        ctx.close()
