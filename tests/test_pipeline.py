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
    for key in ("real", "synthetic", "class_conditioned", "real_plus_synthetic"):
        assert 0.0 <= results[key]["top1"] <= results[key]["top5"] <= 100.0
    ds_train = 1797 - results["test_images"]
    assert results["generated"] == 2 * ds_train
    assert results["selected"] == ds_train  # middle band of 2x keeps 1x (even class sizes)
    assert results["real_plus_synthetic"]["train_images"] == 2 * ds_train
    assert results["export"] == str(root / "export")
    assert "real + RCDM synthetic" in results_table(results)


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
    assert len(evals) == 4 and all(e.status == "done" for e in evals)
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
