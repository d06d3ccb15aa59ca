"""Generate: seeded variations of chosen real images with a trained RCDM.

The condition of each variation is the source image's representation (from the encoding the
model was trained on); variation ``v`` of source ``j`` uses seed ``seed + j * k + v``, so
(model, representation, seed, sampler, steps, guidance) reproduces every image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import GenerateConfig
from engine.errors import InvalidConfigError
from engine.jobs import JobSpec
from engine.progress import CancelToken, ProgressFn
from engine.project import Encoding, Generation, Project, new_id
from engine.stages import common


def prepare(project: Project, config: GenerateConfig, model_ref: str | None = None,
            image_ids: list[str] | None = None, name: str | None = None) -> JobSpec:
    """Generate ``config.variations`` images per source image.

    Args:
        image_ids: ids of real images to vary; None = every image of the training split.
    """
    model = common.trained_model(project, model_ref)
    ds = common.dataset(project, model.dataset_id)
    enc = project.get(Encoding, model.encoding_id)
    images = project.images(ds.id)
    if image_ids is None:
        chosen = images[images["split"] == "train"]
    else:
        if len(image_ids) == 0:
            raise InvalidConfigError("no source image chosen; select at least one real image")
        chosen = images[images["id"].isin(list(image_ids))]
        missing = sorted(set(image_ids) - set(chosen["id"]))
        if missing:
            raise InvalidConfigError(f"unknown image id(s) for dataset {ds.name}: {missing[:5]}")
    idx = chosen["idx"].to_numpy(np.int64)
    cond = np.asarray(project.embeddings(enc)[idx], dtype=np.float32)
    gen_id = new_id("gen")
    out = project.new_folder("generations", gen_id)
    cond_path = out / "source_cond.npy"
    np.save(cond_path, cond, allow_pickle=False)
    name = project.unique_name(Generation, name or f"{model.name}-x{config.variations}")
    params = {
        "generation_id": gen_id, "name": name, "model_id": model.id, "dataset_id": ds.id,
        "encoder": model.encoder, "config": config.to_dict(),
        "model_dir": str(project.abs(model.checkpoint)), "cond_path": str(cond_path),
        "source_ids": chosen["id"].tolist(), "labels": chosen["label"].astype(int).tolist(),
        "class_names": common.class_names(ds), "out_dir": str(out),
    }
    title = f"Generate {len(idx) * config.variations} images with {model.name}"
    return JobSpec(kind="generate", title=title, params=params)


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine.rcdm.generate import generate_variations

    config = GenerateConfig.from_dict(params["config"])
    cond = np.load(params["cond_path"], allow_pickle=False)
    out_dir = Path(params["out_dir"])
    rows = generate_variations(
        Path(params["model_dir"]), cond, params["source_ids"],
        np.asarray(params["labels"], dtype=np.int64), params["class_names"], config, out_dir,
        model_id=params["model_id"], progress=progress, cancel=cancel)
    table = out_dir / "samples.parquet"
    tmp = table.with_name(table.name + ".tmp")
    rows.to_parquet(tmp, index=False)
    tmp.replace(table)
    return {"count": int(len(rows)), "samples": str(table)}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    rows = pd.read_parquet(result["samples"])
    gen_id = params["generation_id"]
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
    gen = Generation(id=gen_id, name=params["name"], model_id=params["model_id"],
                     dataset_id=params["dataset_id"], encoder=params["encoder"],
                     folder=project.rel(params["out_dir"]), count=len(samples),
                     config_json=json.dumps(params["config"]))
    project.add_generation(gen, samples)
    return gen_id


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    pass


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass
