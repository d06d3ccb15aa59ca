"""Classifier confidence as a per-sample score: a real-only evaluation judges a generation,
``curate_stage.scores`` reads it, galleries sort by it (engine and CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_curate_stage import curated_project  # noqa: F401 - the shared fixture

from engine.config import EvalConfig
from engine.errors import InvalidConfigError


def tiny_eval(**changes) -> EvalConfig:
    base = dict(arch="resnet_tiny", image_size=12, epochs=2, batch_size=16, seed=0,
                loader_workers=0)
    base.update(changes)
    return EvalConfig(**base)


def judged_evaluation(project, **changes):
    from engine.jobs import JobManager
    from engine.project import Evaluation
    from engine.stages import evaluate_stage

    job = JobManager(project).run_inline(evaluate_stage.prepare(
        project, tiny_eval(**changes), mix="real", score_generation="gen", name="judge"))
    return project.get(Evaluation, job.result_id)


@pytest.mark.parametrize("data_path", ["memory", "stream"])
def test_a_real_only_evaluation_judges_every_sample(curated_project, data_path):  # noqa: F811
    from engine.stages import curate_stage

    project, re8, _ = curated_project
    bd = curate_stage.band_data(project, "gen", re8)
    before = curate_stage.scores(project, bd)
    assert before["confidence"].isna().all() and (before["predicted"] == "").all()
    assert before.attrs["judge"] == "" and "--score-generation" in before.attrs["notes"][0]

    e = judged_evaluation(project, data_path=data_path)
    judged = e.results["judged"]
    assert judged["generation_id"] == "gen-test" and judged["count"] == 36
    assert judged["trained_on"] == "real" and e.results["data_path"] == data_path
    folder = project.assets / "evaluations" / e.id
    conf = np.load(folder / "confidence.npy", allow_pickle=False)
    pred = np.load(folder / "predicted.npy", allow_pickle=False)
    assert conf.dtype == np.float32 and pred.dtype == np.int32 and conf.shape == (36,)
    assert ((conf >= 0) & (conf <= 1)).all() and ((pred >= 0) & (pred < 3)).all()

    s = curate_stage.scores(project, bd)
    assert "confidence" in curate_stage.SCORE_KEYS
    assert s.columns.tolist()[-3:] == ["confidence", "predicted", "hand"]
    np.testing.assert_array_equal(s["confidence"].to_numpy(np.float32), conf)
    assert s["predicted"].tolist() == [bd.class_names[i] for i in pred]
    assert s.attrs["judge"] == e.id and e.name in s.attrs["notes"][0]
    assert "trained on real images only" in s.attrs["notes"][0]
    # sorted by confidence, the gallery starts with the least confident sample
    by = curate_stage.scores(project, bd, sort="confidence")
    assert (np.diff(by["confidence"]) >= 0).all() and sorted(by["idx"]) == list(range(36))
    assert by["idx"].iat[0] == int(np.argmin(conf))


def test_the_judge_must_never_have_seen_the_samples(curated_project):  # noqa: F811
    from engine.stages import evaluate_stage

    project, _, _ = curated_project
    with pytest.raises(InvalidConfigError, match="real images only"):
        evaluate_stage.prepare(project, tiny_eval(), mix="real+synthetic",
                               generation_ref="gen", score_generation="gen")
    with pytest.raises(InvalidConfigError, match="one process"):
        evaluate_stage.prepare(project, tiny_eval(processes=2), mix="real",
                               score_generation="gen")


def test_judge_images_is_the_softmax_of_the_label(one_thread):
    import torch

    from engine.evaluate.classifier_training import judge_images

    class Fixed(torch.nn.Module):  # logits = the mean of each channel
        def forward(self, x):
            return x.mean(dim=(2, 3))

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 4, 4, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    mean, std = torch.zeros(3), torch.ones(3)
    conf, pred = judge_images(Fixed(), list(images), labels, mean, std, chunk=3)
    logits = torch.from_numpy(images).float().div(255).mean(dim=(1, 2))
    prob = torch.softmax(logits, 1).numpy()
    np.testing.assert_allclose(conf, prob[np.arange(7), labels], rtol=1e-5)
    np.testing.assert_array_equal(pred, prob.argmax(1))
    with pytest.raises(InvalidConfigError, match="7 labels"):
        judge_images(Fixed(), list(images), labels[:3], mean, std)


def test_cli_evaluate_judges_and_scores_sort_by_confidence(  # noqa: F811
        curated_project, capsys):  # noqa: F811
    from studio.cli import main

    project, _, _ = curated_project
    path = str(project.path)
    project.close()
    assert main(["evaluate", "--project", path, "--mix", "real", "--score-generation", "gen",
                 "--epochs", "1", "--arch", "resnet_tiny", "--set", "image_size=12",
                 "--set", "loader_workers=0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["judged"]["count"] == 36
    assert main(["scores", "--project", path, "--generation", "gen", "--sort", "confidence",
                 "--limit", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    conf = [r["confidence"] for r in rows]
    assert len(conf) == 36 and conf == sorted(conf)


def _scores_of(items) -> list[float]:
    return [float(caption.split(" · ")[0]) for _, caption in items]


def test_studio_browse_by_score_sorts_pages_filters_and_curates(curated_project,  # noqa: F811
                                                                monkeypatch):
    """The Curate tab's "Browse by score" on a real StudioContext: sorted captions, pages
    that tile the order, a class filter, Keep / Drop of a page moving the counts, and the
    confidence score once a real-only evaluation has judged the generation."""
    import gradio as gr

    from studio.context import StudioContext
    from studio.tabs import curate_tab

    project, _, _ = curated_project
    path = project.path
    project.close()
    monkeypatch.setattr(curate_tab, "BROWSE_PAGE", 10)  # 36 samples: 4 pages
    ctx = StudioContext(path)
    try:
        band = ("gen-test", 0.25, 0.75, "real", "cosine")
        status, items, page, classes, shown = curate_tab.on_browse(
            ctx, "centroid_distance", "descending", "all", None, 0, *band)
        assert "36 samples (all) by distance to the class centroid" in status
        assert "page 1 of 4" in status and page == 0 and len(items) == len(shown) == 10
        assert classes["choices"][0] == curate_tab.ALL_CLASSES and len(classes["choices"]) == 4
        bd = ctx.band_data("gen-test", "real", "cosine")
        order = np.argsort(-bd.distances, kind="stable")
        # the pages tile the sorted order; past the last page: the last page
        tiled = []
        for p in range(4):
            *_, shown_p = curate_tab.on_browse_step(ctx, 1, "centroid_distance", "descending",
                                                    "all", None, p - 1, *band)
            tiled += shown_p
        assert tiled == order.tolist()
        _, items, page, _, shown = curate_tab.on_browse(ctx, "centroid_distance", "descending",
                                                        "all", None, 99, *band)
        assert page == 3 and shown == order[30:].tolist()
        caps = _scores_of(items)
        assert caps == sorted(caps, reverse=True)
        status, *rest = curate_tab.on_browse(ctx, "centroid_distance", "ascending", "all",
                                             None, -1, *band)
        assert "page must be &gt;= 0" in status and all(r is not None for r in rest)
        # a page change does not recompute the scores: the cached order is reused
        assert any(k.startswith("order-centroid_distance") for k in bd.cache)
        # one class only
        status, items, _, _, shown = curate_tab.on_browse(ctx, "uniqueness", "ascending",
                                                          "all", "class_1", 0, *band)
        assert "12 samples (all, class class_1)" in status and "page 1 of 2" in status
        assert len(shown) == 10 and all(" · class_1 · " in c for _, c in items)
        assert _scores_of(items) == sorted(_scores_of(items))
        # Keep / Drop this page: the kept count follows
        status, *_ = curate_tab.on_browse(ctx, "class_quantile", "ascending", "kept", None, 0,
                                          *band)
        assert status.count("18 samples (kept)") == 1
        *_, kept_page = curate_tab.on_browse(ctx, "class_quantile", "ascending", "kept", None,
                                             0, *band)
        out = curate_tab.on_browse_hand(ctx, "drop", kept_page, *band)
        assert "10 image(s) dropped by hand" in out[0]
        status, items, *_ = curate_tab.on_browse(ctx, "class_quantile", "ascending", "kept",
                                                 None, 0, *band)
        assert "8 samples (kept)" in status
        status, items, *_ = curate_tab.on_browse(ctx, "class_quantile", "ascending", "dropped",
                                                 None, 0, *band)
        assert "28 samples (dropped)" in status
        assert sum(c.endswith("dropped by hand") for _, c in items) >= 1
        # a click opens the sample's provenance, and the hand buttons act on it
        evt = gr.SelectData(None, {"index": 2, "value": None})
        sample, _source, md, picked = curate_tab.select_browse(ctx, kept_page, evt, *band)
        assert picked == [kept_page[2]] and "sample `gen-test_" in md
        # confidence: none yet, then judged by a real-only evaluation
        status, items, *_ = curate_tab.on_browse(ctx, "confidence", "ascending", "all", None,
                                                 0, *band)
        assert "no classifier confidence yet" in status
        assert all(c.startswith("– · ") for _, c in items)
        judged_evaluation(ctx.project, epochs=1)
        status, items, *_ = curate_tab.on_browse(ctx, "confidence", "descending", "all", None,
                                                 0, *band)
        assert "judged by evaluation judge" in status
        caps = _scores_of(items)
        assert caps == sorted(caps, reverse=True) and all(0 <= c <= 1 for c in caps)
    finally:
        ctx.close()


def test_evaluate_tab_judges_only_with_a_selection(curated_project):  # noqa: F811
    from engine.errors import NotReadyError
    from studio.context import StudioContext
    from studio.tabs import evaluate_tab

    project, _, _ = curated_project
    path = project.path
    project.close()
    ctx = StudioContext(path)
    try:
        from engine.project import Dataset

        ds = ctx.project.list(Dataset)[0]
        with pytest.raises(NotReadyError, match="needs a selection"):
            evaluate_tab.evaluate(ctx, "real", ds.id, None, "resnet_tiny", 1, None,
                                  judge=True)
    finally:
        ctx.close()
