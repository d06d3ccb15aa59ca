"""Samplers by name and the conditioning space: tiny real U-Nets (8x8), a few steps each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import GenerateConfig, TrainConfig
from engine.errors import DatasetError, InvalidConfigError
from engine.rcdm import conditions
from engine.rcdm.model import build_rcdm
from engine.rcdm.sample import check_sampler, make_scheduler, sample_images, sampler_names

pytestmark = pytest.mark.usefixtures("one_thread")

D = 5
TINY = TrainConfig(image_size=8, block_channels=(8, 16), cross_attention_dim=16,
                   attention_head_dim=8, cond_tokens=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_rcdm(TINY, D).eval()
    with torch.no_grad():
        m.null_cond.normal_()
    return m


# ----------------------------------------------------------------------------- samplers


def test_sampler_names_are_the_ddpm_family():
    names = sampler_names()
    assert names[:3] == ("ddpm", "ddim", "dpm++")
    for name in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                 "UniPCMultistepScheduler", "DPMSolverMultistepScheduler",
                 "HeunDiscreteScheduler", "DEISMultistepScheduler", "LMSDiscreteScheduler"):
        assert name in names
    for name in ("FlowMatchEulerDiscreteScheduler", "DDIMInverseScheduler",
                 "EDMEulerScheduler", "UnCLIPScheduler", "AmusedScheduler"):
        assert name not in names
    with pytest.raises(InvalidConfigError, match="valid samplers: ddpm, ddim, dpm\\+\\+, .*"
                                                 "EulerDiscreteScheduler"):
        check_sampler("FlowMatchEulerDiscreteScheduler")
    with pytest.raises(InvalidConfigError, match="'NoSuchScheduler'"):
        check_sampler("NoSuchScheduler")
    with pytest.raises(InvalidConfigError, match="diffusers scheduler class name"):
        GenerateConfig(sampler="euler")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' np.array(tensor)
def test_scheduler_takes_the_training_schedule():
    config = TrainConfig(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                         num_train_timesteps=500)
    euler = make_scheduler("EulerDiscreteScheduler", config)
    assert type(euler).__name__ == "EulerDiscreteScheduler"
    assert euler.config.prediction_type == "v_prediction"
    assert euler.config.beta_schedule == "squaredcos_cap_v2"
    assert euler.config.num_train_timesteps == 500
    assert euler.config.timestep_spacing == "trailing"
    euler.set_timesteps(5)
    # sigma-parameterised: starts from noise of std sqrt(sigma_max^2 + 1) >> 1
    assert float(euler.init_noise_sigma) > 100.0
    assert float(euler.timesteps[0]) == 499.0
    assert make_scheduler("ddpm", TrainConfig()).config.clip_sample is True
    assert make_scheduler("dpm++", TrainConfig()).config.algorithm_type == "dpmsolver++"


SCHEDULERS = ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "UniPCMultistepScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
              "DPMSolverMultistepScheduler"]


@pytest.mark.parametrize("sampler", SCHEDULERS)
def test_schedulers_by_name_reproduce_per_seed(model, sampler):
    cond = np.random.default_rng(1).normal(size=(4, D)).astype(np.float32)
    seeds = np.array([7, 8, 9, 10])
    config = GenerateConfig(sampler=sampler, steps=4, batch_size=4)
    full = sample_images(model, cond, seeds, config)
    again = sample_images(model, cond, seeds, config)
    alone = sample_images(model, cond[2:3], seeds[2:3], config.replace(batch_size=1))
    assert full.shape == (4, 8, 8, 3) and full.dtype == np.uint8
    assert np.array_equal(full, again)  # same inputs and seeds, same images
    assert np.abs(full[2].astype(int) - alone[0].astype(int)).max() <= 1  # batch-free
    assert not np.array_equal(full[0], full[1])


def test_ancestral_scheduler_uses_per_sample_noise(model):
    """Euler ancestral draws noise at every step: from each sample's own generator."""
    cond = np.repeat(np.random.default_rng(2).normal(size=(1, D)).astype(np.float32), 3, 0)
    config = GenerateConfig(sampler="EulerAncestralDiscreteScheduler", steps=4, batch_size=3)
    out = sample_images(model, cond, np.array([5, 6, 5]), config)
    assert np.array_equal(out[0], out[2]) and not np.array_equal(out[0], out[1])


def test_broken_scheduler_schedule_is_a_clear_error(model):
    # KDPM2's ancestral sigmas break on the cosine schedule's huge sigma_max (NaN timestep)
    config = GenerateConfig(sampler="KDPM2AncestralDiscreteScheduler", steps=3)
    with pytest.raises(InvalidConfigError, match="NaN timesteps"):
        sample_images(model, np.zeros((1, D), np.float32), np.array([0]), config)


# ----------------------------------------------------------------------------- conditions


def test_slerp_and_lerp_fixed_numbers():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    path = conditions.slerp(a, b, np.array([0.0, 0.5, 1.0]))
    assert path == pytest.approx(np.array([[1, 0], [0.70710678, 0.70710678], [0, 1]]))
    third = conditions.slerp(a, b, np.array([1 / 3]))[0]
    assert third == pytest.approx([np.cos(np.pi / 6), np.sin(np.pi / 6)])
    assert conditions.lerp(np.array([2.0, 0.0]), np.array([0.0, 4.0]), np.array([0.25])) == \
        pytest.approx(np.array([[1.5, 1.0]]))
    assert conditions.is_unit_norm(path) and not conditions.is_unit_norm(np.array([[2.0, 0.0]]))


def test_interpolation_plan():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(2, D)).astype(np.float32)
    plan = conditions.interpolation_plan(raw, ["a", "b"], np.array([0, 2]), points=5)
    assert plan.mode == "interpolate" and plan.cond.shape == (5, D)
    assert np.allclose(plan.cond[0], raw[0]) and np.allclose(plan.cond[-1], raw[1])
    assert np.allclose(plan.cond[2], (raw[0] + raw[1]) / 2, atol=1e-6)  # lerp: not normalised
    assert plan.weights.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert plan.labels.tolist() == [0, 0, 0, 2, 2]  # the nearer end's class
    assert plan.source_ids == ["a"] * 5 and plan.partner_ids == ["b"] * 5
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    splan = conditions.interpolation_plan(unit, ["a", "b"], np.array([0, 2]), points=5)
    assert np.allclose(np.linalg.norm(splan.cond, axis=1), 1.0, atol=1e-6)  # slerp
    omega = np.arccos(unit[0] @ unit[1])
    assert np.arccos(np.clip(splan.cond[1] @ unit[0], -1, 1)) == pytest.approx(omega / 4,
                                                                              abs=1e-5)
    with pytest.raises(InvalidConfigError, match="exactly two"):
        conditions.interpolation_plan(raw[:1], ["a"], np.array([0]), points=3)


def _pool(n_per_class=(4, 5, 3), unit=False, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(n_per_class)), n_per_class)
    cond = (rng.normal(size=(len(labels), D)) + 3.0 * labels[:, None]).astype(np.float32)
    if unit:
        cond /= np.linalg.norm(cond, axis=1, keepdims=True)
    ids = [f"img{i}" for i in range(len(labels))]
    return cond, ids, labels


def test_mixup_plan_pairs_within_class_and_is_seeded():
    cond, ids, labels = _pool()
    plan = conditions.mixup_plan(cond, ids, labels, per_class=6, alpha=0.4, seed=3)
    assert plan.cond.shape == (18, D) and plan.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    index = {x: i for i, x in enumerate(ids)}
    for k in range(len(plan)):
        i, j, w = index[plan.source_ids[k]], index[plan.partner_ids[k]], plan.weights[k]
        assert i != j and labels[i] == labels[j] == plan.labels[k] and 0.0 <= w <= 1.0
        assert np.allclose(plan.cond[k], (1 - w) * cond[i] + w * cond[j], atol=1e-5)
    again = conditions.mixup_plan(cond, ids, labels, per_class=6, alpha=0.4, seed=3)
    assert np.array_equal(plan.cond, again.cond) and plan.source_ids == again.source_ids
    other = conditions.mixup_plan(cond, ids, labels, per_class=6, alpha=0.4, seed=4)
    assert not np.array_equal(plan.cond, other.cond)
    # a class's mixes do not depend on the other classes of the pool
    only1 = conditions.mixup_plan(cond[labels == 1], [x for x, y in zip(ids, labels) if y == 1],
                         labels[labels == 1], per_class=6, alpha=0.4, seed=3)
    assert np.array_equal(only1.cond, plan.cond[6:12])
    # a normalised pool gives normalised mixes
    ucond, _, _ = _pool(unit=True)
    uplan = conditions.mixup_plan(ucond, ids, labels, per_class=4, alpha=1.0, seed=0)
    assert np.allclose(np.linalg.norm(uplan.cond, axis=1), 1.0, atol=1e-5)
    with pytest.raises(DatasetError, match=r"class\(es\) \[1\]"):
        conditions.mixup_plan(cond[:5], ids[:5], labels[:5], per_class=2, alpha=1.0, seed=0)


def test_class_sample_plan_draws_from_the_class_gaussian():
    cond, ids, labels = _pool(n_per_class=(40, 40, 40))
    mean0, cov0 = conditions.class_gaussian(cond[labels == 0], "ledoit_wolf")
    from sklearn.covariance import ledoit_wolf

    lw, _ = ledoit_wolf(cond[labels == 0].astype(np.float64))
    assert np.allclose(cov0, lw, atol=1e-5)  # only eps * mean variance added
    assert np.allclose(mean0, cond[labels == 0].mean(0), atol=1e-6)
    plan = conditions.class_sample_plan(cond, labels, per_class=3000, covariance="ledoit_wolf", seed=1)
    assert plan.cond.shape == (9000, D) and plan.source_ids[0] == ""
    for c in range(3):
        draws = plan.cond[plan.labels == c].astype(np.float64)
        mean, cov = conditions.class_gaussian(cond[labels == c], "ledoit_wolf")
        assert np.abs(draws.mean(0) - mean).max() < 0.1
        assert np.abs(np.cov(draws.T) - cov).max() < 0.15
    diag = conditions.class_sample_plan(cond, labels, per_class=3000, covariance="diagonal", seed=1)
    d0 = diag.cond[diag.labels == 0].astype(np.float64)
    assert np.abs(np.corrcoef(d0.T) - np.eye(D)).max() < 0.1  # independent dimensions
    again = conditions.class_sample_plan(cond, labels, per_class=3000, covariance="diagonal", seed=1)
    assert np.array_equal(diag.cond, again.cond)
    ucond, _, _ = _pool(n_per_class=(6, 6, 6), unit=True)
    uplan = conditions.class_sample_plan(ucond, np.repeat([0, 1, 2], 6), 5, "ledoit_wolf", seed=0)
    assert np.allclose(np.linalg.norm(uplan.cond, axis=1), 1.0, atol=1e-5)
    with pytest.raises(DatasetError, match="at least 2"):
        conditions.class_sample_plan(cond[:41], labels[:41], 2, "ledoit_wolf", seed=0)


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def gen_project(tmp_path_factory):
    from conftest import tiny_generation_project

    path, model_id = tiny_generation_project(tmp_path_factory.mktemp("sampling"), dim=D)
    return path, model_id


def _run_stage(path, config, image_ids=None, name=None):
    from engine.jobs import JobManager
    from engine.project import Generation, Project
    from engine.stages import generate_stage

    with Project(path) as project:
        job = JobManager(project).run_inline(
            generate_stage.prepare(project, config, "tiny-rcdm", image_ids, name))
        gen = project.get(Generation, job.result_id)
        return gen, project.samples(gen.id), project.images(gen.dataset_id), \
            [project.abs(p) for p in project.samples(gen.id)["path"]]


def test_stage_modes_record_provenance(gen_project):
    path, _ = gen_project
    base = GenerateConfig(sampler="ddim", steps=2, variations=2, seed=11)
    # interpolate: two images in the order given
    from engine.project import Dataset, Project

    with Project(path) as project:
        imgs = project.images(project.list(Dataset)[0].id)
    a, b = imgs["id"].iloc[20], imgs["id"].iloc[1]
    gen, samples, _, files = _run_stage(path, base.replace(mode="interpolate", points=3),
                                        [a, b])
    assert gen.count == 6 and gen.name == "tiny-rcdm-interpolate"
    assert samples["source_image_id"].tolist() == [a] * 6
    assert samples["seed"].tolist() == list(range(11, 17))
    conf = json.loads(gen.config_json)
    assert conf["mode"] == "interpolate" and conf["conditions"]["pair"] == [a, b]
    assert conf["conditions"]["weights"] == [0.0, 0.5, 1.0]
    with Image.open(files[3]) as img:  # point 1 (t = 0.5), variation 1
        assert img.text["rcdm:mode"] == "interpolate" and img.text["rcdm:partner"] == b
        assert img.text["rcdm:weight"] == "0.5" and img.text["rcdm:source"] == a
    # mixup over the training split: per_class x classes representations
    gen, samples, imgs, files = _run_stage(path, base.replace(mode="mixup", per_class=2,
                                                              variations=1))
    assert gen.count == 6 and samples["label"].tolist() == [0, 0, 1, 1, 2, 2]
    train = set(imgs.loc[imgs["split"] == "train", "id"])
    assert set(samples["source_image_id"]) <= train
    with Image.open(files[0]) as img:
        assert img.text["rcdm:mode"] == "mixup" and img.text["rcdm:partner"] in train
        assert 0.0 <= float(img.text["rcdm:weight"]) <= 1.0
    # class_sample: no source image
    gen, samples, _, files = _run_stage(path, base.replace(mode="class_sample", per_class=2))
    assert gen.count == 12 and set(samples["source_image_id"]) == {""}
    conf = json.loads(gen.config_json)
    assert conf["conditions"]["representations"] == 6 and conf["covariance"] == "ledoit_wolf"
    cond = np.load(Path(str(files[0]).split("/images/")[0]) / "source_cond.npy")
    assert cond.shape == (6, D)
    with Image.open(files[0]) as img:
        assert img.text["rcdm:mode"] == "class_sample" and img.text["rcdm:source"] == ""


def test_stage_mode_errors(gen_project):
    from engine.project import Dataset, Project
    from engine.stages import generate_stage

    path, _ = gen_project
    with Project(path) as project:
        with pytest.raises(InvalidConfigError, match="two source images"):
            generate_stage.prepare(project, GenerateConfig(mode="interpolate"), "tiny-rcdm")
        ids = project.images(project.list(Dataset)[0].id)["id"].tolist()
        with pytest.raises(InvalidConfigError, match="exactly two"):
            generate_stage.prepare(project, GenerateConfig(mode="interpolate"), "tiny-rcdm",
                             ids[:3])
        with pytest.raises(InvalidConfigError, match="valid samplers"):
            generate_stage.prepare(project, GenerateConfig(sampler="FooScheduler"), "tiny-rcdm")
