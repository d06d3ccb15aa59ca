"""Representation perturbation: λ · σ · ε(seed) added to each sample's representation.

Unit checks of the noise (seeded, scaled relative to the training encodings' spread, λ = 0
untouched), then the stage, the shards and the command line on a tiny real project (an
untrained 8x8 RCDM, a 5-d PCA encoding).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import GenerateConfig
from engine.errors import DatasetError, InvalidConfigError
from engine.rcdm import conditions

pytestmark = pytest.mark.usefixtures("one_thread")

D = 5


def _pool(n: int = 60, d: int = 6, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(n, d) representations with a different spread and offset per dimension."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(0.1, 5.0, d) + np.arange(d)
    return x.astype(np.float32), [f"img{i}" for i in range(n)], np.arange(n) % 3


# ----------------------------------------------------------------------------- the noise


def test_perturb_bounds_are_refused_with_the_value():
    assert GenerateConfig().perturb == 0.0
    assert GenerateConfig(perturb=4.0).perturb == 4.0
    for bad in (-0.1, 4.5, math.nan, math.inf):
        with pytest.raises(InvalidConfigError, match=r"must be in \[0, 4\]") as exc:
            GenerateConfig(perturb=bad)
        assert repr(bad) in str(exc.value)
    with pytest.raises(InvalidConfigError, match="perturb"):
        GenerateConfig.from_dict({"perturb": "0.5"})
    assert GenerateConfig.from_dict(GenerateConfig(perturb=0.5).to_dict()).perturb == 0.5


def test_noise_fixed_numbers():
    """The noise of a seed is pinned: a recorded (seed, λ, σ) reproduces the representation."""
    eps = conditions.perturbation_noise(np.array([0, 7, -1]), 3)
    expected = np.array([[-1.2271516377609542, 0.7421941130320038, -2.312417321104935],
                         [-3.0197244021499623, 0.15822823222235688, -0.13341285718231222],
                         [-0.01134125691486232, -0.10933058805502366, -2.585602291255146]])
    np.testing.assert_allclose(eps, expected, rtol=0, atol=1e-12)


def test_perturbation_is_seeded_and_batch_independent():
    x, ids, labels = _pool()
    plan = conditions.build_plan(GenerateConfig(perturb=0.5), x, ids, labels)
    rows, seeds = np.array([0, 1, 2, 2]), np.array([10, 11, 12, 13])
    a = plan.sample_conditions(rows, seeds)
    assert a.dtype == np.float32 and a.shape == (4, 6)
    assert np.array_equal(a, plan.sample_conditions(rows, seeds))  # same seeds: same
    # one sample alone (another batch or shard) gets the same representation
    assert np.array_equal(a[1:2], plan.sample_conditions(rows[1:2], seeds[1:2]))
    # other seeds: every representation moves elsewhere (same source, rows 2 and 3 too)
    b = plan.sample_conditions(rows, seeds + 100)
    assert np.all(np.any(a != b, axis=1)) and np.any(a[2] != a[3])
    # the distance recorded is the one between source and perturbed representation
    d = plan.perturbation_distances(rows, seeds)
    np.testing.assert_allclose(d, np.linalg.norm(a.astype(np.float64) - x[rows], axis=1),
                               rtol=1e-6)
    assert np.all(d > 0)


def test_lambda_zero_leaves_the_conditions_untouched():
    x, ids, labels = _pool()
    for mode in ("variations", "mixup", "class_sample"):
        config = GenerateConfig(mode=mode, per_class=4, seed=3)
        plan = conditions.build_plan(config, x, ids, labels)
        again = conditions.build_plan(config, x, ids, labels, scale=np.ones(6))
        assert plan.perturb == 0 and plan.scale is None
        assert np.array_equal(plan.cond, again.cond)  # the scale plays no part at λ = 0
        rows = np.arange(len(plan))
        out = plan.sample_conditions(rows, rows + 5)
        assert out.dtype == plan.cond.dtype and np.array_equal(out, plan.cond[rows])
        assert not plan.perturbation_distances(rows, rows).any()
    base = conditions.variations_plan(x, ids, labels)
    assert np.array_equal(conditions.build_plan(GenerateConfig(), x, ids, labels).cond,
                          base.cond)


def test_noise_scale_is_lambda_times_the_training_spread():
    """ε ~ N(0, I) per dimension once divided by λσ; tolerances from the sample size."""
    x, ids, labels = _pool()
    scale = conditions.representation_scale(x)
    np.testing.assert_allclose(scale, x.astype(np.float64).std(axis=0), rtol=1e-12)
    lam, n = 0.7, 4000
    plan = conditions.build_plan(GenerateConfig(perturb=lam), x, ids, labels, scale)
    rows, seeds = np.zeros(n, dtype=np.int64), np.arange(n)
    z = (plan.sample_conditions(rows, seeds).astype(np.float64) - x[0]) / (lam * scale)
    # mean 0 (std of the mean 1/sqrt(n)), std 1 (std of the std about 1/sqrt(2n)): 5 sigmas
    assert np.all(np.abs(z.mean(axis=0)) < 5 / math.sqrt(n))
    assert np.all(np.abs(z.std(axis=0) - 1) < 5 / math.sqrt(2 * n))
    # the distances: E ||λ σ ε||^2 = λ^2 Σσ^2, with variance λ^4 2 Σσ^4 per sample
    d2 = plan.perturbation_distances(rows, seeds) ** 2
    expected = lam ** 2 * np.sum(scale ** 2)
    tol = 5 * lam ** 2 * math.sqrt(2 * np.sum(scale ** 4)) / math.sqrt(n)
    assert abs(d2.mean() - expected) < tol
    # relative to the scale: the same data in other units moves by the same multiple
    big = conditions.build_plan(GenerateConfig(perturb=lam), x * 1000, ids, labels)
    moved = big.sample_conditions(rows[:50], seeds[:50]).astype(np.float64) - x[0] * 1000.0
    np.testing.assert_allclose(moved / 1000, z[:50] * lam * scale,
                               rtol=1e-3, atol=1e-4 * float(scale.max()))


def test_normalised_pools_stay_normalised_and_errors():
    x, ids, labels = _pool()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    plan = conditions.build_plan(GenerateConfig(perturb=1.0), unit, ids, labels)
    assert plan.unit
    out = plan.sample_conditions(np.arange(10), np.arange(10))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.all(plan.perturbation_distances(np.arange(10), np.arange(10)) > 0)
    with pytest.raises(DatasetError, match="at least two"):
        conditions.representation_scale(x[:1])
    with pytest.raises(DatasetError, match="all equal"):
        conditions.representation_scale(np.ones((4, 3)))
    with pytest.raises(InvalidConfigError, match="needs the representation's scale"):
        conditions.ConditionPlan("variations", x[:2], labels[:2], ids[:2], ["", ""],
                                 np.zeros(2), perturb=0.5)
    with pytest.raises(InvalidConfigError, match="finite"):
        conditions.with_perturbation(conditions.variations_plan(x, ids, labels), 0.5,
                                     np.full(6, np.nan))


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def gen_project(tmp_path_factory):
    from conftest import tiny_generation_project

    path, _ = tiny_generation_project(tmp_path_factory.mktemp("perturb"), dim=D)
    return path


def _run(path, config, image_ids=None, name=None):
    from engine.jobs import JobManager
    from engine.project import Generation, Project
    from engine.stages import generate_stage

    with Project(path) as project:
        job = JobManager(project).run_inline(
            generate_stage.prepare(project, config, "tiny-rcdm", image_ids, name))
        gen = project.get(Generation, job.result_id)
        folder = project.abs(gen.folder)
        return gen, pd_read(folder / "samples.parquet"), folder


def pd_read(path: Path):
    import pandas as pd

    return pd.read_parquet(path)


def _train(path):
    from engine.project import Dataset, Encoding, Project

    with Project(path) as project:
        ds = project.list(Dataset)[0]
        images = project.images(ds.id)
        emb = np.asarray(project.embeddings(project.list(Encoding, dataset_id=ds.id)[-1]))
    train = images[images["split"] == "train"]
    return train, emb[train["idx"].to_numpy()]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_stage_perturbs_reproducibly_and_records_provenance(gen_project):
    from engine.project import Model, Project
    from engine.rcdm.model import load_rcdm
    from engine.rcdm.sample import sample_images

    train, train_emb = _train(gen_project)
    ids = train["id"].tolist()[:4]
    base = GenerateConfig(sampler="ddim", steps=2, variations=2, seed=3, batch_size=3)
    lam = 1.5
    gen, rows, folder = _run(gen_project, base.replace(perturb=lam), ids)
    assert gen.count == 8 and gen.name == "tiny-rcdm-x2-perturb1.5"
    # samples.parquet: λ, the noise seed (the sample's seed) and the distance, per sample
    assert rows["perturb"].tolist() == [lam] * 8
    assert rows["noise_seed"].tolist() == rows["seed"].tolist() == list(range(3, 11))
    assert np.all(rows["perturb_distance"] > 0)
    # config_json: λ and σ (the training encodings' per-dimension std, saved beside the plan)
    conf = json.loads(gen.config_json)
    assert conf["perturb"] == lam
    info = conf["conditions"]["perturb"]
    assert info["strength"] == lam and "training encodings" in info["scale"]
    with Project(gen_project) as project:
        scale = np.load(project.abs(info["scale_file"]))
        model_dir = project.abs(project.get(Model, gen.model_id).checkpoint)
    np.testing.assert_allclose(scale, train_emb.astype(np.float64).std(axis=0), rtol=1e-6)
    # the PNG text says it too, and (model, source, seed, λ, σ) reproduces the image
    source_cond = np.load(folder / "source_cond.npy")
    model, _, _ = load_rcdm(model_dir)
    for i in (0, 5):
        path = Path(rows["path"][i])
        with Image.open(path) as img:
            text = dict(img.text)
        assert text["rcdm:perturb"] == repr(lam)
        assert text["rcdm:noise_seed"] == str(rows["seed"][i])
        assert float(text["rcdm:perturb_distance"]) == pytest.approx(
            rows["perturb_distance"][i], rel=1e-5)
        j = ids.index(text["rcdm:source"])
        cond = conditions.perturb(source_cond[j:j + 1], [int(text["rcdm:noise_seed"])], scale,
                                  float(text["rcdm:perturb"]))
        assert np.linalg.norm(cond[0] - source_cond[j]) == pytest.approx(
            rows["perturb_distance"][i], rel=1e-5)
        image = sample_images(model, cond, np.array([int(text["rcdm:seed"])]), base)[0]
        assert np.array_equal(image, _pixels(path))
    # the same run again: the same images, byte for byte; another base seed: other ones
    _, again, _ = _run(gen_project, base.replace(perturb=lam), ids, "again")
    _, other, _ = _run(gen_project, base.replace(perturb=lam, seed=50), ids, "other")
    for a, b, c in zip(rows["path"], again["path"], other["path"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()
        assert not np.array_equal(_pixels(Path(a)), _pixels(Path(c)))
    assert np.array_equal(rows["perturb_distance"], again["perturb_distance"])
    assert not np.array_equal(rows["perturb_distance"], other["perturb_distance"])


def test_stage_lambda_zero_is_todays_generation(gen_project):
    train, _ = _train(gen_project)
    ids = train["id"].tolist()[:4]
    base = GenerateConfig(sampler="ddim", steps=2, variations=2, seed=3)
    gen, rows, folder = _run(gen_project, base, ids, "plain")
    assert rows["perturb"].tolist() == [0.0] * 8 and rows["noise_seed"].tolist() == [-1] * 8
    assert not rows["perturb_distance"].any()
    conf = json.loads(gen.config_json)
    assert conf["perturb"] == 0.0 and "perturb" not in conf["conditions"]
    assert not (folder / "perturb_scale.npy").exists()
    with Image.open(rows["path"][0]) as img:
        assert not [k for k in img.text if "perturb" in k or "noise" in k]
    # the perturbation reaches the model: same seeds, other images
    _, moved, _ = _run(gen_project, base.replace(perturb=2.0), ids, "moved")
    differ = [not np.array_equal(_pixels(Path(a)), _pixels(Path(b)))
              for a, b in zip(rows["path"], moved["path"])]
    assert all(differ)


def test_stage_perturbs_other_modes(gen_project):
    gen, rows, _ = _run(gen_project, GenerateConfig(sampler="ddim", steps=2, mode="mixup",
                                                     per_class=2, perturb=0.25), None)
    assert gen.name == "tiny-rcdm-mixup-perturb0.25" and gen.count == 6
    assert np.all(rows["perturb_distance"] > 0)
    with Image.open(rows["path"][0]) as img:
        assert img.text["rcdm:mode"] == "mixup" and img.text["rcdm:perturb"] == "0.25"


# ------------------------------------------------------------------- shards, command line


def test_cli_perturb_flag_shards_and_bounds(gen_project, tmp_path, capsys):
    from engine.project import Generation, Project
    from studio.cli import main

    options = ["--project", str(gen_project), "--variations", "2", "--sampler", "ddim",
               "--steps", "2", "--seed", "9", "--batch-size", "5"]
    assert main(["generate", *options, "--perturb", "4.5"]) == 2
    err = capsys.readouterr().err
    assert "perturb (the perturbation strength λ) must be in [0, 4], got 4.5" in err
    assert main(["generate", *options, "--perturb", "0.3", "--name", "cli-p", "--json"]) == 0
    whole_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["id"]
    out = tmp_path / "shards"
    for k in range(2):
        assert main(["generate", *options, "--perturb", "0.3", "--shard", f"{k}/2",
                     "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    # another λ is another plan: refused in the same folder
    assert main(["generate", *options, "--perturb", "0.4", "--shard", "0/2",
                 "--out", str(out)]) == 2
    assert "already holds the plan of another generation" in capsys.readouterr().err
    assert main(["generate-merge", "--project", str(gen_project), str(out), "--json"]) == 0
    merged_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["id"]
    with Project(gen_project) as project:
        whole, merged = project.get(Generation, whole_id), project.get(Generation, merged_id)
        assert json.loads(whole.config_json)["perturb"] == 0.3
        assert merged.name.endswith("-x2-perturb0.3")
        conf = json.loads(merged.config_json)["conditions"]["perturb"]
        assert project.abs(conf["scale_file"]).is_file()
        a, b = project.samples(whole.id), project.samples(merged.id)
        assert len(a) == len(b) == 36
        for pa, pb in zip(a["path"], b["path"]):  # every image, pixels and provenance
            assert project.abs(pa).read_bytes() == project.abs(pb).read_bytes()
        ra = pd_read(project.abs(whole.folder) / "samples.parquet")
        rb = pd_read(project.abs(merged.folder) / "samples.parquet")
        for col in ("perturb", "noise_seed", "perturb_distance"):
            assert np.array_equal(ra[col].to_numpy(), rb[col].to_numpy())
