"""Encode: a dataset's images (fit + encode) or a generation's samples (re-encode).

A dataset encoding fits the encoder on the training split when it needs fitting (PCA) and
encodes every image; a generation is re-encoded with the encoder fitted for its dataset, so
real and generated representations live in the same space.

Encoding is resumable: embeddings go, chunk by chunk (``config.chunk_size`` images), into a
memory-mapped ``embeddings.npy.partial`` beside a small marker ``embeddings.npy.progress.json``
(images done, shape, encoder); the fitted (or loaded) encoder is saved first. A retried job
(same folder, same params) loads that encoder and continues after the last finished chunk;
the finished array is renamed to ``embeddings.npy``. Offline encoders read the dataset's
(or the generation's: ``common.generation_pixels_params``, shared with the evaluations at
the same size) cached pixel array, chunk by chunk (``engine.streams.CacheRows``: read, not memory-mapped,
so memory does not grow with the dataset); pretrained ones (``reads_files``) decode the
image files chunk by chunk at their own resolution, so a large dataset is never held in
memory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import EncodeConfig
from engine.errors import InvalidConfigError
from engine.paths import new_memmap
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.project import Encoding, Generation, Project, dumps, new_id, write_json_atomic
from engine.stages import JobSpec, common

log = logging.getLogger(__name__)


def prepare(project: Project, config: EncodeConfig, dataset_ref: str | None = None,
            generation_ref: str | None = None, encoding_ref: str | None = None) -> JobSpec:
    """Encode a dataset with ``config.encoder``, or re-encode a generation.

    For a generation the encoder is the one fitted on its dataset (``encoding_ref``, or the
    dataset's latest encoding with ``config.encoder``).
    """
    from engine import encoders

    encoding_id = new_id("enc")
    out = project.assets / "encodings" / encoding_id  # made by the worker
    params: dict[str, Any] = {
        "encoding_id": encoding_id,
        "config": config.to_dict(),
        "array_path": str(out / "embeddings.npy"),
        "state_dir": str(out / "encoder"),
    }
    if generation_ref is None:
        ds = common.dataset(project, dataset_ref)
        # unknown names fail here; missing pretrained weights too when the hub is offline
        encoder = encoders.create_encoder(config, num_classes=ds.num_classes)
        if isinstance(encoder, encoders.PretrainedEncoder):
            encoder.check_available()
        splits = common.split_indices(project, ds)  # fits see the train split only
        train_idx, labels = splits.train, splits.labels
        if encoder.reads_files:
            params["paths"] = [str(project.abs(p)) for p in project.images(ds.id)["path"]]
        else:
            # decoded once, cached, by the worker
            params.update(common.pixels_params(project, ds, config.image_size))
        params.update(target="dataset", dataset_id=ds.id, target_id=ds.id,
                      num_classes=ds.num_classes,
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
        config = EncodeConfig.from_dict(source.config)
        params.update(target="generation", dataset_id=ds.id, target_id=gen.id,
                      num_classes=ds.num_classes, config=config.to_dict(),
                      source_encoding_id=source.id,
                      source_state_dir=str(project.abs(source.state_path)),
                      paths=[str(project.abs(p)) for p in samples["path"]],
                      labels=samples["label"].astype(int).tolist())
        if not encoder.reads_files:  # the generation's pixel cache at the encoder's size,
            # built by the worker, shared with the evaluations at that size
            params.update(common.generation_pixels_params(project, gen, encoder.load_size),
                          pixels_size=int(encoder.load_size))
        title = f"Re-encode {gen.name} with {source.encoder}"
    return JobSpec(kind="encode", title=title, params=params)


def identical(project: Project, config: EncodeConfig, dataset_ref: str | None) -> str | None:
    """What already encodes the dataset ``dataset_ref`` exactly like ``config`` (the same
    encoder and options; the device aside): the id of such an encoding, or of a queued or
    running encode job that will make one; None when there is none.

    The studio asks before it queues, so a second click of Encode does not make a twin.
    """
    from engine.project import Job

    ds = common.dataset(project, dataset_ref)
    wanted = {k: v for k, v in config.to_dict().items() if k != "device"}

    def same(values: dict[str, Any]) -> bool:
        return {k: v for k, v in values.items()
                if k != "device" and k != "source_encoding_id"} == wanted

    for enc in project.list(Encoding, dataset_id=ds.id, target="dataset"):
        if same(enc.config):
            return enc.id
    for job in project.list(Job, kind="encode"):
        if job.status not in ("queued", "running", "ingesting"):  # engine.jobs.ACTIVE
            continue
        try:
            params = json.loads((project.abs(job.folder) / "spec.json").read_text())["params"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if params.get("target") == "dataset" and params.get("dataset_id") == ds.id and \
                same(params.get("config") or {}):
            return job.id
    return None


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    out = Path(params["array_path"]).parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _encode(params, progress, cancel)
    except BaseException:
        common.remove_if_empty(out)  # an attempt that kept nothing a retry could reuse
        raise


def _encode(params: dict[str, Any], progress: ProgressFn, cancel: CancelToken
            ) -> dict[str, Any]:
    from engine import encoders, streams

    config = EncodeConfig.from_dict(params["config"])
    labels = np.asarray(params["labels"], dtype=np.int64)
    state_dir = Path(params["state_dir"])
    pixels = None
    if params.get("pixels_path"):
        # the dataset's (or the generation's) pixels, decoded once (memory-mapped): the
        # first worker builds them
        size = int(params.get("pixels_size", config.image_size))
        pixels = common.pixels(params, size, progress, cancel)
    # 1. the encoder: saved by an earlier attempt of this job, the dataset's fitted one
    #    (re-encoding), or a new one, fitted on the training split (the test split stays unseen)
    if (state_dir / encoders.MANIFEST).exists():
        encoder = encoders.load_encoder(state_dir)
    elif params["target"] == "generation":
        encoder = encoders.load_encoder(Path(params["source_state_dir"]))
    else:
        encoder = encoders.create_encoder(config, num_classes=params["num_classes"])
        if encoder.needs_fit:
            fit_idx = np.asarray(params["fit_idx"], dtype=np.int64)
            fit_px = (np.asarray(pixels[fit_idx]) if pixels is not None else
                      encoder.read_images([params["paths"][i] for i in fit_idx]))
            encoder.fit(fit_px, labels[fit_idx], progress=progress, cancel=cancel)
    cancel.raise_if_cancelled()
    encoder.save(state_dir)  # before encoding: a retry reuses it instead of refitting

    # 2. where each chunk's pixels come from
    paths = params.get("paths")
    if pixels is not None:
        rows = streams.CacheRows(params["pixels_path"])  # each chunk read, never mapped

        def chunk_pixels(start: int, stop: int) -> np.ndarray | None:
            return rows[start:stop]
    elif paths is not None:
        def chunk_pixels(start: int, stop: int) -> np.ndarray | None:
            return encoder.read_images([Path(p) for p in paths[start:stop]])
    else:
        raise InvalidConfigError("the encode job names neither pixels nor image paths")

    # 3. encode chunk by chunk into a memory-mapped partial array (resumable)
    emb = encode_chunks(encoder, chunk_pixels, labels, Path(params["array_path"]),
                        config.chunk_size, progress=progress, cancel=cancel)
    return {"dim": int(emb.shape[1]), "count": int(emb.shape[0]), "encoder": encoder.name,
            "offline": bool(encoder.offline)}


def encode_chunks(encoder: Any, chunk_pixels: Any, labels: np.ndarray, array_path: Path,
                  chunk_size: int, progress: ProgressFn = no_progress,
                  cancel: CancelToken | None = None) -> np.ndarray:
    """Encode N images chunk by chunk into ``array_path`` (float32 (N, dim)), resumably.

    Args:
        encoder: a fitted Encoder.
        chunk_pixels: ``(start, stop) -> uint8 (stop - start, H, W, 3)`` (or None for the
            class encoder, which reads only labels).
        labels: int (N,); N is the number of images.
        array_path: the final ``.npy``; ``<name>.partial`` and ``<name>.progress.json`` sit
            beside it while encoding.
        chunk_size: images per chunk; the marker is updated after each chunk.

    Returns:
        the finished array, memory-mapped read-only.
    """
    n, dim = int(len(labels)), int(encoder.dim)
    partial = array_path.with_name(array_path.name + ".partial")
    marker = array_path.with_name(array_path.name + ".progress.json")
    if array_path.exists() and not marker.exists():
        done_arr = np.load(array_path, mmap_mode="r", allow_pickle=False)
        if done_arr.shape == (n, dim):
            return done_arr  # an earlier attempt finished the array
    key = {"n": n, "dim": dim, "encoder": encoder.name, "chunk_size": int(chunk_size)}
    done = 0
    if partial.exists() and marker.exists():
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in key} == key:
            done = int(saved.get("done", 0))
            log.info("resuming encoding at image %d of %d", done, n)
    if done == 0:
        out = new_memmap(partial, np.float32, (n, dim))
    else:
        out = np.load(partial, mmap_mode="r+", allow_pickle=False)
    try:
        for start in range(done, n, chunk_size):
            if cancel is not None:
                cancel.raise_if_cancelled()
            stop = min(start + chunk_size, n)

            def shifted(event: ProgressEvent, start: int = start) -> None:
                progress(ProgressEvent(stage="encode", step=start + event.step, total=n,
                                       metrics=event.metrics))

            out[start:stop] = encoder.encode(chunk_pixels(start, stop), labels[start:stop],
                                             progress=shifted, cancel=cancel)  # (chunk, dim)
            out.flush()
            write_json_atomic(marker, {**key, "done": stop})
        if n == 0:
            progress(ProgressEvent(stage="encode", step=0, total=0))
    finally:
        del out
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, array_path)
    marker.unlink(missing_ok=True)
    return np.load(array_path, mmap_mode="r", allow_pickle=False)


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    config = dict(params["config"])
    if params.get("source_encoding_id"):
        config["source_encoding_id"] = params["source_encoding_id"]
    enc = Encoding(
        id=params["encoding_id"], dataset_id=params["dataset_id"], target=params["target"],
        target_id=params["target_id"], encoder=result["encoder"], offline=result["offline"],
        dim=result["dim"], count=result["count"],
        array_path=project.rel(params["array_path"]),
        state_path=project.rel(params["state_dir"]), config_json=dumps(config),
        job_id=params.get("job_id", ""))
    project.add(enc)
    return enc.id


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    pass


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass
