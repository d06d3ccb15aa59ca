"""Encode: a dataset's images (fit + encode) or a generation's samples (re-encode).

A dataset encoding fits the encoder on the training split when it needs fitting (PCA) and
encodes every image; a generation is re-encoded with the encoder fitted for its dataset, so
real and generated representations live in the same space.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import EncodeConfig
from engine.errors import InvalidConfigError
from engine.jobs import JobSpec
from engine.progress import CancelToken, ProgressFn
from engine.project import Encoding, Generation, Project, new_id, save_array_atomic
from engine.stages import common


def prepare(project: Project, config: EncodeConfig, dataset_ref: str | None = None,
            generation_ref: str | None = None, encoding_ref: str | None = None) -> JobSpec:
    """Encode a dataset with ``config.encoder``, or re-encode a generation.

    For a generation the encoder is the one fitted on its dataset (``encoding_ref``, or the
    dataset's latest encoding with ``config.encoder``).
    """
    from engine import data, encoders

    encoding_id = new_id("enc")
    out = project.new_folder("encodings", encoding_id)
    params: dict[str, Any] = {
        "encoding_id": encoding_id,
        "config": config.to_dict(),
        "array_path": str(out / "embeddings.npy"),
        "state_dir": str(out / "encoder"),
    }
    if generation_ref is None:
        ds = common.dataset(project, dataset_ref)
        encoders.create_encoder(config, num_classes=ds.num_classes)  # unknown names fail here
        train_idx, _, labels = common.split_indices(project, ds)
        data.dataset_pixels(project, ds, config.image_size)  # decode once, cached
        params.update(target="dataset", dataset_id=ds.id, target_id=ds.id,
                      num_classes=ds.num_classes,
                      pixels_path=str(project.assets / ds.root / f"pixels_{config.image_size}.npy"),
                      labels=labels.tolist(), fit_idx=train_idx.tolist())
        title = f"Encode {ds.name} with {config.encoder}"
    else:
        gen = project.get(Generation, generation_ref)
        ds = common.dataset(project, gen.dataset_id)
        source = common.dataset_encoding(project, ds, config.encoder, encoding_ref)
        encoder = encoders.load_encoder(project.abs(source.state_path))
        if not encoder.can_encode_images:
            raise InvalidConfigError(
                f"the {source.encoder} encoder cannot re-encode generated images; "
                f"pick an image encoder (e.g. pca)")
        samples = project.samples(gen.id)
        config = EncodeConfig.from_dict({**json.loads(source.config_json)})
        params.update(target="generation", dataset_id=ds.id, target_id=gen.id,
                      num_classes=ds.num_classes, config=config.to_dict(),
                      source_encoding_id=source.id,
                      source_state_dir=str(project.abs(source.state_path)),
                      paths=[str(project.abs(p)) for p in samples["path"]],
                      labels=samples["label"].astype(int).tolist())
        title = f"Re-encode {gen.name} with {source.encoder}"
    return JobSpec(kind="encode", title=title, params=params)


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine import data, encoders

    config = EncodeConfig.from_dict(params["config"])
    labels = np.asarray(params["labels"], dtype=np.int64)
    if params["target"] == "dataset":
        # 1. pixels of every image, decoded once by the owner (memory-mapped)
        pixels = np.load(params["pixels_path"], mmap_mode="r", allow_pickle=False)
        encoder = encoders.create_encoder(config, num_classes=params["num_classes"])
        # 2. fit on the training split only (the test split stays unseen)
        if encoder.needs_fit:
            fit_idx = np.asarray(params["fit_idx"], dtype=np.int64)
            encoder.fit(np.asarray(pixels[fit_idx]), labels[fit_idx])
    else:
        encoder = encoders.load_encoder(Path(params["source_state_dir"]))
        pixels = data.load_pixels([Path(p) for p in params["paths"]], config.image_size)
    cancel.raise_if_cancelled()
    # 3. encode everything, batched
    emb = encoder.encode(np.asarray(pixels), labels, progress=progress, cancel=cancel)
    save_array_atomic(Path(params["array_path"]), emb.astype(np.float32))
    encoder.save(Path(params["state_dir"]))
    return {"dim": int(emb.shape[1]), "count": int(emb.shape[0]), "encoder": encoder.name,
            "offline": bool(encoder.offline)}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    config = dict(params["config"])
    if params.get("source_encoding_id"):
        config["source_encoding_id"] = params["source_encoding_id"]
    enc = Encoding(
        id=params["encoding_id"], dataset_id=params["dataset_id"], target=params["target"],
        target_id=params["target_id"], encoder=result["encoder"], offline=result["offline"],
        dim=result["dim"], count=result["count"],
        array_path=project.rel(params["array_path"]),
        state_path=project.rel(params["state_dir"]), config_json=json.dumps(config))
    project.add(enc)
    return enc.id


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    pass


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass
