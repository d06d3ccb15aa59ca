"""Curate: distances of generated samples to their class centroid, bands, selections.

Fast enough to run in the owner process (vectorised numpy over memory-mapped arrays), so the
studio recomputes a band as the user moves it; no job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine import curation
from engine.config import BandConfig
from engine.errors import InvalidConfigError
from engine.paths import check_name, given_name
from engine.project import Encoding, Generation, Project, Selection, dumps, new_id
from engine.stages import common


@dataclass
class BandData:
    """Everything a band view needs, for one (generation, encoding) pair.

    Attributes:
        distances: (N,) distance of each generated sample to its class centroid.
        labels: (N,) class of each sample.
        real_distances / real_labels: the same for the real training images.
        class_names: names in label order.
    """

    generation: Generation
    encoding: Encoding
    distances: np.ndarray
    labels: np.ndarray
    real_distances: np.ndarray
    real_labels: np.ndarray
    class_names: list[str]
    metric: str
    centroid: str
    ranks: tuple[np.ndarray, ...] | None = None  # within-class ranks, sorted once
    real_encoding: Encoding | None = None  # the dataset encoding judged against
    train_idx: np.ndarray | None = None  # (N_real,) dataset rows of the real training images
    robust: tuple[np.ndarray, np.ndarray] | None = None  # per-class median / MAD, once
    cache: dict[str, Any] = field(default_factory=dict)  # maps, metrics of this view

    def class_ranks(self) -> tuple[np.ndarray, ...]:
        if self.ranks is None:
            self.ranks = curation.class_ranks(self.distances, self.labels, len(self.class_names))
        return self.ranks

    def robust_stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.robust is None:
            self.robust = curation.robust_stats(self.distances, self.labels,
                                                len(self.class_names), ranks=self.class_ranks())
        return self.robust


def band_data(project: Project, generation_ref: str, encoding_ref: str | None = None,
              centroid: str = "real", metric: str = "cosine") -> BandData:
    """Distances to class centroids for a generation, in its re-encoded representation."""
    gen = project.get(Generation, generation_ref)
    enc = common.generation_encoding(project, gen, ref=encoding_ref)
    ds = common.dataset(project, gen.dataset_id)
    source_id = enc.source_encoding_id
    real_enc = project.get(Encoding, source_id) if source_id else \
        common.dataset_encoding(project, ds, enc.encoder)
    splits = common.split_indices(project, ds)  # real centroids: the train split only
    train_idx, labels_all = splits.train, splits.labels
    real = np.asarray(project.embeddings(real_enc)[train_idx], dtype=np.float32)
    real_labels = labels_all[train_idx]
    syn = project.embeddings(enc)
    syn_labels = project.samples(gen.id)["label"].to_numpy(np.int64)
    c = ds.num_classes
    if centroid == "real":
        centroids = curation.class_centroids(real, real_labels, c, metric)
    elif centroid == "generated":
        centroids = curation.class_centroids(syn, syn_labels, c, metric)
    elif centroid == "both":
        centroids = curation.class_centroids(np.concatenate([real, np.asarray(syn)]),
                                             np.concatenate([real_labels, syn_labels]), c, metric)
    else:
        raise InvalidConfigError(f"centroid must be real, generated or both, got {centroid!r}")
    return BandData(
        generation=gen, encoding=enc,
        distances=curation.centroid_distances(syn, syn_labels, centroids, metric),
        labels=syn_labels,
        real_distances=curation.centroid_distances(real, real_labels, centroids, metric),
        real_labels=real_labels, class_names=ds.classes, metric=metric,
        centroid=centroid, real_encoding=real_enc, train_idx=train_idx)


def encoding_choices(project: Project, generation_ref: str) -> list[tuple[str, str]]:
    """(label, encoding id) of every re-encoding of a generation, latest last: the encoders a
    generation can be judged by (the conditioning one and any second encoder)."""
    gen = project.get(Generation, generation_ref)
    out = []
    for e in project.list(Encoding, target="generation", target_id=gen.id):
        extra = " (offline)" if e.offline else ""
        out.append((f"{e.encoder}{extra} · {e.dim}-d · {e.id[-6:]}", e.id))
    return out


def band_mask(bd: BandData, band: BandConfig) -> np.ndarray:
    """(N,) bool kept by ``band`` (cached ranks: fast enough to run on every slider move)."""
    return curation.band_mask(bd.distances, bd.labels, band, len(bd.class_names),
                              ranks=bd.class_ranks(), class_names=bd.class_names,
                              real_distances=bd.real_distances, real_labels=bd.real_labels,
                              robust=bd.robust_stats() if band.outlier == "zscore" else None)


def _real_train(project: Project, bd: BandData) -> np.ndarray:
    """(N_real, D) float32 real training representations in the judging encoder."""
    return np.asarray(project.embeddings(bd.real_encoding)[bd.train_idx], dtype=np.float32)


def embedding_map(project: Project, bd: BandData, method: str = "pca",
                  max_points: int = 5_000, seed: int = 0) -> pd.DataFrame:
    """``curation.embedding_map`` of this view, cached on ``bd`` per (method, max_points, seed)."""
    key = f"map-{method}-{max_points}-{seed}"
    if key not in bd.cache:
        bd.cache[key] = curation.embedding_map(
            _real_train(project, bd), bd.real_labels, project.embeddings(bd.encoding),
            bd.labels, method=method, max_points=max_points, seed=seed)
    return bd.cache[key]


def fidelity(project: Project, bd: BandData) -> np.ndarray:
    """(N,) cosine between each sample's source image and the sample, both in the judging
    encoder (NaN where the source image is unknown)."""
    samples = project.samples(bd.generation.id)
    images = project.images(bd.generation.dataset_id)
    row_of = dict(zip(images["id"], images["idx"]))
    src = np.array([row_of.get(i, -1) for i in samples["source_image_id"]], dtype=np.int64)
    out = np.full(len(src), np.nan, dtype=np.float32)
    ok = src >= 0
    if ok.any():
        real = project.embeddings(bd.real_encoding)
        syn = project.embeddings(bd.encoding)
        out[ok] = curation.conditioning_fidelity(np.asarray(real[src[ok]], dtype=np.float32),
                                                 np.asarray(syn, dtype=np.float32)[ok])
    return out


def metrics(project: Project, bd: BandData, mask: np.ndarray, k: int = 5,
            max_samples: int | None = 10_000, copy_factor: float = 0.5) -> dict[str, Any]:
    """``curation.evaluate`` of the kept samples against the real training images.

    Sample indices in "copies" / "duplicates" are rows of the generation (its ``idx``)."""
    fid = fidelity(project, bd)
    return curation.evaluate(
        _real_train(project, bd), bd.real_labels, project.embeddings(bd.encoding), bd.labels,
        mask, bd.class_names, fidelity=None if np.isnan(fid).all() else np.nan_to_num(fid),
        metric=bd.metric, k=k, max_samples=max_samples, copy_factor=copy_factor)


def provenance(project: Project, bd: BandData, index: int) -> dict[str, Any]:
    """Where one generated sample comes from and how far it lies: for the studio's details.

    Returns:
        {"sample", "path", "source_image_id", "source_path", "class", "seed", "model",
        "sampler", "steps", "guidance", "distance", "class_quantile", "encoder"}; for a
        source file from outside the project also "source_name" and "source_sha256", and
        "source_path" is its copy in the generation's folder.
    """
    from engine.project import Image, Model

    samples = project.samples(bd.generation.id)
    if not 0 <= index < len(samples):
        raise InvalidConfigError(f"sample index {index} is outside 0..{len(samples) - 1}")
    row = samples.iloc[index]
    rank, counts = bd.class_ranks()[:2]
    label = int(bd.labels[index])
    out: dict[str, Any] = {
        "sample": str(row["id"]), "path": str(project.abs(row["path"])),
        "source_image_id": str(row["source_image_id"]), "source_path": "",
        "class": bd.class_names[label], "seed": int(row["seed"]), "model": "",
        "sampler": str(row["sampler"]), "steps": int(row["steps"]),
        "guidance": float(row["guidance"]), "distance": float(bd.distances[index]),
        "class_quantile": float((rank[index] + 0.5) / max(counts[label], 1)),
        "encoder": bd.encoding.encoder, "metric": bd.metric, "centroid": bd.centroid}
    external = {r.get("id"): r for r in
                bd.generation.config.get("conditions", {}).get("external") or []}
    if out["source_image_id"] in external:  # a file from outside the project, copied in
        ext = external[out["source_image_id"]]
        out.update(source_name=str(ext.get("name", "")), source_sha256=str(ext.get("sha256")),
                   source_path=str(project.abs(ext["file"])) if ext.get("file") else "")
    else:
        try:
            img = project.get(Image, str(row["source_image_id"]))
            out["source_path"] = str(project.abs(img.thumb or img.path))
        except Exception:  # noqa: BLE001 - a missing source is shown as such, not an error
            pass
    try:
        out["model"] = project.get(Model, bd.generation.model_id).name
    except Exception:  # noqa: BLE001
        out["model"] = bd.generation.model_id
    return out


def save_selection(project: Project, bd: BandData, band: BandConfig,
                   name: str | None = None, mask: np.ndarray | None = None) -> Selection:
    """Save the samples inside ``band`` as a named selection."""
    name = given_name(name, "selection name")
    mask = band_mask(bd, band) if mask is None else mask
    members = np.flatnonzero(mask).astype(np.int64)
    if len(members) == 0:
        raise InvalidConfigError("the band keeps no sample; widen it before saving")
    return _store(project, bd.generation, bd.encoding.id, members,
                  name or f"{bd.generation.name}-band-{band.low:.2f}-{band.high:.2f}",
                  {"kind": "band", "band": band.to_dict(), "encoder": bd.encoding.encoder})


def save_all(project: Project, generation_ref: str, name: str | None = None,
             first_variations: int | None = None) -> Selection:
    """A selection of a whole generation (or only its first ``k`` variations per source)."""
    name = given_name(name, "selection name")
    gen = project.get(Generation, generation_ref)
    samples = project.samples(gen.id)
    if first_variations is None:
        members = samples["idx"].to_numpy(np.int64)
        how: dict[str, Any] = {"kind": "all"}
    else:
        k = gen.variations
        members = samples["idx"].to_numpy(np.int64)
        members = members[(members % k) < first_variations]
        how = {"kind": "first_variations", "k": first_variations}
    return _store(project, gen, "", members, name or f"{gen.name}-all", how)


def combine(project: Project, a_ref: str, b_ref: str, op: str, name: str) -> Selection:
    """Union, intersection or difference of two selections of the same generation."""
    name = check_name(name, "selection name")
    a, b = project.get(Selection, a_ref), project.get(Selection, b_ref)
    if a.generation_id != b.generation_id:
        raise InvalidConfigError(f"selections {a.name} and {b.name} come from different "
                                 f"generations and cannot be combined")
    members = curation.combine(project.selection_members(a), project.selection_members(b), op)
    if len(members) == 0:
        raise InvalidConfigError(f"the {op} of {a.name} and {b.name} is empty; "
                                 f"nothing was saved")
    gen = project.get(Generation, a.generation_id)
    return _store(project, gen, a.encoding_id, members, name,
                  {"kind": op, "of": [a.id, b.id]})


def _store(project: Project, gen: Generation, encoding_id: str, members: np.ndarray,
           name: str, how: dict[str, Any]) -> Selection:
    check_name(name, "selection name", nested=True)  # before anything is written
    sel_id = new_id("sel")
    rel = f"selections/{sel_id}.npy"
    project.save_array(rel, np.sort(members).astype(np.int64))
    return project.add(Selection(id=sel_id, name=project.unique_name(Selection, name),
                                 generation_id=gen.id, encoding_id=encoding_id,
                                 count=int(len(members)), members_path=rel,
                                 config_json=dumps(how)))


def summary(bd: BandData, mask: np.ndarray) -> pd.DataFrame:
    return curation.band_summary(bd.distances, bd.labels, mask, bd.class_names,
                                 ranks=bd.class_ranks())
