"""Hand overrides, "more like this" and per-sample scores on a real tiny project (the curate
stage, the export that consumes its selections, and the command line)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_curate_stage import curated_project  # noqa: F401 - the shared fixture

from engine.config import BandConfig
from engine.errors import InvalidConfigError


def test_overrides_survive_a_band_change_and_reach_selection_export_provenance(
        curated_project, tmp_path):  # noqa: F811
    from engine.config import ExportConfig
    from engine.jobs import JobManager
    from engine.project import HandOverride
    from engine.stages import curate_stage, export_stage

    project, re8, _ = curated_project
    bd = curate_stage.band_data(project, "gen", re8)
    band = BandConfig(low=0.25, high=0.75)
    mask = curate_stage.band_mask(bd, band)
    out_idx = int(np.flatnonzero(~mask)[0])  # outside the band: kept by hand
    in_idx = np.flatnonzero(mask)[:2]  # inside: dropped by hand
    samples = project.samples("gen-test")
    keep = curate_stage.record_hand(project, "gen", [str(samples["id"].iat[out_idx])], "keep",
                                    by="test:alice", via="gallery")
    drop = curate_stage.record_hand(project, "gen", [int(i) for i in in_idx], "drop",
                                    by="test:bob", via="lasso", note="blurry")
    assert (keep.seq, drop.seq, drop.count) == (1, 2, 2)
    assert project.load_array(drop.members_path).tolist() == sorted(in_idx.tolist())
    state = curate_stage.hand_state(project, "gen")
    assert state[out_idx] == 1 and (state[in_idx] == -1).all() and (state != 0).sum() == 3

    counts = curate_stage.hand_counts(project, bd, mask)
    assert counts.iloc[-1][["kept by band", "+ kept by hand", "- dropped by hand",
                            "kept"]].tolist() == [18, 1, 2, 17]
    sel = curate_stage.save_selection(project, bd, band, name="by-hand")
    members = project.selection_members(sel)
    assert sel.count == 17 and out_idx in members and not np.isin(in_idx, members).any()
    assert sel.config["hand"] == {"kept_by_band": 18, "kept_by_hand": 1,
                                  "dropped_by_hand": 2, "through": drop.id}
    assert curate_stage.save_selection(project, bd, band, name="band", hand=False).count == 18

    # a band change moves the band's part only
    wide = BandConfig(low=0.0, high=1.0)
    assert curate_stage.kept_mask(project, bd, wide).sum() == 34
    narrow = BandConfig(low=0.4, high=0.6)
    kept = curate_stage.kept_mask(project, bd, narrow)
    assert kept[out_idx] and not kept[in_idx].any()
    assert curate_stage.save_all(project, "gen", name="all-but").count == 34

    info = curate_stage.provenance(project, bd, int(in_idx[0]))
    assert info["hand"]["decision"] == "drop" and info["hand"]["by"] == "test:bob"
    assert info["hand"]["via"] == "lasso" and info["hand"]["note"] == "blurry"
    assert curate_stage.provenance(project, bd, out_idx)["hand"]["by"] == "test:alice"
    table = curate_stage.hand_table(project, "gen")
    assert table["idx"].tolist() == sorted([out_idx, *in_idx.tolist()])

    # clear: the band decides again; the log keeps the history
    curate_stage.record_hand(project, "gen", [int(in_idx[0])], "clear", by="test:bob")
    assert curate_stage.hand_state(project, "gen")[in_idx[0]] == 0
    assert curate_stage.hand_state(project, "gen", through=drop.id)[in_idx[0]] == -1
    assert len(project.list(HandOverride, generation_id="gen-test")) == 3

    JobManager(project).run_inline(export_stage.prepare(project, ExportConfig(), sel.id,
                                                        tmp_path / "out"))
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert len(manifest) == 17
    assert set(manifest["sample_id"]) == set(samples["id"].to_numpy()[members])
    by_hand = manifest[manifest["hand"] == "kept by hand"]["sample_id"].tolist()
    assert by_hand == [samples["id"].iat[out_idx]]

    with pytest.raises(InvalidConfigError, match="no sample of generation"):
        curate_stage.record_hand(project, "gen", ["gen-test_nope"], "drop", by="t")
    with pytest.raises(InvalidConfigError, match="outside 0..35"):
        curate_stage.record_hand(project, "gen", ["36"], "drop", by="t")
    with pytest.raises(InvalidConfigError, match="decision"):
        curate_stage.record_hand(project, "gen", ["1"], "maybe", by="t")


def test_a_visitor_of_a_public_studio_may_curate_by_hand(curated_project):  # noqa: F811
    from engine.stages import curate_stage
    from studio.access import Access, SignInRequiredError, VisitorProject

    project, re8, _ = curated_project
    visitor = VisitorProject(project, Access(share="public"))
    row = curate_stage.record_hand(visitor, "gen", ["3"], "drop", by="studio:visitor")
    assert curate_stage.hand_state(project, "gen")[3] == -1 and row.decided_by == "studio:visitor"
    with pytest.raises(SignInRequiredError):
        visitor.set_meta("x", "y")


def test_neighbours_match_brute_force_and_find_copies(curated_project):  # noqa: F811
    from engine.curation import knn
    from engine.stages import curate_stage

    project, re8, re4 = curated_project
    bd = curate_stage.band_data(project, "gen", re4)
    samples = project.samples("gen-test")
    real = np.asarray(project.embeddings(bd.real_encoding), np.float32)[bd.train_idx]
    syn = np.asarray(project.embeddings(bd.encoding), np.float32)
    both = np.concatenate([real, syn])

    q = samples["id"].iat[5]
    table = curate_stage.neighbours(project, bd, q, k=10)
    assert len(table) == 10 and table["rank"].tolist() == list(range(1, 11))
    assert q not in table["id"].tolist() and (np.diff(table["distance"]) >= -1e-6).all()
    d, ids = knn.brute_force(both, syn[5:6], 11, "cosine")
    expect = [i for i in ids[0] if i != len(real) + 5][:10]
    got = [int(i) if k == "synthetic" else None for k, i in zip(table["kind"], table["idx"])]
    got = [len(real) + g if g is not None else int(np.flatnonzero(bd.train_idx == r)[0])
           for g, r in zip(got, table["idx"])]
    assert got == expect
    np.testing.assert_allclose(table["distance"], [x for i, x in zip(ids[0], d[0])
                                                   if i != len(real) + 5][:10], atol=1e-5)
    assert table.attrs["query_kind"] == "synthetic" and set(table["kind"]) <= {"real",
                                                                             "synthetic"}
    # the indexes were cached in the assets: deleted or corrupt, they are built again
    files = sorted((project.assets / "indexes").glob("*.faiss"))
    assert [f.name for f in files] == sorted([f"{bd.encoding.id}-all-cosine.faiss",
                                              f"{bd.real_encoding.id}-train-cosine.faiss"])
    files[0].write_bytes(b"garbage")
    files[1].unlink()
    bd2 = curate_stage.band_data(project, "gen", re4)
    assert curate_stage.neighbours(project, bd2, q, k=10)["id"].tolist() == table["id"].tolist()
    assert all(f.stat().st_size > 100 for f in files)

    # a real training image: its first sample is a pixel copy of it (the fixture's sample 0)
    src = samples["source_image_id"].iat[0]
    cp = curate_stage.copies(project, bd, src, k=5)
    assert cp["id"].iat[0] == samples["id"].iat[0] and bool(cp["copy"].iat[0])
    assert cp["distance"].iat[0] == pytest.approx(0.0, abs=1e-5) and cp.attrs["threshold"] > 0
    assert (cp["kind"] == "synthetic").all()
    only_real = curate_stage.neighbours(project, bd, src, k=3, among=("real",))
    assert (only_real["kind"] == "real").all() and src not in only_real["id"].tolist()
    assert curate_stage.generation_for(project, src).id == "gen-test"
    assert curate_stage.generation_for(project, q).id == "gen-test"
    with pytest.raises(InvalidConfigError, match="neither"):
        curate_stage.neighbours(project, bd, "img_nope")


def test_scores_columns_values_and_sort(curated_project):  # noqa: F811
    from engine.stages import curate_stage

    project, re8, _ = curated_project
    bd = curate_stage.band_data(project, "gen", re8, metric="euclidean")
    curate_stage.record_hand(project, "gen", ["4"], "keep", by="t")
    s = curate_stage.scores(project, bd)
    assert s.columns.tolist() == [
        "idx", "sample", "class", "source_image_id", "centroid_distance", "class_quantile",
        "fidelity", "nearest_real", "nearest_real_id", "uniqueness", "nearest_synthetic",
        "confidence", "predicted", "hand"]
    assert len(s) == 36 and s["idx"].tolist() == list(range(36))
    np.testing.assert_allclose(s["centroid_distance"], bd.distances, rtol=1e-6)
    # sample 0 is a pixel copy of its source: fidelity 1, nearest real = its source, at 0
    assert s["fidelity"].iat[0] == pytest.approx(1.0, abs=1e-5)
    assert s["nearest_real"].iat[0] == pytest.approx(0.0, abs=1e-3)
    assert s["nearest_real_id"].iat[0] == s["source_image_id"].iat[0]
    syn = np.asarray(project.embeddings(bd.encoding), np.float64)
    d = np.linalg.norm(syn[:, None] - syn[None], axis=2) + np.eye(36) * 1e9
    np.testing.assert_allclose(s["uniqueness"], d.min(1), rtol=1e-4, atol=1e-4)
    assert s["hand"].iat[4] == "keep" and (s["hand"] == "").sum() == 35
    assert any("no classifier confidence yet" in n for n in s.attrs["notes"])
    assert s["confidence"].isna().all()
    by = curate_stage.scores(project, bd, sort="uniqueness", descending=True)
    assert (np.diff(by["uniqueness"]) <= 0).all() and sorted(by["idx"]) == list(range(36))
    with pytest.raises(InvalidConfigError, match="cannot sort by"):
        curate_stage.scores(project, bd, sort="beauty")


def test_cli_curate_by_hand_neighbours_and_scores(curated_project, tmp_path, capsys):  # noqa: F811
    from studio.cli import build_parser, main

    project, re8, _ = curated_project
    path = str(project.path)
    ids = project.samples("gen-test")["id"].tolist()
    real_id = project.samples("gen-test")["source_image_id"].iat[0]
    project.close()

    def run(*argv: str):
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    drops = tmp_path / "drops.txt"
    drops.write_text(f"# near copies\n{ids[0]}\n\n{ids[1]}\n")
    rc, out, _ = run("curate", "--project", path, "--generation", "gen", "--preset", "middle",
                     "--fraction", "0.5", "--drop", f"@{drops}", "--drop", "2,3",
                     "--keep", ids[35], "--name", "hand", "--json")
    assert rc == 0
    obj = json.loads(out.strip().splitlines()[-1])
    assert [r["decision"] for r in obj["recorded"]] == ["keep", "drop"]
    assert obj["recorded"][1]["count"] == 4 and obj["hand"]["through"] == obj["recorded"][1]["id"]
    assert obj["count"] == (obj["hand"]["kept_by_band"] + obj["hand"]["kept_by_hand"]
                            - obj["hand"]["dropped_by_hand"])
    # a later band keeps the hand decisions; the text shows the counts
    rc, out, _ = run("curate", "--project", path, "--generation", "gen", "--low", "0",
                     "--high", "1", "--name", "wide")
    assert rc == 0 and "kept 32 of 36" in out and "- dropped by hand 4" in out
    rc, out, err = run("curate", "--project", path, "--generation", "gen", "--preset", "all",
                       "--keep", "0.5", "--clear", "all", "--name", "legacy")
    assert rc == 0 and "read as --fraction" in err and "kept 36 of 36" in out

    rc, out, _ = run("neighbours", "--project", path, "--image", ids[7], "-k", "5", "--json")
    nb = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and len(nb["neighbours"]) == 5 and nb["query_kind"] == "synthetic"
    assert nb["neighbours"][0]["distance"] <= nb["neighbours"][-1]["distance"]
    rc, out, _ = run("neighbours", "--project", path, "--image", real_id, "--copies", "-k", "3")
    assert rc == 0 and "copies (distance under" in out and ids[0] in out
    rc, out, _ = run("neighbours", "--project", path, "--image", real_id, "--among",
                     "synthetic", "-k", "4", "--ids")
    assert rc == 0 and len(out.split()) == 4 and set(out.split()) <= set(ids)

    rc, out, _ = run("scores", "--project", path, "--generation", "gen", "--sort",
                     "nearest_real", "--limit", "5", "--json", "--out", str(tmp_path / "s.csv"))
    sc = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and sc["count"] == 36 and len(sc["rows"]) == 5
    assert sc["rows"][0]["nearest_real"] <= sc["rows"][-1]["nearest_real"]
    assert len(pd.read_csv(tmp_path / "s.csv")) == 36 and sc["notes"]
    rc, out, _ = run("scores", "--project", path, "--generation", "gen", "--sort", "fidelity",
                     "--desc")
    assert rc == 0 and "sorted by fidelity (descending)" in out and "note: no" in out

    every = tmp_path / "every.txt"
    every.write_text("\n".join(ids))
    for argv, expect in [
        (["curate", "--generation", "gen", "--drop", f"@{every}"], "keeps no sample"),
        (["curate", "--generation", "gen", "--drop", "nope_1"], "no sample of generation"),
        (["curate", "--generation", "gen", "--drop", "@/no/such/file"], "cannot read --drop"),
        (["curate", "--generation", "gen", "--drop", "5", "--keep", "5"], "both in --keep"),
        (["neighbours", "--image", "img_nope"], "neither a sample id nor a real image"),
        (["neighbours", "--image", ids[0], "-k", "0"], "k must be in"),
        (["scores", "--generation", "gen", "--sort", "beauty"], "cannot sort by"),
        (["scores", "--generation", "nope"], "no generation 'nope'"),
    ]:
        rc, out, err = run(argv[0], "--project", path, *argv[1:])
        assert rc == 2 and expect in err and len(err.strip().splitlines()) == 1, (argv, err)
    from engine.project import HandOverride, Project

    with Project(path) as p:  # the refused commands wrote no hand decision
        assert len(p.list(HandOverride)) == 3
    # every new command and flag has help text
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("neighbours", "scores", "curate"):
        for action in sub.choices[name]._actions:
            assert action.help, (name, action.dest)


def test_check_knows_hand_decisions_and_indexes(curated_project):  # noqa: F811
    from engine.check import check_project
    from engine.stages import curate_stage

    project, re8, _ = curated_project
    row = curate_stage.record_hand(project, "gen", ["1", "2"], "drop", by="t")
    curate_stage.neighbours(project, curate_stage.band_data(project, "gen", re8), "1", k=3)
    problems = [p for p in check_project(project).problems
                if p.get("row") != "model:mdl-test"]  # the fixture's model has no checkpoint
    assert problems == []  # indexes/ and selections/overrides/ are no orphans
    project.abs(row.members_path).unlink()
    kinds = [(p["kind"], p.get("row")) for p in check_project(project).problems]
    assert ("missing_file", f"hand_override:{row.id}") in kinds
