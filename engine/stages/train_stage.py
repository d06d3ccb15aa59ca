"""Train: an RCDM on a dataset's training split, conditioned on one of its encodings.

Conditioning on the ``class`` encoding gives the paper's class-conditioned LDM baseline with
the very same denoiser and recipe.

Channels follow the data: a config with ``channels`` None is given the training split's
channels here (``data_channels``: 1 when the import recorded every training image greyscale,
else 3) before the job is queued, so the model row, the job and the saved model all name the
channels the model was trained with; an explicit 1 or 3 wins. Fine-tuning (``init``) needs the
initial model's channels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import TrainConfig
from engine.errors import InvalidConfigError
from engine.image_formats import COLOUR, GREY
from engine.paths import given_name
from engine.progress import CancelToken, ProgressFn
from engine.project import Model, Project, dumps, new_id
from engine.stages import JobSpec, common

log = logging.getLogger(__name__)


def prepare(project: Project, config: TrainConfig, dataset_ref: str | None = None,
            encoder: str | None = None, encoding_ref: str | None = None,
            name: str | None = None, init: str | None = None) -> JobSpec:
    """Queue the training of a new model; its row exists from now on (status ``queued``).

    ``init``: a trained model of the project (name or id) or, from the command line, a model
    folder (``save_rcdm``) to fine-tune: the run takes its architecture
    (``training.init_config``) and starts from its weights.
    """
    name = given_name(name, "model name")
    ds = common.dataset(project, dataset_ref)
    enc = common.dataset_encoding(project, ds, encoder, encoding_ref)
    train_idx = common.split_indices(project, ds).train  # never val / test / unused
    given = config.channels
    config = config.replace(channels=given or data_channels(project, ds, train_idx))
    init_dir, init_info = None, None
    if init:
        from engine.rcdm.model import read_rcdm_meta
        from engine.rcdm.training import init_config

        init_dir, init_info = _init_folder(project, init)
        if int(read_rcdm_meta(init_dir)["cond_dim"]) != int(enc.dim):
            raise InvalidConfigError(
                f"the initial model takes {read_rcdm_meta(init_dir)['cond_dim']}-d "
                f"representations, the {enc.encoder} encoding is {enc.dim}-d; fine-tune it on "
                f"an encoding of the same size")
        wanted = config.channels
        config = init_config(config, init_dir)
        theirs = int(config.channels or COLOUR)
        if theirs != wanted:
            from engine.rcdm.training import channel_words

            why = "--channels asks for" if given else f"the training images of {ds.name} are"
            raise InvalidConfigError(
                f"the initial model makes {channel_words(theirs)} images, {why} "
                f"{channel_words(wanted)}: fine-tune a model of the same channels, or pass "
                f"--channels {theirs} to train on the images converted to "
                f"{'greyscale' if theirs == GREY else 'RGB'}")
        config = config.replace(channels=theirs)
    model_id = new_id("mdl")
    out = project.assets / "models" / model_id  # made by the worker
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
    if init_dir is not None:
        params["init_dir"] = str(init_dir)
        params["extra"]["init"] = init_info
    return JobSpec(kind="train", title=f"Train {name} on {ds.name}", params=params)


def data_channels(project: Project, ds: Any, idx: np.ndarray) -> int:
    """1 when every image ``idx`` of ``ds`` was recorded greyscale at import (the Image rows'
    ``channels``, ``engine.image_store.content_channels``), else 3. Images imported before
    schema 6 have none recorded and count as colour (pass ``channels=1`` to train greyscale).
    """
    images = project.images(ds.id).set_index("idx")
    recorded = images.loc[np.asarray(idx, dtype=np.int64), "channels"].fillna(0).astype(int)
    if len(recorded) and (recorded == 0).any():
        log.info("dataset %s: %d training image(s) imported without a channels record: "
                 "training in RGB", ds.name, int((recorded == 0).sum()))
    return GREY if len(recorded) and (recorded == GREY).all() else COLOUR


def _init_folder(project: Project, ref: str) -> tuple[Path, dict[str, Any]]:
    """(model folder, provenance) of ``ref``: a trained model of the project, or a folder."""
    from engine.errors import NotFoundError

    try:
        m = project.get(Model, ref)
    except NotFoundError:
        from engine.rcdm.model import diffusers_unet_dir

        folder = Path(ref).expanduser()
        if not (folder / "rcdm.json").is_file() and folder.is_dir() and \
                diffusers_unet_dir(folder) is not None:
            raise InvalidConfigError(
                f"--init {ref!r} is a diffusers U-Net folder: add it to the project first "
                f"(rcdm-studio import-model --folder {ref} ...), then --init its name") from None
        if not (folder / "rcdm.json").is_file():
            raise InvalidConfigError(f"--init {ref!r} is neither a model of this project nor a "
                                     f"model folder (no rcdm.json in it)") from None
        return folder.resolve(), {"folder": str(folder.resolve())}
    if m.status != "trained" or not m.checkpoint:
        raise InvalidConfigError(f"model {m.name} is {m.status}; fine-tune a trained model")
    return project.abs(m.checkpoint), {"model_id": m.id, "name": m.name,
                                       "steps": m.steps_done, "dataset_id": m.dataset_id}


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    config = TrainConfig.from_dict(params["config"])
    idx = np.asarray(params["train_idx"], dtype=np.int64)
    Path(params["out_dir"]).mkdir(parents=True, exist_ok=True)
    # 1. the pixel cache of the dataset, built here (in the worker) when it is missing
    common.pixels(params, config.image_size, progress, cancel)
    # 2. train on the rows idx of the pixel cache and of the encoding; a latent run's latents
    #    are cached beside the pixel cache, computed once and shared by every latent run
    args = (params["pixels_path"], params["cond_path"], config, Path(params["out_dir"]))
    if config.processes > 1:  # torchrun: the processes read the files themselves
        from engine.rcdm.training_ranks import launch_train_rcdm

        out = launch_train_rcdm(*args, index=idx, extra=params.get("extra"),
                                progress=progress, cancel=cancel, init=params.get("init_dir"))
    else:
        from engine.rcdm.training import train_rcdm_files

        out = train_rcdm_files(*args, index=idx, extra=params.get("extra"), progress=progress,
                               cancel=cancel, init=params.get("init_dir"))
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

