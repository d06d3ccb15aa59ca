"""The map's selection route (``studio.map_select``): a lasso's bit mask posted straight to the
studio, answered with its status and gallery, kept for the map's Keep / Drop; only for a map
token the studio gave out, and behind ``--auth``'s login page only with its cookie."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from test_curate_stage import curated_project  # noqa: F401 - the shared fixture

from studio import map_select

USER, PASSWORD = "ana", "s3cret-pass"
BAND = ("gen-test", 0.25, 0.75, "real", "cosine")


def _mask(rows: list[int] | np.ndarray, count: int) -> str:
    bits = np.zeros(math.ceil(count / 8) * 8, np.uint8)
    bits[np.asarray(rows, dtype=np.int64)] = 1
    return base64.b64encode(np.packbits(bits, bitorder="little").tobytes()).decode()


def test_mask_rows_read_the_browsers_bits_and_refuse_a_wrong_size():
    # rows 0, 3, 9 of 11: bits least significant first, as assets/webgl_map.js packs them
    mask = base64.b64encode(bytes([0b00001001, 0b00000010])).decode()
    np.testing.assert_array_equal(map_select.mask_rows(mask, 11), [0, 3, 9])
    assert len(map_select.mask_rows("", 5)) == 0  # "clear selection"
    with pytest.raises(map_select.InvalidSelectionError, match="draw the map again"):
        map_select.mask_rows(mask, 40)  # a mask of another map
    with pytest.raises(map_select.InvalidSelectionError, match="base64"):
        map_select.mask_rows("not base64!", 11)


def test_map_views_are_bounded_and_selections_belong_to_a_project_and_generation(monkeypatch):
    monkeypatch.setattr(map_select, "MAX_VIEWS", 3)
    monkeypatch.setattr(map_select, "MAX_PICKED", 2)
    views = map_select.MapViews()
    tokens = [views.register(map_select.MapView("s", "/p", f"map_{i}", 10, ())) for i in range(5)]
    assert len(set(tokens)) == 5 and all(len(t) >= 20 for t in tokens)
    assert [views.get(t) is not None for t in tokens] == [False, False, True, True, True]
    assert views.get(tokens[-1]).layout == "map_4"
    for s in ("a", "b", "c"):
        views.remember(s, map_select.Picked("/p", "gen", np.array([1, 2])))
    assert views.picked("a", "/p", "gen") is None  # forgotten: the oldest past the bound
    np.testing.assert_array_equal(views.picked("c", "/p", "gen"), [1, 2])
    assert views.picked("c", "/other", "gen") is None and views.picked("c", "/p", "g2") is None
    assert views.sort("c") == (False, None, None)
    views.set_sort("c", True, "uniqueness", "descending")
    assert views.sort("c") == (True, "uniqueness", "descending")
    views.set_sort("c", False, "uniqueness", "descending")
    assert views.sort("c") == (False, None, None)


@pytest.fixture
def studio_on_map(curated_project, tmp_path, monkeypatch):  # noqa: F811
    """The studio (behind a login) on the curated project, with a PCA layout computed."""
    from test_studio_browser import _free_port

    from engine.config import MapConfig
    from engine.jobs import JobManager
    from engine.stages import map_stage
    from studio.app import close, launch

    project, re8, re4 = curated_project
    for enc in (re8, re4):  # whichever the band shows
        JobManager(project).run_inline(map_stage.prepare(
            project, MapConfig(method="pca", seed=0), "gen-test", enc))
    n_samples = len(project.samples("gen-test"))
    path = project.path
    project.close()
    monkeypatch.setenv("RCDM_STUDIO_PROJECTS", str(tmp_path / "projects"))
    port = _free_port()
    blocks = launch(path, port=port, open_browser=False, prevent_thread_lock=True,
                    auth=f"{USER}:{PASSWORD}")
    try:
        yield blocks, f"http://127.0.0.1:{port}", n_samples
    finally:
        close(blocks)


def _login(http) -> None:
    r = http.post("/login", data={"username": USER, "password": PASSWORD})
    assert r.status_code == 200, r.text
    http.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in r.cookies.items())


def test_a_lasso_through_the_route_lists_keeps_and_drops(studio_on_map):
    import gradio as gr
    import httpx

    from engine.project import HandOverride, MapLayout
    from engine.stages import map_stage
    from studio.tabs import curate_tab

    blocks, url, n_samples = studio_on_map
    ctx = blocks.studio
    value, state, status = curate_tab.draw_map(ctx, "pca", 0, "class", *BAND)
    assert "select" in value, status
    assert value["select"] == map_select.PATH and state["map"] == value["map"]
    n = value["n"]
    with httpx.Client(base_url=url, timeout=30) as http:
        body = {"token": value["token"], "mask": _mask(range(n), n)}
        assert http.post(map_select.PATH, json=body).status_code == 401  # not signed in
        _login(http)
        r = http.post(map_select.PATH, json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["selected"] == n and answer["generated"] == n_samples
        assert f"{n} points selected: {n_samples} generated" in answer["text"]
        assert len(answer["items"]) == min(n_samples, curate_tab.MAP_GALLERY)
        first = answer["items"][0]
        assert first["src"].startswith("/gradio_api/file=") and " · " in first["caption"]
        assert http.get(first["src"]).status_code == 200  # the thumbnail is served
        # sorted by a score of "Browse by score", descending
        curate_tab.note_map_sort(ctx, True, "centroid_distance", "descending")
        caps = [float(it["caption"].split(" · ")[-1])
                for it in http.post(map_select.PATH, json=body).json()["items"]]
        assert caps == sorted(caps, reverse=True) and len(caps) > 1
        curate_tab.note_map_sort(ctx, False, None, None)
        # a click on a thumbnail opens that sample's provenance
        evt = gr.EventData(None, {"sample": first["i"]})
        sample, _src, md, picked = curate_tab.on_map_click(ctx, state, evt, *BAND)
        assert picked == [first["i"]] and sample and "status-error" not in md
        # the map's Drop acts on the last selection: a few generated points only
        pts = map_stage.load(ctx.project, ctx.project.get(MapLayout, value["map"]))
        few = np.flatnonzero(pts["kind"] == 1)[:5]
        answer = http.post(map_select.PATH, json={"token": value["token"],
                                                  "mask": _mask(few, n)}).json()
        generated = answer["generated"]
        assert generated == 5 and answer["selected"] == 5
        out = curate_tab.on_map_hand(ctx, "drop", *BAND)
        assert f"{generated} image(s) dropped by hand" in out[0]
        hand = [h for h in ctx.project.list(HandOverride) if h.decided_via == "map lasso"]
        assert len(hand) == 1 and hand[0].count == generated
        # clear: nothing selected, and Drop has nothing to act on
        empty = http.post(map_select.PATH, json={"token": value["token"], "mask": ""}).json()
        assert empty["text"] == "nothing selected" and empty["items"] == []
        assert "lasso or box" in curate_tab.on_map_hand(ctx, "drop", *BAND)[0]
        # refused: an unknown token, a malformed body, a mask of another size
        r = http.post(map_select.PATH, json={"token": "nope", "mask": ""})
        assert r.status_code == 409 and "draw it again" in r.json()["error"]
        assert http.post(map_select.PATH, content=b"{not json").status_code == 400
        assert http.post(map_select.PATH, json={"token": 3}).status_code == 400
        r = http.post(map_select.PATH, json={"token": value["token"], "mask": _mask([0], 8 * n)})
        assert r.status_code == 409 and "bits" in r.json()["error"]


def test_a_visitor_of_a_public_studio_may_lay_out_the_map_and_index_it(curated_project):  # noqa: F811
    from engine.config import MapConfig
    from engine.stages import curate_stage, index_stage, map_stage
    from studio.access import Access, SignInRequiredError, VisitorProject

    project, re8, _ = curated_project
    access = Access("public")
    seen = VisitorProject(project, access)
    spec = map_stage.prepare(seen, MapConfig(method="pca", seed=0), "gen-test", re8)
    access.check_job(spec.kind, editor=False, active_jobs=0)  # not refused
    bd = curate_stage.band_data(seen, "gen-test", re8)
    spec = index_stage.prepare(seen, bd, ["real", "synthetic"])
    access.check_job(spec.kind, editor=False, active_jobs=0)
    with pytest.raises(SignInRequiredError, match="sign in to"):
        access.check_job("encode", editor=False, active_jobs=0)  # the rest still needs an editor


def test_more_like_this_from_a_real_image_on_the_map_finds_its_copies(curated_project):  # noqa: F811
    import gradio as gr

    from engine.config import MapConfig
    from engine.jobs import JobManager
    from engine.project import Image, MapLayout
    from engine.stages import map_stage
    from studio.context import StudioContext
    from studio.tabs import curate_tab

    project, re8, re4 = curated_project
    for enc in (re8, re4):
        JobManager(project).run_inline(map_stage.prepare(
            project, MapConfig(method="pca", seed=0), "gen-test", enc))
    source = project.samples("gen-test")["source_image_id"].iat[0]  # sample 0: a copy of it
    real_idx = project.get(Image, source).idx
    path = project.path
    project.close()
    ctx = StudioContext(path)
    try:
        value, state, _ = curate_tab.draw_map(ctx, "pca", 0, "class", *BAND)
        pts = map_stage.load(ctx.project, ctx.project.get(MapLayout, value["map"]))
        r = int(np.flatnonzero((pts["kind"] == 0) & (pts["index"] == real_idx))[0])
        _, src, md, picked = curate_tab.on_map_click(ctx, state, gr.EventData(None, {"row": r}),
                                                     *BAND)
        assert picked == [source] and src and "real training image" in md
        status, items, synthetic, _ = curate_tab.on_more_like(ctx, picked, *BAND)
        assert f"nearest images of real image {source}" in status and "near-copies" in status
        assert 0 in synthetic  # its exact copy is among its nearest generated images
        assert any(cap.endswith(" · copy") for _, cap in items)
        # Keep / Drop refuse a real image, in one sentence
        out = curate_tab.on_hand(ctx, "drop", picked, *BAND)
        assert "real training image" in out[0]
    finally:
        ctx.close()


def test_more_like_this_goes_on_from_any_image_of_its_gallery(curated_project):  # noqa: F811
    """A click on a neighbour in the More like this gallery picks it, real or generated, as a
    click on the map does: a generated one for Keep / Drop, a real one for its nearest images
    and its copies among the generated ones."""
    import gradio as gr

    from engine.project import Image
    from studio.context import StudioContext
    from studio.tabs import curate_tab

    project, _, _ = curated_project
    path = project.path
    project.close()
    ctx = StudioContext(path)
    try:
        _, items, synthetic, refs = curate_tab.on_more_like(ctx, [0], *BAND)
        assert len(refs) == len(items) and sorted(synthetic) == sorted(
            r for r in refs if isinstance(r, int))
        real_at = next(k for k, r in enumerate(refs) if isinstance(r, str))
        gen_at = next(k for k, r in enumerate(refs) if isinstance(r, int))

        def click(k):
            return curate_tab.select_near(ctx, refs, gr.SelectData(None, {"index": k,
                                                                          "value": None}),
                                          *BAND)

        sample, src, md, picked = click(real_at)
        image = ctx.project.get(Image, refs[real_at])
        assert picked == [image.id] and sample is None and "real training image" in md
        assert src == str(ctx.project.abs(image.path))
        status, _, again, _ = curate_tab.on_more_like(ctx, picked, *BAND)
        assert f"nearest images of real image {image.id}" in status and again
        sample, src, md, picked = click(gen_at)
        assert picked == [refs[gen_at]] and sample and src  # a generated image and its source
        out = curate_tab.on_hand(ctx, "drop", picked, *BAND)
        assert "1 image(s) dropped by hand" in out[0]
        _, _, md, picked = click(len(refs))  # a stale click: said, nothing picked
        assert not isinstance(picked, list) and "run More like this again" in str(md)
    finally:
        ctx.close()
