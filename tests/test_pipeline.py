"""The whole pipeline on the bundled digits at tiny sizes: every stage wired through the
project file, the results traceable, the export loadable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.config import EvalConfig, GenerateConfig, TrainConfig
from engine.demo import DemoConfig, results_table, run_demo
from engine.project import Evaluation, Export, Generation, Model, Selection


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from engine.project import Project

    root = tmp_path_factory.mktemp("demo")
    config = DemoConfig(
        train=TrainConfig(steps=12, batch_size=16, block_channels=(8, 16),
                          cross_attention_dim=16, attention_head_dim=8, checkpoint_every=100,
                          preview_every=100, warmup_steps=2),
        generate=GenerateConfig(variations=2, steps=2, batch_size=512),
        evaluate=EvalConfig(epochs=1, batch_size=256))
    project = Project(root / "demo")
    results = run_demo(project, config, export_dir=root / "export", say=lambda m: None)
    yield project, results, root
    project.close()


def test_demo_results_have_the_promised_keys(demo_run):
    project, results, root = demo_run
    for key in ("real", "synthetic", "synthetic_filtered", "synthetic_2x",
                "class_conditioned", "real_plus_synthetic"):
        assert 0.0 <= results[key]["top1"] <= results[key]["top5"] <= 100.0
    ds_train = 1797 - results["test_images"]
    assert results["generated"] == 2 * ds_train
    assert results["selected"] == ds_train  # middle band of 2x keeps 1x (even class sizes)
    assert results["synthetic"]["train_images"] == ds_train
    assert results["synthetic_2x"]["train_images"] == 2 * ds_train
    assert results["real_plus_synthetic"]["train_images"] == 3 * ds_train
    assert results["export"] == str(root / "export")
    assert "real + RCDM-pca synthetic 2x" in results_table(results)


def test_every_arrow_is_a_row(demo_run):
    project, results, _ = demo_run
    models = {m.name: m for m in project.list(Model)}
    assert {"rcdm-pca", "class-conditioned"} <= set(models)
    assert all(m.status == "trained" for m in models.values())
    gens = project.list(Generation)
    assert {g.model_id for g in gens} == {m.id for m in models.values()}
    sel = project.get(Selection, "demo-middle")
    assert json.loads(sel.config_json)["band"]["low"] == 0.25
    evals = project.list(Evaluation)
    assert len(evals) == 6 and all(e.status == "done" for e in evals)
    assert project.list(Export)[0].count == results["selected"]


def test_generated_images_carry_their_provenance(demo_run):
    from PIL import Image

    project, _, _ = demo_run
    gen = project.get(Generation, "rcdm-pca-x2")
    samples = project.samples(gen.id)
    row = samples.iloc[3]
    meta = Image.open(project.abs(row["path"])).text
    assert int(meta["rcdm:seed"]) == int(row["seed"])
    assert meta["rcdm:source"] == row["source_image_id"]
    # variation v of source j has seed j*k + v: seeds are unique
    assert samples["seed"].is_unique


def test_export_loads_with_torchvision(demo_run):
    import pandas as pd
    from torchvision.datasets import ImageFolder

    _, results, root = demo_run
    folder = root / "export"
    ds = ImageFolder(str(folder))
    assert len(ds) == results["selected"]
    assert ds.classes == [str(i) for i in range(10)]
    manifest = pd.read_csv(folder / "manifest.csv")
    assert {"seed", "source_image_id", "model_id", "sampler", "guidance"} <= set(manifest)
    assert np.all(manifest["kind"] == "synthetic")


def test_bad_requests_are_refused_and_change_nothing(demo_run):
    from engine.config import EvalConfig, ExportConfig, GenerateConfig
    from engine.errors import InvalidConfigError, NotFoundError
    from engine.stages import curate_stage, evaluate_stage, export_stage, generate_stage

    project, _, _ = demo_run
    tables = (Evaluation, Export, Generation, Model)
    before = {t.__name__: len(project.list(t)) for t in tables}
    with pytest.raises(InvalidConfigError, match="is empty; nothing was saved"):
        curate_stage.combine(project, "demo-middle", "demo-middle", "difference", "empty")
    # an empty selection (as an older project could hold) is refused downstream
    gen = project.get(Generation, "rcdm-pca-x2")
    empty = curate_stage._store(project, gen, "", np.zeros(0, np.int64), "empty", {"kind": "test"})
    with pytest.raises(InvalidConfigError, match="empty"):
        evaluate_stage.prepare(project, EvalConfig(), mix="synthetic", selection_ref=empty.id)
    with pytest.raises(InvalidConfigError, match="nothing to export"):
        export_stage.prepare(project, ExportConfig(), empty.id)
    with pytest.raises(InvalidConfigError, match="no source image"):
        generate_stage.prepare(project, GenerateConfig(), "rcdm-pca", image_ids=[])
    with pytest.raises(NotFoundError, match="no model 'mdl_from_elsewhere'"):
        generate_stage.prepare(project, GenerateConfig(), "mdl_from_elsewhere")
    with pytest.raises(InvalidConfigError, match="cannot re-encode"):
        from engine.config import EncodeConfig
        from engine.stages import encode_stage

        encode_stage.prepare(project, EncodeConfig(encoder="class"),
                       generation_ref="rcdm-pca-x2")
    after = {t.__name__: len(project.list(t)) for t in tables}
    assert before == after


def test_generation_reproduces_from_its_recorded_inputs(demo_run):
    """(model, representation, seed, sampler, steps, guidance) gives the same image again."""
    from PIL import Image

    from engine.config import GenerateConfig
    from engine.project import Encoding
    from engine.rcdm.model import load_rcdm
    from engine.rcdm.sample import sample_images

    project, _, _ = demo_run
    gen = project.get(Generation, "rcdm-pca-x2")
    model = project.get(Model, gen.model_id)
    row = project.samples(gen.id).iloc[5]
    src = project.images(gen.dataset_id).set_index("id").loc[row["source_image_id"]]
    cond = np.asarray(project.embeddings(project.get(Encoding, model.encoding_id))
                      [[int(src["idx"])]], dtype=np.float32)
    rcdm, _, _ = load_rcdm(project.abs(model.checkpoint))
    again = sample_images(rcdm, cond, np.array([row["seed"]]),
                          GenerateConfig(sampler=row["sampler"], steps=int(row["steps"]),
                                         guidance=float(row["guidance"])))[0]
    stored = np.asarray(Image.open(project.abs(row["path"])).convert("RGB"))
    assert np.abs(again.astype(int) - stored.astype(int)).max() <= 1


def test_low_data_demo_keeps_the_full_demos_test_images(demo_run, tmp_path):
    """``demo --per-class N``: N training images per class and a validation split, scored on
    the very test images of the full demo. The recipe search chooses on validation: no test
    evaluation is queued before the last validation one; the report gives mean ± std over
    seeds for real only, the best classical augmentation, the recommended set and the
    references, and exports the recommended set."""
    from dataclasses import replace

    from engine.project import Dataset, Evaluation, Project

    full_project, full_results, _ = demo_run
    config = replace(DemoConfig(
        train=TrainConfig(steps=4, batch_size=16, block_channels=(8, 16),
                          cross_attention_dim=16, attention_head_dim=8, checkpoint_every=100,
                          preview_every=100, warmup_steps=1),
        generate=GenerateConfig(variations=2, steps=2, batch_size=512),
        evaluate=EvalConfig(epochs=1, batch_size=256))).with_per_class(10, seeds=2)
    with Project(tmp_path / "low") as project:
        results = run_demo(project, config, export_dir=tmp_path / "export", say=lambda m: None)
        (ds,) = project.list(Dataset)
        low = project.images(ds.id)
        evals = sorted(project.list(Evaluation), key=lambda e: e.created_at)
    full_ds = [d for d in full_project.list(Dataset) if d.name == "digits"][0]
    full = full_project.images(full_ds.id)
    assert ds.name == "digits-n10" and (ds.num_train, results["train_per_class"]) == (100, 10)
    assert low["split"].eq("test").tolist() == full["split"].eq("test").tolist()
    assert results["test_images"] == full_results["test_images"] and ds.num_val > 0
    # every choice on validation, the test split only afterwards
    splits = [e.eval_split for e in evals]
    assert "val" in splits and splits == sorted(splits, key=lambda s: s == "test")
    # 2 seeds per reported arm: the report (3 arms) and the references (3)
    assert splits.count("test") == 2 * 6
    for key in ("real", "classical", "real_plus_synthetic", "synthetic", "synthetic_max",
                "class_conditioned"):
        assert results[key]["seeds"] == 2 and results[key]["top1_std"] is not None, key
    assert results["real"]["train_images"] == 100 and results["generated"] == 400
    assert results["synthetic_max"]["train_images"] == 400  # 4x, unfiltered
    assert results["real_plus_synthetic"]["train_images"] == 100 + results["selected"]
    assert results["classical"]["augment"] in ("autoaugment", "randaugment", "mixup", "cutmix")
    assert len(list((tmp_path / "export").rglob("*.png"))) == results["selected"]
    table = results_table(results)
    assert "10 real training images per class" in table and "(best synthetic)" in table
    assert results["recipe"]["winner"] in table and "± " in table
    # the verdict is decided on validation: the arm to use, and its sentence in the table
    verdict = results["recipe"]["verdict"]
    baselines = {"real", results["classical"]["augment"]}
    assert len(verdict["val"]) == 3 and baselines < set(verdict["val"])
    assert verdict["val"][verdict["use"]] == max(verdict["val"].values())
    assert verdict["helps"] == (verdict["use"] not in baselines)
    assert results["recipe"]["advice"] in table and "on validation" in table
