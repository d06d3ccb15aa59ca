"""Evaluate: train a classifier on a training mix, score it on a held-out real split.

Mixes: ``real`` (the dataset's training split), ``synthetic`` (a selection, or a whole
generation), ``real+synthetic``. The scored split is the dataset's real ``test`` images (the
final report) or its ``val`` images (every choice: bands, guidance, recipes); the Evaluation
row says which in ``eval_split``, and ``num_test`` counts that split's images. Validation
images are never in the training mix (the mix's real part is the train split only).

The worker picks how the images reach the classifier (``EvalConfig.data_path``, "auto" by
default; the result's ``data_path`` and ``data_bytes`` say which and why): in memory, one
uint8 array of the mix, while the mix and the scored split take at most
``memory_fraction`` of the available memory; beyond, streamed (``engine.streams``): the real
images read row by row from the dataset's pixel cache, the synthetic ones decoded from
their files, per batch, in DataLoader workers, so memory does not grow with the mix. The
generation's pixel cache (``common.generation_pixels_params``: every sample at
``image_size``, whatever the files' format) is built by the in-memory path and by a
re-encode with an offline encoder of that size, and read by every later job at that size
(the evaluations of any selection of the generation, streamed ones included), so a
generation is decoded once per size. A streamed evaluation does not build it (a mix too
large for memory may be too large a cache for the disk: 520,000 images at 224 px are 78
GB); it reads it when it is there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import MIXES, EvalConfig
from engine.errors import InvalidConfigError, NotReadyError
from engine.paths import given_name
from engine.progress import CancelToken, ProgressFn
from engine.project import Evaluation, Generation, Project, Selection, dumps, new_id
from engine.stages import JobSpec, common

log = logging.getLogger(__name__)


def prepare(project: Project, config: EvalConfig, mix: str = "real",
            dataset_ref: str | None = None, selection_ref: str | None = None,
            generation_ref: str | None = None, name: str | None = None,
            split: str = "test", score_generation: str | None = None) -> JobSpec:
    """Queue the evaluation of a training mix scored on ``split`` (``"test"`` or ``"val"``).

    ``score_generation`` (a generation of the dataset, mix "real" only): after training,
    the classifier, which never saw those samples, judges every one of them (one forward
    pass over the generation, see ``judge_params``); per-sample ``confidence`` and
    ``predicted`` become the Curate tab's and ``rcdm-studio scores``' confidence score.

    Raises:
        InvalidConfigError: an unknown mix or split, a mix without its synthetic part, a
            generation to score with another mix or from another dataset.
        NotReadyError: the dataset has no image in ``split`` (import it with a validation
            fraction to score on ``val``).
    """
    name = given_name(name, "evaluation name", nested=True)  # experiment/run/seed0
    if split not in common.EVAL_SPLITS:
        raise InvalidConfigError(f"split must be one of {common.EVAL_SPLITS}, got {split!r}")
    if mix not in MIXES:
        raise InvalidConfigError(f"mix must be one of {MIXES}, got {mix!r}")
    synthetic_paths: list[str] = []
    synthetic_labels: list[int] = []
    synthetic_cache: dict[str, Any] = {}  # the generation's pixel cache and the mix's rows
    sel_id = gen_id = ""
    if mix != "real":
        if selection_ref:
            sel = project.get(Selection, selection_ref)
            gen = project.get(Generation, sel.generation_id)
            members = project.selection_members(sel)
            sel_id = sel.id
        elif generation_ref:
            gen = project.get(Generation, generation_ref)
            members = None
        else:
            raise InvalidConfigError(f"the {mix} mix needs a selection or a generation")
        gen_id = gen.id
        samples = project.samples(gen.id)
        if members is not None:
            samples = samples.iloc[members]
        if len(samples) == 0:
            raise InvalidConfigError("the synthetic part of the mix is empty: the selection "
                                     "has no sample")
        synthetic_paths = [str(project.abs(p)) for p in samples["path"]]
        synthetic_labels = samples["label"].astype(int).tolist()
        synthetic_cache = {**common.generation_pixels_params(project, gen, config.image_size,
                                                             prefix="synthetic_"),
                           "synthetic_rows": (list(range(gen.count)) if members is None
                                              else [int(i) for i in members])}
        dataset_ref = dataset_ref or gen.dataset_id
    ds = common.dataset(project, dataset_ref)
    splits = common.split_indices(project, ds)
    train_idx, labels = splits.train, splits.labels
    test_idx = splits.scored(split)  # the split the classifier is scored on
    if len(test_idx) == 0:
        hint = (" (import it with a validation fraction, e.g. rcdm-studio import "
                "--val-fraction 0.1)" if split == "val" else "")
        raise NotReadyError(f"dataset {ds.name} has no {split} split to evaluate on{hint}")
    judge = judge_params(project, ds.id, mix, config, score_generation)  # before any row
    eval_id = new_id("eval")
    name = project.unique_name(Evaluation, name or f"{mix}")
    num_train = (len(train_idx) if mix != "synthetic" else 0) + len(synthetic_paths)
    project.add(Evaluation(id=eval_id, name=name, dataset_id=ds.id, mix=mix,
                           selection_id=sel_id, generation_id=gen_id, status="queued",
                           num_train=num_train, num_test=len(test_idx), eval_split=split,
                           config_json=config.to_json()))
    params = {
        "evaluation_id": eval_id, "mix": mix, "config": config.to_dict(), "eval_split": split,
        "processes": config.processes,  # worker processes (GPUs) this job uses at once
        "num_classes": ds.num_classes,
        **common.pixels_params(project, ds, config.image_size),  # the worker builds it
        "train_idx": train_idx.tolist() if mix != "synthetic" else [],
        "test_idx": test_idx.tolist(),  # the scored split (eval_split): test or val
        "labels": labels.tolist(),
        "synthetic_paths": synthetic_paths, "synthetic_labels": synthetic_labels,
        **synthetic_cache,
        "out_dir": str(project.assets / "evaluations" / eval_id),  # made by the worker
        **judge,
    }
    return JobSpec(kind="evaluate",
                   title=f"Evaluate {name} ({mix}, {num_train} images, on {split})",
                   params=params)


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine import data
    from engine.evaluate.classifier_training import mix_arrays, train_classifier

    config = EvalConfig.from_dict(params["config"])
    Path(params["out_dir"]).mkdir(parents=True, exist_ok=True)
    pixels = common.pixels(params, config.image_size, progress, cancel,
                           workers=config.loader_workers)  # (N, S, S, 3), memory-mapped
    labels = np.asarray(params["labels"], dtype=np.int64)
    train_idx = np.asarray(params["train_idx"], dtype=np.int64)
    test_idx = np.asarray(params["test_idx"], dtype=np.int64)
    # 0. in memory or streamed: the bytes the arrays would take
    n_syn = len(params["synthetic_paths"])
    nbytes = (len(train_idx) + n_syn + len(test_idx)) * config.image_size ** 2 * 3
    path = data_path(config, nbytes)
    log.info("evaluation data: %s (%d images, %.2f GB as uint8 arrays)", path,
             len(train_idx) + n_syn + len(test_idx), nbytes / 1e9)
    if path == "stream":
        result = _run_streamed(params, config, labels, train_idx, test_idx, progress, cancel,
                               common.pixel_cache_ready(params, config.image_size,
                                                        prefix="synthetic_"))
        return save_judgement(params, {**result, "data_bytes": int(nbytes)})
    # the synthetic part: rows of the generation's pixel cache at this size, decoded once
    # (by the first job of this size: a re-encode or an evaluation), built here when the
    # whole generation would fit in memory too; None (decode the files): a spec from before
    # the cache, or a small selection of a generation too large to cache here
    gen_bytes = int(params.get("synthetic_num_images", 0)) * config.image_size ** 2 * 3
    synthetic = (common.pixels(params, config.image_size, progress, cancel,
                               workers=config.loader_workers, prefix="synthetic_")
                 if params.get("synthetic_pixels_path") and (
                     common.pixel_cache_ready(params, config.image_size, prefix="synthetic_")
                     or data_path(config, gen_bytes) == "memory") else None)
    # 1. the training mix: real part, synthetic part, and which rows are synthetic
    parts = []
    if len(train_idx):
        parts.append((np.asarray(pixels[train_idx]), labels[train_idx]))
    if params["synthetic_paths"] and synthetic is not None:
        syn = np.asarray(synthetic[np.asarray(params["synthetic_rows"], dtype=np.int64)])
        parts.append((syn, np.asarray(params["synthetic_labels"], dtype=np.int64)))
    elif params["synthetic_paths"]:
        syn = data.load_pixels([Path(p) for p in params["synthetic_paths"]], config.image_size)
        parts.append((syn, np.asarray(params["synthetic_labels"], dtype=np.int64)))
    train_x, train_y = mix_arrays(parts)
    is_synthetic = np.arange(len(train_y)) >= len(train_idx)  # (N,) the real rows come first
    # 2. train, test on the real held-out split (several processes: torchrun, rank 0's result)
    if config.processes > 1:
        from engine.evaluate.classifier_ranks import launch_train_classifier

        return launch_train_classifier(train_x, train_y, np.asarray(pixels[test_idx]),
                                       labels[test_idx], params["num_classes"], config,
                                       Path(params["out_dir"]), progress=progress,
                                       cancel=cancel, is_synthetic=is_synthetic)
    result = train_classifier(train_x, train_y, np.asarray(pixels[test_idx]), labels[test_idx],
                              params["num_classes"], config, out_dir=Path(params["out_dir"]),
                              progress=progress, cancel=cancel, is_synthetic=is_synthetic,
                              judge=judge_source(params, config))
    return save_judgement(params, {**result, "data_bytes": int(nbytes)})


def data_path(config: EvalConfig, nbytes: int) -> str:
    """"memory" or "stream" for a mix and scored split of ``nbytes`` as uint8 arrays:
    ``config.data_path``, "auto" resolved on this machine's available memory. Several
    processes and meada run in memory (their data is not streamed)."""
    from engine import streams

    if config.processes > 1 or config.augment == "meada":
        return "memory"
    return streams.choose_path(config.data_path, nbytes, config.memory_fraction)


def _run_streamed(params: dict[str, Any], config: EvalConfig, labels: np.ndarray,
                  train_idx: np.ndarray, test_idx: np.ndarray, progress: ProgressFn,
                  cancel: CancelToken, synthetic_cached: bool = False) -> dict[str, Any]:
    """``run`` with the images streamed: the real rows read from the pixel cache, the
    synthetic ones from the generation's when an earlier job built it at this size
    (``synthetic_cached``), else decoded from their files, per batch, by the loader's
    workers (a streamed mix is one too large for memory: its cache is not built here)."""
    from torch.utils.data import ConcatDataset

    from engine import streams
    from engine.evaluate.classifier_training import train_classifier

    parts = []
    if len(train_idx):
        parts.append(streams.CacheRows(params["pixels_path"], train_idx))
    if params["synthetic_paths"] and synthetic_cached:
        parts.append(streams.CacheRows(params["synthetic_pixels_path"],
                                       params["synthetic_rows"]))
    elif params["synthetic_paths"]:
        parts.append(streams.ImageFiles(params["synthetic_paths"], config.image_size))
    if not parts:
        raise InvalidConfigError("the training mix is empty: it has no image to train on")
    train_y = np.concatenate([labels[train_idx],
                              np.asarray(params["synthetic_labels"], dtype=np.int64)])
    is_synthetic = np.arange(len(train_y)) >= len(train_idx)  # (N,) the real rows come first
    return train_classifier(ConcatDataset(parts), train_y,
                            streams.CacheRows(params["pixels_path"], test_idx),
                            labels[test_idx], params["num_classes"], config,
                            out_dir=Path(params["out_dir"]), progress=progress, cancel=cancel,
                            is_synthetic=is_synthetic, judge=judge_source(params, config))


# ------------------------------------------------------------------ judging a generation

JUDGED_FILES = ("confidence.npy", "predicted.npy")  # in the evaluation's folder


def judge_params(project: Project, dataset_id: str, mix: str, config: EvalConfig,
                 generation_ref: str | None) -> dict[str, Any]:
    """The job's ``judge`` parameters: every sample of the generation (paths, labels), to be
    judged by the trained classifier; {} when no generation is named.

    Only a classifier trained on real images only judges (mix "real"): one that trained on
    the samples would grade its own homework. The cost is bounded: one forward pass over
    the generation after training, read in chunks of 512 like the scored split.

    Raises:
        InvalidConfigError: another mix, several processes, a generation of another dataset,
            an empty generation.
    """
    if not generation_ref:
        return {}
    if mix != "real":
        raise InvalidConfigError(f"only a classifier trained on real images only (mix "
                                 f"'real') judges a generation's samples, got mix {mix!r}")
    if config.processes > 1:
        raise InvalidConfigError(f"judging a generation runs on one process, got "
                                 f"processes={config.processes}")
    gen = project.get(Generation, generation_ref)
    if gen.dataset_id != dataset_id:
        raise InvalidConfigError(f"generation {gen.name} comes from another dataset than the "
                                 f"evaluation's")
    samples = project.samples(gen.id)
    if len(samples) == 0:
        raise InvalidConfigError(f"generation {gen.name} has no sample to judge")
    return {"judge": {"generation_id": gen.id,
                      "paths": [str(project.abs(p)) for p in samples["path"]],
                      "labels": samples["label"].astype(int).tolist()}}


def judge_source(params: dict[str, Any], config: EvalConfig) -> Any:
    """(image source, labels) of the samples to judge, decoded per chunk from their files by
    loader workers; None when the job judges none."""
    from engine import streams

    judge = params.get("judge")
    if not judge:
        return None
    return (streams.ImageFiles(judge["paths"], config.image_size),
            np.asarray(judge["labels"], dtype=np.int64))


def save_judgement(params: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Write the judged arrays of ``result`` into the evaluation's folder (atomically:
    confidence.npy float32, predicted.npy int32) and put, instead of them, a "judged"
    record: {"generation_id", "count", "confidence", "predicted" (file names in the
    folder), "trained_on": "real"}."""
    from engine.project.store import save_array_atomic

    confidence = result.pop("judged_confidence", None)
    predicted = result.pop("judged_predicted", None)
    if confidence is None or not params.get("judge"):
        return result
    out = Path(params["out_dir"])
    save_array_atomic(out / JUDGED_FILES[0], np.asarray(confidence, dtype=np.float32))
    save_array_atomic(out / JUDGED_FILES[1], np.asarray(predicted, dtype=np.int32))
    result["judged"] = {"generation_id": params["judge"]["generation_id"],
                        "count": int(len(confidence)), "confidence": JUDGED_FILES[0],
                        "predicted": JUDGED_FILES[1], "trained_on": params["mix"]}
    return result


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    details = {k: v for k, v in result.items() if k not in ("top1", "top5")}
    project.update(Evaluation, params["evaluation_id"], status="done",
                   top1=float(result["top1"]), top5=float(result["top5"]),
                   num_train=int(result.get("num_train", 0)),
                   num_test=int(result.get("num_test", 0)),
                   results_json=dumps(details))
    return params["evaluation_id"]


def on_start(project: Project, params: dict[str, Any]) -> None:
    values = {"job_id": params["job_id"]} if params.get("job_id") else {}
    project.update(Evaluation, params["evaluation_id"], status="running", **values)


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    project.update(Evaluation, spec["params"]["evaluation_id"], status=status)


def on_retry(project: Project, params: dict[str, Any]) -> None:
    project.update(Evaluation, params["evaluation_id"], status="queued")
