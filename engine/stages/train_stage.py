"""Train: an RCDM on a dataset's training split, conditioned on one of its encodings.

Conditioning on the ``class`` encoding gives the paper's class-conditioned LDM baseline with
the very same denoiser and recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.config import TrainConfig
from engine.progress import CancelToken, ProgressFn
from engine.project import Model, Project, dumps, new_id
from engine.stages import JobSpec, common


def prepare(project: Project, config: TrainConfig, dataset_ref: str | None = None,
            encoder: str | None = None, encoding_ref: str | None = None,
            name: str | None = None) -> JobSpec:
    """Queue the training of a new model; its row exists from now on (status ``queued``)."""
    ds = common.dataset(project, dataset_ref)
    enc = common.dataset_encoding(project, ds, encoder, encoding_ref)
    train_idx, _, _ = common.split_indices(project, ds)
    model_id = new_id("mdl")
    out = project.new_folder("models", model_id)
    name = project.unique_name(Model, name or f"rcdm-{enc.encoder}")
    project.add(Model(id=model_id, name=name, dataset_id=ds.id, encoding_id=enc.id,
                      encoder=enc.encoder, status="queued", config_json=config.to_json()))
    params = {
        "model_id": model_id,
        "config": config.to_dict(),
        "processes": config.processes,  # worker processes (GPUs) this job uses at once
        **common.pixels_params(project, ds, config.image_size),  # the worker builds it
        "cond_path": str(project.abs(enc.array_path)),
        "train_idx": train_idx.tolist(),
        "out_dir": str(out),
        "extra": {"encoder": enc.encoder, "encoding_id": enc.id, "dataset_id": ds.id,
                  "model_id": model_id, "name": name},
    }
    return JobSpec(kind="train", title=f"Train {name} on {ds.name}", params=params)


class _Rows:
    """Rows ``idx`` of a (memory-mapped) array, read only when indexed: a latent run needs
    the pixels of a few preview images, not the whole split in memory."""

    def __init__(self, array: np.ndarray, idx: np.ndarray) -> None:
        self.array, self.idx = array, idx
        self.shape = (len(idx),) + tuple(array.shape[1:])
        self.dtype, self.ndim = array.dtype, array.ndim

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.array[self.idx[key]])


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine.rcdm.training import train_rcdm

    config = TrainConfig.from_dict(params["config"])
    idx = np.asarray(params["train_idx"], dtype=np.int64)
    all_pixels = common.pixels(params, config.image_size, progress, cancel)  # (N, S, S, 3)
    if config.processes > 1:
        # torchrun: the processes read the pixel cache and the encoding rows idx themselves
        # (latents cached beside the pixel cache, as below); rank 0's result
        from engine.rcdm.training_ranks import run_processes

        out = run_processes(params["pixels_path"], params["cond_path"], config,
                            Path(params["out_dir"]), index=idx, extra=params.get("extra"),
                            progress=progress, cancel=cancel)
        return {"final_loss": out["final_loss"], "losses": out["losses"],
                "steps_done": out["steps_done"], "model_dir": out["model_dir"]}
    cond = np.asarray(np.load(params["cond_path"], mmap_mode="r", allow_pickle=False)[idx],
                      dtype=np.float32)
    latents = None
    if config.space == "latent":
        from engine.rcdm.latent import cached_latents

        # latents of the whole dataset, cached beside its pixel cache and keyed by
        # (VAE, image size): computed once, shared by every latent run on this dataset
        latents = cached_latents(all_pixels, config.vae_id, Path(params["pixels_path"]).parent,
                                 flip=config.hflip, latent_scale=config.latent_scale,
                                 device=config.device, progress=progress,
                                 cancel=cancel).subset(idx)
        pixels = _Rows(all_pixels, idx)
    else:
        pixels = np.asarray(all_pixels[idx])
    out = train_rcdm(pixels, cond, config, Path(params["out_dir"]), progress=progress,
                     cancel=cancel, resume=True, extra=params.get("extra"), latents=latents)
    return {"final_loss": out["final_loss"], "losses": out["losses"],
            "steps_done": out["steps_done"], "model_dir": out["model_dir"]}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    project.update(Model, params["model_id"], status="trained",
                   steps_done=int(result["steps_done"]),
                   checkpoint=project.rel(result["model_dir"]),
                   final_loss=float(result["final_loss"]),
                   metrics_json=dumps({"losses": result["losses"]}))
    return params["model_id"]


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    project.update(Model, spec["params"]["model_id"], status=status)


def on_retry(project: Project, params: dict[str, Any]) -> None:
    project.update(Model, params["model_id"], status="queued")


def on_start(project: Project, params: dict[str, Any]) -> None:
    project.update(Model, params["model_id"], status="training",
                   job_id=params.get("job_id", ""))
