"""Generate: images from a trained RCDM on representations of the conditioning space.

``GenerateConfig.mode`` picks the representations (engine.rcdm.conditions): variations of
real images (the paper's), interpolation between two images, mix-up within a class, or new
draws from each class's distribution. Representation ``j`` of the plan gets seeds
``seed + j * variations + v``, so (model, representation, seed, sampler, steps, guidance)
reproduces every image; the plan's representations are kept in the generation folder
(``source_cond.npy``) and each sample's provenance in ``samples.parquet``.

With ``GenerateConfig.perturb`` = λ > 0 every sample's representation gets Gaussian noise
relative to σ, the per-dimension standard deviation of the dataset's training encodings
(engine.rcdm.conditions); σ travels in the job's params, is saved as ``perturb_scale.npy``
in the generation folder, and the generation's config_json names it under
``conditions.perturb``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import GenerateConfig
from engine.errors import InvalidConfigError
from engine.paths import given_name
from engine.progress import CancelToken, ProgressFn
from engine.project import Encoding, Generation, Project, dumps, new_id
from engine.project.store import save_array_atomic
from engine.stages import JobSpec, common

# per-sample weights go into the generation's config_json up to this many representations
# (beyond, they are in samples.parquet only)
MAX_INLINE_WEIGHTS = 1000
# σ of a perturbed generation, (D,) float64, in its folder
PERTURB_SCALE_FILE = "perturb_scale.npy"


def _pool(images: pd.DataFrame, image_ids: list[str] | None, config: GenerateConfig,
          ds_name: str) -> pd.DataFrame:
    """The real images the plan is built from, in the order the user gave them."""
    if image_ids is None:
        if config.mode == "interpolate":
            raise InvalidConfigError("interpolation needs two source images (their ids)")
        return images[images["split"] == "train"]
    if len(image_ids) == 0:
        raise InvalidConfigError("no source image chosen; select at least one real image")
    by_id = images.set_index("id", drop=False)
    missing = sorted(set(image_ids) - set(by_id.index))
    if missing:
        raise InvalidConfigError(f"unknown image id(s) for dataset {ds_name}: {missing[:5]}")
    if config.mode == "interpolate":
        if len(image_ids) != 2:
            raise InvalidConfigError(f"interpolation needs exactly two source images, got "
                                     f"{len(image_ids)}")
        return by_id.loc[list(image_ids)].reset_index(drop=True)
    return images[images["id"].isin(list(image_ids))]


def plan_params(project: Project, config: GenerateConfig, model_ref: str | None = None,
                image_ids: list[str] | None = None) -> tuple[dict[str, Any], Any]:
    """Everything a generation needs, read from the project, and its ConditionPlan.

    Args:
        image_ids: the pool of real images: the images to vary (variations), the two ends
            in order (interpolate), the images to mix or fit per class (mixup,
            class_sample); None = the training split.

    Returns:
        (params, plan): params holds the model, dataset, config and the plan's labels and
        provenance (JSON); plan holds the (K, D) representations too.
    """
    from engine.rcdm.conditions import build_plan, representation_scale
    from engine.rcdm.sample import check_sampler

    check_sampler(config.sampler)
    model = common.trained_model(project, model_ref)
    ds = common.dataset(project, model.dataset_id)
    enc = project.get(Encoding, model.encoding_id)
    images = project.images(ds.id)
    chosen = _pool(images, image_ids, config, ds.name)
    embeddings = project.embeddings(enc)
    cond = np.asarray(embeddings[chosen["idx"].to_numpy(np.int64)], dtype=np.float32)
    scale = None
    if config.perturb > 0:  # σ: the spread of the training encodings, whatever the pool
        train = images.loc[images["split"] == "train", "idx"].to_numpy(np.int64)
        scale = representation_scale(np.asarray(embeddings[np.sort(train)]))
    plan = build_plan(config, cond, chosen["id"].tolist(), chosen["label"].to_numpy(np.int64),
                      scale)
    params = {
        "model_id": model.id, "model_name": model.name, "dataset_id": ds.id,
        "encoder": model.encoder, "config": config.to_dict(),
        "model_dir": str(project.abs(model.checkpoint)), "mode": plan.mode,
        "source_ids": list(plan.source_ids), "partner_ids": list(plan.partner_ids),
        "weights": plan.weights.tolist(), "labels": plan.labels.astype(int).tolist(),
        "class_names": ds.classes, "pool_size": int(len(chosen)),
    }
    if plan.perturb > 0:  # absent at λ = 0: the params (and a shard plan's fingerprint) of
        # an unperturbed generation stay what they were
        params.update(perturb_scale=plan.scale.tolist(), perturb_unit=bool(plan.unit))
    return params, plan


def plan_from_params(params: dict[str, Any], cond: np.ndarray):
    """The ConditionPlan of ``params`` (from ``plan_params``) and its (K, D) ``cond``."""
    from engine.rcdm.conditions import ConditionPlan

    k = len(params["labels"])
    return ConditionPlan(
        mode=params.get("mode", "variations"), cond=np.asarray(cond, dtype=np.float32),
        labels=np.asarray(params["labels"], dtype=np.int64),
        source_ids=list(params["source_ids"]),
        partner_ids=list(params.get("partner_ids") or [""] * k),
        weights=np.asarray(params.get("weights") or [0.0] * k, dtype=np.float64),
        perturb=float(params["config"].get("perturb", 0.0)),
        scale=(None if params.get("perturb_scale") is None
               else np.asarray(params["perturb_scale"], dtype=np.float64)),
        unit=bool(params.get("perturb_unit", False)))


def default_suffix(config: GenerateConfig) -> str:
    """The default generation name's suffix: "x4", "mixup", "x4-perturb0.5"..."""
    suffix = f"x{config.variations}" if config.mode == "variations" else config.mode
    return suffix + (f"-perturb{config.perturb:g}" if config.perturb > 0 else "")


def prepare(project: Project, config: GenerateConfig, model_ref: str | None = None,
            image_ids: list[str] | None = None, name: str | None = None) -> JobSpec:
    """Generate ``config.variations`` images per representation of ``config.mode``'s plan.

    Args:
        image_ids: see ``plan_params``; None = every image of the training split.
    """
    name = given_name(name, "generation name")
    params, plan = plan_params(project, config, model_ref, image_ids)
    gen_id = new_id("gen")
    out = project.new_folder("generations", gen_id)  # the plan's representations go there
    cond_path = out / "source_cond.npy"
    try:
        np.save(cond_path, plan.cond, allow_pickle=False)
        name = project.unique_name(Generation,
                                   name or f"{params['model_name']}-{default_suffix(config)}")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    params.update(generation_id=gen_id, name=name, cond_path=str(cond_path),
                  out_dir=str(out))
    what = "" if plan.mode == "variations" else f" ({plan.mode})"
    if plan.perturb > 0:
        what += f" perturbed by λ = {plan.perturb:g}"
    title = (f"Generate {len(plan) * config.variations} images{what} with "
             f"{params['model_name']}")
    return JobSpec(kind="generate", title=title, params=params, made=(str(out),))


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine.rcdm.generation import generate_plan

    config = GenerateConfig.from_dict(params["config"])
    plan = plan_from_params(params, np.load(params["cond_path"], allow_pickle=False))
    out_dir = Path(params["out_dir"])
    rows = generate_plan(Path(params["model_dir"]), plan, params["class_names"], config,
                         out_dir, model_id=params["model_id"], progress=progress,
                         cancel=cancel)
    table = out_dir / "samples.parquet"
    tmp = table.with_name(table.name + ".tmp")
    rows.to_parquet(tmp, index=False)
    tmp.replace(table)
    return {"count": int(len(rows)), "samples": str(table)}


def generation_config(params: dict[str, Any], project: Project,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The generation row's config_json: the GenerateConfig plus where the plan came from."""
    k = len(params["labels"])
    conditions: dict[str, Any] = {
        "mode": params.get("mode", "variations"), "representations": k,
        "pool_size": params.get("pool_size"),
        "cond_file": project.rel(params["cond_path"]),
        "samples_file": project.rel(Path(params["out_dir"]) / "samples.parquet"),
    }
    if conditions["mode"] == "interpolate" and k:
        conditions["pair"] = [params["source_ids"][0], params["partner_ids"][0]]
    if conditions["mode"] in ("interpolate", "mixup") and k <= MAX_INLINE_WEIGHTS:
        conditions["weights"] = params["weights"]
    if params.get("perturb_scale") is not None:
        from engine.rcdm.conditions import PERTURB_STREAM

        scale = np.asarray(params["perturb_scale"], dtype=np.float64)
        conditions["perturb"] = {
            "strength": float(params["config"].get("perturb", 0.0)),
            "scale": "per-dimension std of the training encodings",
            "scale_rms": float(np.sqrt(np.mean(scale ** 2))),
            "scale_file": project.rel(Path(params["out_dir"]) / PERTURB_SCALE_FILE),
            "unit": bool(params.get("perturb_unit", False)),
            "noise": f"cond + strength * scale * eps, eps ~ N(0, I) from numpy's "
                     f"default_rng([{PERTURB_STREAM}, sample seed])"
                     + (", then L2-normalised" if params.get("perturb_unit") else ""),
        }
    return {**params["config"], "conditions": conditions, **(extra or {})}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    rows = pd.read_parquet(result["samples"])
    gen_id = params["generation_id"]
    if params.get("perturb_scale") is not None:  # σ beside the plan's representations
        save_array_atomic(Path(params["out_dir"]) / PERTURB_SCALE_FILE,
                          np.asarray(params["perturb_scale"], dtype=np.float64))
    samples = pd.DataFrame({
        "id": [f"{gen_id}_{i:07d}" for i in rows["idx"]],
        "generation_id": gen_id,
        "idx": rows["idx"].astype("int64"),
        "path": [project.rel(p) for p in rows["path"]],
        "source_image_id": rows["source_image_id"],
        "label": rows["label"].astype("int64"),
        "class_name": rows["class_name"],
        "seed": rows["seed"].astype("int64"),
        "sampler": rows["sampler"],
        "steps": rows["steps"].astype("int64"),
        "guidance": rows["guidance"].astype("float64"),
    })
    if "cond_path" in params and "labels" in params:
        config_json = generation_config(params, project, result.get("provenance"))
    else:  # a job spec written before plans existed
        config_json = params["config"]
    gen = Generation(id=gen_id, name=params["name"], model_id=params["model_id"],
                     dataset_id=params["dataset_id"], encoder=params["encoder"],
                     folder=project.rel(params["out_dir"]), count=len(samples),
                     config_json=dumps(config_json), job_id=params.get("job_id", ""))
    project.add_generation(gen, samples)
    return gen_id


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    pass


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass
