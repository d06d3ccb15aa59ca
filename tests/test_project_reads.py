"""The read model the studio pages through (``engine.project.reads``): pages with totals,
filters, clamping, and a revision that changes with the project's rows."""

from __future__ import annotations

import pandas as pd

from engine.project import Dataset, Generation, Job, new_id, reads


def _images(ds_id: str, n: int, classes: int) -> pd.DataFrame:
    return pd.DataFrame([dict(id=f"{ds_id}_{i:03d}", dataset_id=ds_id, idx=i, path=f"p{i}.png",
                              thumb=f"t{i}.png" if i % 2 else "", label=i % classes,
                              class_name=f"c{i % classes}",
                              split="test" if i % 4 == 0 else "train", width=8, height=8,
                              source_path="") for i in range(n)])


def _samples(gen_id: str, n: int) -> pd.DataFrame:
    return pd.DataFrame([dict(id=f"{gen_id}_{i:03d}", generation_id=gen_id, idx=i,
                              path=f"s{i}.png", source_image_id="", label=i % 2,
                              class_name=f"c{i % 2}", seed=100 + i, sampler="ddim", steps=2,
                              guidance=1.0) for i in range(n)])


def test_image_page_filters_interleaves_and_clamps(project):
    ds = Dataset(id=new_id("ds"), name="d", num_images=30, num_classes=3)
    project.add_dataset(ds, _images(ds.id, 30, 3))
    p = reads.image_page(project, ds.id, page=1, page_size=7)
    assert (p.total, p.pages, p.page, len(p.rows)) == (30, 5, 1, 7)
    assert list(p.rows.columns) == ["id", "path", "thumb", "class_name"]
    # rank within the class first, then the label: every class on the first page
    assert p.rows["class_name"].tolist()[:3] == ["c0", "c1", "c2"]
    last = reads.image_page(project, ds.id, page=99, page_size=7)
    assert (last.page, len(last.rows)) == (5, 2)
    assert reads.image_page(project, ds.id, page=-3, page_size=7).page == 1
    test_c1 = reads.image_page(project, ds.id, class_name="c1", split="test", page_size=50)
    expected = [f"{ds.id}_{i:03d}" for i in range(30) if i % 3 == 1 and i % 4 == 0]
    assert test_c1.total == len(expected) and test_c1.rows["id"].tolist() == expected
    none = reads.image_page(project, "no-such-dataset")
    assert (none.total, none.pages, none.page, len(none.rows)) == (0, 1, 1, 0)


def test_sample_page_and_revision(project):
    before = reads.revision(project)
    assert reads.revision(project) == before  # nothing changed, same signature
    gen = Generation(id=new_id("gen"), name="g", folder="generations/g", count=10,
                     config_json="{}")
    project.add_generation(gen, _samples(gen.id, 10))
    after = reads.revision(project)
    assert after != before
    p = reads.sample_page(project, gen.id, page=2, page_size=4)
    assert (p.total, p.pages, p.page) == (10, 3, 2)
    assert p.rows["id"].tolist() == [f"{gen.id}_{i:03d}" for i in range(4, 8)]
    assert p.rows["seed"].tolist() == [104, 105, 106, 107]
    # no samples.parquet: no plan, and no error
    assert reads.sample_plan(project, project.get(Generation, gen.id), 3) == {}
    # a job changing status changes the revision
    job = project.add(Job(id=new_id("job"), kind="train", title="t", status="queued"))
    queued = reads.revision(project)
    project.update(Job, job.id, status="running")
    assert reads.revision(project) not in (queued, after)


def test_sample_plan_reads_the_generation_parquet(project):
    gen = Generation(id=new_id("gen"), name="g", folder="generations/g", count=2,
                     config_json="{}")
    project.add_generation(gen, _samples(gen.id, 2))
    folder = project.abs(gen.folder)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"idx": [0, 1], "mode": ["mixup", "mixup"], "cond_index": [0, 1],
                  "partner_image_id": ["a", "b"], "weight": [0.25, 0.75]}).to_parquet(
        folder / "samples.parquet")
    plan = reads.sample_plan(project, gen, 1)
    assert plan["mode"] == "mixup" and plan["partner_image_id"] == "b"
    assert plan["weight"] == 0.75


def test_top_confusions_and_config_table():
    """The largest off-diagonal cells, largest first, as a share of the true class; runs'
    settings side by side with the fields that differ first."""
    import numpy as np

    cm = np.array([[5, 3, 0], [1, 6, 0], [0, 4, 2]])
    top = reads.top_confusions(cm, ["a", "b", "c"], k=2)
    assert top.values.tolist() == [["c", "b", 4, 66.7], ["a", "b", 3, 37.5]]
    assert len(reads.top_confusions(np.eye(3, dtype=int), ["a", "b", "c"])) == 0
    table = reads.config_table({"r1": {"arch": "resnet_tiny", "epochs": 2, "seed": None},
                                "r2": {"arch": "resnet_tiny", "epochs": 3, "lr": 0.1}})
    assert list(table.columns) == ["field", "differs", "r1", "r2"]
    assert table.values.tolist() == [["epochs", "≠", "2", "3"], ["seed", "≠", "none", "—"],
                                     ["lr", "≠", "—", "0.1"],
                                     ["arch", "", "resnet_tiny", "resnet_tiny"]]


def test_pages_match_the_plain_queries_on_unbalanced_classes_and_gaps(project):
    """The cached interleaved order and the idx-range sample pages return exactly what the
    plain window / OFFSET queries return, on unbalanced classes, a split filter, and a
    generation whose numbering has a gap (the OFFSET fallback)."""
    frame = _images("dsu", 97, 4)
    frame["label"] = [0 if i < 40 else (1 if i < 45 else (2 if i % 3 else 3)) for i in range(97)]
    frame["class_name"] = [f"c{v}" for v in frame["label"]]
    ds = Dataset(id="dsu", name="u", num_images=97, num_classes=4)
    project.add_dataset(ds, frame)

    def plain(split, page, size):
        cond, params = "dataset_id = ?", ["dsu"]
        if split:
            cond, params = cond + " AND split = ?", params + [split]
        return project.query(
            f"SELECT id FROM (SELECT id, label, row_number() OVER (PARTITION BY label ORDER BY "
            f"idx) AS r FROM image WHERE {cond}) ORDER BY r, label LIMIT ? OFFSET ?",
            params + [size, (page - 1) * size])["id"].tolist()

    for split in (None, "train", "test"):
        for page in (1, 2, 5, 9):
            got = reads.image_page(project, "dsu", split=split, page=page, page_size=11)
            assert got.rows["id"].tolist() == plain(split, got.page, 11), (split, page)
            assert got.rows["path"].tolist() == [f"p{int(i[4:])}.png" for i in got.rows["id"]]
    gen = Generation(id=new_id("gen"), name="g", folder="generations/g", count=9,
                     config_json="{}")
    gapped = _samples(gen.id, 10).drop(index=3)  # idx 0..9 without 3
    project.add_generation(gen, gapped)
    p = reads.sample_page(project, gen.id, page=1, page_size=4)
    assert p.rows["idx"].tolist() == [0, 1, 2, 4] and p.total == 9
    assert reads.sample_page(project, gen.id, page=3, page_size=4).rows["idx"].tolist() == [9]
