"""Curate: distances of generated samples to their class centroid, bands, selections.

Fast enough to run in the owner process (vectorised numpy over memory-mapped arrays), so the
studio recomputes a band as the user moves it; no job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine import curate
from engine.config import BandConfig
from engine.errors import InvalidConfigError
from engine.project import Encoding, Generation, Project, Selection, new_id
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

    def class_ranks(self) -> tuple[np.ndarray, ...]:
        if self.ranks is None:
            self.ranks = curate.class_ranks(self.distances, self.labels, len(self.class_names))
        return self.ranks


def band_data(project: Project, generation_ref: str, encoding_ref: str | None = None,
              centroid: str = "real", metric: str = "cosine") -> BandData:
    """Distances to class centroids for a generation, in its re-encoded representation."""
    gen = project.get(Generation, generation_ref)
    enc = common.generation_encoding(project, gen, ref=encoding_ref)
    ds = common.dataset(project, gen.dataset_id)
    source_id = json.loads(enc.config_json).get("source_encoding_id", "")
    real_enc = project.get(Encoding, source_id) if source_id else \
        common.dataset_encoding(project, ds, enc.encoder)
    train_idx, _, labels_all = common.split_indices(project, ds)
    real = np.asarray(project.embeddings(real_enc)[train_idx], dtype=np.float32)
    real_labels = labels_all[train_idx]
    syn = project.embeddings(enc)
    syn_labels = project.samples(gen.id)["label"].to_numpy(np.int64)
    c = ds.num_classes
    if centroid == "real":
        centroids = curate.class_centroids(real, real_labels, c, metric)
    elif centroid == "generated":
        centroids = curate.class_centroids(syn, syn_labels, c, metric)
    elif centroid == "both":
        centroids = curate.class_centroids(np.concatenate([real, np.asarray(syn)]),
                                           np.concatenate([real_labels, syn_labels]), c, metric)
    else:
        raise InvalidConfigError(f"centroid must be real, generated or both, got {centroid!r}")
    return BandData(
        generation=gen, encoding=enc,
        distances=curate.centroid_distances(syn, syn_labels, centroids, metric),
        labels=syn_labels,
        real_distances=curate.centroid_distances(real, real_labels, centroids, metric),
        real_labels=real_labels, class_names=common.class_names(ds), metric=metric,
        centroid=centroid)


def band_mask(bd: BandData, band: BandConfig) -> np.ndarray:
    return curate.band_mask(bd.distances, bd.labels, band, len(bd.class_names),
                            ranks=bd.class_ranks())


def save_selection(project: Project, bd: BandData, band: BandConfig,
                   name: str | None = None, mask: np.ndarray | None = None) -> Selection:
    """Save the samples inside ``band`` as a named selection."""
    mask = band_mask(bd, band) if mask is None else mask
    members = np.flatnonzero(mask).astype(np.int64)
    if len(members) == 0:
        raise InvalidConfigError("the band keeps no sample; widen it before saving")
    return _store(project, bd.generation, bd.encoding.id, members,
                  name or f"{bd.generation.name}-band-{band.low:.2f}-{band.high:.2f}",
                  {"kind": "band", "band": band.to_dict()})


def save_all(project: Project, generation_ref: str, name: str | None = None,
             first_variations: int | None = None) -> Selection:
    """A selection of a whole generation (or only its first ``k`` variations per source)."""
    gen = project.get(Generation, generation_ref)
    samples = project.samples(gen.id)
    if first_variations is None:
        members = samples["idx"].to_numpy(np.int64)
        how: dict[str, Any] = {"kind": "all"}
    else:
        k = int(json.loads(gen.config_json).get("variations", 1))
        members = samples["idx"].to_numpy(np.int64)
        members = members[(members % k) < first_variations]
        how = {"kind": "first_variations", "k": first_variations}
    return _store(project, gen, "", members, name or f"{gen.name}-all", how)


def combine(project: Project, a_ref: str, b_ref: str, op: str, name: str) -> Selection:
    """Union, intersection or difference of two selections of the same generation."""
    a, b = project.get(Selection, a_ref), project.get(Selection, b_ref)
    if a.generation_id != b.generation_id:
        raise InvalidConfigError(f"selections {a.name} and {b.name} come from different "
                                 f"generations and cannot be combined")
    members = curate.combine(project.selection_members(a), project.selection_members(b), op)
    if len(members) == 0:
        raise InvalidConfigError(f"the {op} of {a.name} and {b.name} is empty; "
                                 f"nothing was saved")
    gen = project.get(Generation, a.generation_id)
    return _store(project, gen, a.encoding_id, members, name,
                  {"kind": op, "of": [a.id, b.id]})


def _store(project: Project, gen: Generation, encoding_id: str, members: np.ndarray,
           name: str, how: dict[str, Any]) -> Selection:
    sel_id = new_id("sel")
    rel = f"selections/{sel_id}.npy"
    project.save_array(rel, np.sort(members).astype(np.int64))
    return project.add(Selection(id=sel_id, name=project.unique_name(Selection, name),
                                 generation_id=gen.id, encoding_id=encoding_id,
                                 count=int(len(members)), members_path=rel,
                                 config_json=json.dumps(how)))


def summary(bd: BandData, mask: np.ndarray) -> pd.DataFrame:
    return curate.band_summary(bd.distances, bd.labels, mask, bd.class_names,
                               ranks=bd.class_ranks())
