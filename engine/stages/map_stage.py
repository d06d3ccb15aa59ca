"""Map: a seeded 2-D layout (PCA, t-SNE, UMAP) of a generation's real and generated
representations, computed once per (encoding, method, seed, max_points) in a job and reused.

The owner resolves the rows and writes the labels the worker needs (``maps/_specs/<id>.npz``);
the worker reads the two embedding arrays (memory-mapped: only the picked rows), lays the
points out and writes ``maps/<id>/`` atomically (a temporary folder renamed into place):
``layout.npz`` for Python and ``points.bin`` for the browser (``MapLayout`` says the format).
``ingest`` records a ``MapLayout`` row; ``find`` returns it the next time.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import MapConfig
from engine.progress import CancelToken, ProgressEvent, ProgressFn
from engine.project import Encoding, Generation, MapLayout, Project, dumps, new_id
from engine.stages import JobSpec, common

log = logging.getLogger(__name__)

LAYOUT = "layout.npz"
POINTS = "points.bin"


def _encodings(project: Project, generation_ref: str,
               encoding_ref: str | None) -> tuple[Generation, Encoding, Encoding]:
    """(generation, its re-encoding judged by, the dataset encoding of the real images)."""
    gen = project.get(Generation, generation_ref)
    enc = common.generation_encoding(project, gen, ref=encoding_ref)
    ds = common.dataset(project, gen.dataset_id)
    source_id = enc.source_encoding_id
    real_enc = project.get(Encoding, source_id) if source_id else \
        common.dataset_encoding(project, ds, enc.encoder)
    return gen, enc, real_enc


def find(project: Project, generation_ref: str, config: MapConfig,
         encoding_ref: str | None = None) -> MapLayout | None:
    """The layout already computed for this generation's encoding and ``config`` (None when
    there is none, or its files are gone)."""
    gen = project.get(Generation, generation_ref)
    enc = common.generation_encoding(project, gen, ref=encoding_ref)
    for row in reversed(project.list(MapLayout, generation_id=gen.id, encoding_id=enc.id,
                                     method=config.method, seed=config.seed,
                                     max_points=config.max_points)):
        if (project.abs(row.folder) / POINTS).exists():
            return row
    return None


def prepare(project: Project, config: MapConfig, generation_ref: str,
            encoding_ref: str | None = None) -> JobSpec:
    """Queue the layout of a generation's representations (its re-encoding ``encoding_ref``,
    default the latest) with the real training images of its dataset in the same encoder."""
    gen, enc, real_enc = _encodings(project, generation_ref, encoding_ref)
    ds = common.dataset(project, gen.dataset_id)
    splits = common.split_indices(project, ds)
    syn_labels = project.samples(gen.id)["label"].to_numpy(np.int64)
    map_id = new_id("map")
    spec_path = project.new_folder("maps", "_specs") / f"{map_id}.npz"
    try:
        with open(spec_path, "wb") as f:
            np.savez(f, train_idx=splits.train.astype(np.int64),
                     real_labels=splits.labels[splits.train].astype(np.int64),
                     syn_labels=syn_labels)
    except BaseException:  # a full disk: no half-written file left behind
        spec_path.unlink(missing_ok=True)
        raise
    params = {"map_id": map_id, "generation_id": gen.id, "encoding_id": enc.id,
              "real_array": str(project.abs(real_enc.array_path)),
              "syn_array": str(project.abs(enc.array_path)), "spec_path": str(spec_path),
              "out_dir": str(project.assets / "maps" / map_id),
              "folder": f"maps/{map_id}", "config": config.to_dict()}
    return JobSpec(kind="map", title=f"Map {gen.name} ({config.method}, seed {config.seed}, "
                                     f"up to {config.max_points:,} points)",
                   params=params, made=(str(spec_path),))


def browser_points(xy: np.ndarray, labels: np.ndarray, kind: np.ndarray) -> bytes:
    """The bytes of ``points.bin``: xy (P, 2) float32 scaled into [-1, 1] (aspect kept),
    then label uint16 (P) and kind uint8 (P), little-endian."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy):
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        half = max(float((hi - lo).max()) / 2, 1e-12)
        xy = (xy - (lo + hi) / 2) / half
    return (xy.astype("<f4").tobytes()
            + np.minimum(labels, 65535).astype("<u2").tobytes()
            + np.asarray(kind, dtype=np.uint8).tobytes())


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine.curation.maps import layout_2d, stratified_rows

    config = MapConfig.from_dict(params["config"])
    spec = np.load(params["spec_path"], allow_pickle=False)
    train_idx, real_labels, syn_labels = spec["train_idx"], spec["real_labels"], \
        spec["syn_labels"]
    real = np.load(params["real_array"], mmap_mode="r", allow_pickle=False)
    syn = np.load(params["syn_array"], mmap_mode="r", allow_pickle=False)
    progress(ProgressEvent(stage="map", step=0, total=2, message="reading representations"))
    ri, si = stratified_rows(len(train_idx), real_labels, len(syn), syn_labels,
                             config.max_points, config.seed)
    x = np.concatenate([np.asarray(real[train_idx[ri]], dtype=np.float32),
                        np.asarray(syn[si], dtype=np.float32)])  # (P, D)
    cancel.raise_if_cancelled()
    progress(ProgressEvent(stage="map", step=1, total=2,
                           message=f"{config.method} of {len(x):,} points"))
    start = time.perf_counter()
    xy = layout_2d(x, config.method, config.seed)  # (P, 2)
    seconds = time.perf_counter() - start
    kind = np.r_[np.zeros(len(ri), np.uint8), np.ones(len(si), np.uint8)]
    labels = np.r_[real_labels[ri], syn_labels[si]].astype(np.int32)
    index = np.r_[train_idx[ri], si].astype(np.int64)
    out = Path(params["out_dir"])
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / LAYOUT, "wb") as f:
        np.savez(f, xy=xy, kind=kind, label=labels, index=index)
    (tmp / POINTS).write_bytes(browser_points(xy, labels, kind))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    progress(ProgressEvent(stage="map", step=2, total=2, metrics={"seconds": seconds}))
    return {"count": int(len(xy)), "n_real": int(len(ri)), "n_syn": int(len(si)),
            "seconds": seconds}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    config = params["config"]
    project.add(MapLayout(
        id=params["map_id"], generation_id=params["generation_id"],
        encoding_id=params["encoding_id"], method=config["method"], seed=int(config["seed"]),
        max_points=int(config["max_points"]), count=int(result["count"]),
        n_real=int(result["n_real"]), n_syn=int(result["n_syn"]), folder=params["folder"],
        config_json=dumps({**config, "seconds": result.get("seconds")}),
        job_id=params.get("job_id", "")))
    Path(params["spec_path"]).unlink(missing_ok=True)
    return params["map_id"]


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    params = spec.get("params", spec)
    out = params.get("out_dir")
    if out:
        shutil.rmtree(Path(out).with_name(Path(out).name + ".partial"), ignore_errors=True)


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass


def load(project: Project, row: MapLayout) -> dict[str, np.ndarray]:
    """The layout's arrays: xy (P, 2), kind (P,) 0 real / 1 synthetic, label (P,), index (P,)."""
    with np.load(project.abs(row.folder) / LAYOUT, allow_pickle=False) as z:
        return {k: z[k] for k in ("xy", "kind", "label", "index")}


def summary(project: Project, row: MapLayout) -> dict[str, Any]:
    """What the CLI prints about a layout."""
    return {"map": row.id, "generation_id": row.generation_id, "encoding_id": row.encoding_id,
            "method": row.method, "seed": row.seed, "max_points": row.max_points,
            "points": row.count, "real": row.n_real, "synthetic": row.n_syn,
            "folder": str(project.abs(row.folder)), "seconds": row.config.get("seconds"),
            "job_id": row.job_id}
