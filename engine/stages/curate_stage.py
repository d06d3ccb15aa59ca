"""Curate: distances of generated samples to their class centroid, bands, selections; hand
overrides on top of the band, "more like this" (k nearest neighbours) and per-sample scores.

Fast enough to run in the owner process (vectorised numpy over memory-mapped arrays), so the
studio recomputes a band as the user moves it; no job. The neighbour indexes (faiss, one per
encoding and metric) are built on first use and kept in ``NAME.assets/indexes/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from engine import curation
from engine.config import BandConfig
from engine.curation import knn
from engine.curation.arrays import check_distances
from engine.errors import InvalidConfigError, NotFoundError
from engine.paths import check_name, given_name
from engine.project import (
    Encoding,
    Evaluation,
    Generation,
    HandOverride,
    Image,
    Project,
    Sample,
    Selection,
    dumps,
    new_id,
)
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

    def box_stats(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(generated, real) per-class box statistics of the distances: the band figure's
        boxes, which no band change moves (computed once per view)."""
        if "box_stats" not in self.cache:
            c = len(self.class_names)
            real_d, real_l = check_distances(self.real_distances, self.real_labels, c)
            self.cache["box_stats"] = (
                curation.box_stats(self.distances, self.labels, c, ranks=self.class_ranks()),
                curation.box_stats(real_d, real_l, c))
        return self.cache["box_stats"]

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
        "sampler", "steps", "guidance", "distance", "class_quantile", "encoder", "hand"};
        "hand" is the latest hand decision naming the sample ({"decision", "by", "via",
        "note", "at", "override_id"}, "clear" included) or None; for a source file from
        outside the project also "source_name" and "source_sha256", and "source_path" is its
        copy in the generation's folder.
    """
    from engine.project import Model

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
    out["hand"] = None
    for row, members in _hand_log(project, bd.generation):
        if np.isin(index, members):
            out["hand"] = _decision_dict(row)
    return out


def save_selection(project: Project, bd: BandData, band: BandConfig,
                   name: str | None = None, mask: np.ndarray | None = None,
                   hand: bool = True) -> Selection:
    """Save the samples inside ``band`` (or ``mask``), with the generation's hand overrides on
    top unless ``hand`` is False, as a named selection. Its config records the band and, under
    ``"hand"``, what the hand changed and the last override applied."""
    name = given_name(name, "selection name")
    mask = band_mask(bd, band) if mask is None else np.asarray(mask, dtype=bool)
    how: dict[str, Any] = {"kind": "band", "band": band.to_dict(),
                           "encoder": bd.encoding.encoder}
    if hand:
        mask, how["hand"] = _with_hand(project, bd.generation, mask)
    members = np.flatnonzero(mask).astype(np.int64)
    if len(members) == 0:
        raise InvalidConfigError("the band keeps no sample; widen it before saving")
    return _store(project, bd.generation, bd.encoding.id, members,
                  name or f"{bd.generation.name}-band-{band.low:.2f}-{band.high:.2f}", how)


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
    mask = np.zeros(len(samples), dtype=bool)
    mask[members] = True
    mask, how["hand"] = _with_hand(project, gen, mask)
    if not mask.any():
        raise InvalidConfigError(f"every sample of {gen.name} is dropped by hand; "
                                 f"nothing was saved")
    return _store(project, gen, "", np.flatnonzero(mask), name or f"{gen.name}-all", how)


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
    if "means" not in bd.cache:  # per class, over all samples: no band moves them
        bd.cache["means"] = curation.class_means(bd.distances, bd.labels,
                                                 len(bd.class_names))
    return curation.band_summary(bd.distances, bd.labels, mask, bd.class_names,
                                 ranks=bd.class_ranks(), means=bd.cache["means"])


# ------------------------------------------------------------------ hand overrides


def resolve_samples(project: Project, generation: Generation,
                    refs: Iterable[str | int]) -> np.ndarray:
    """Sample ids or indices (``idx``, as ints or digit strings) of ``generation`` -> sorted
    unique int64 idx.

    Raises:
        InvalidConfigError: none given, or one that is no sample of the generation (named).
    """
    samples = project.samples(generation.id)
    row_of = dict(zip(samples["id"], samples["idx"]))
    out = []
    for ref in refs:
        text = str(ref).strip()
        if not text:
            continue
        if isinstance(ref, (int, np.integer)) or text.isdigit():
            if not 0 <= int(text) < len(samples):
                raise InvalidConfigError(f"sample index {text} is outside 0..{len(samples) - 1} "
                                         f"of generation {generation.name}")
            out.append(int(text))
        elif text in row_of:
            out.append(int(row_of[text]))
        else:
            raise InvalidConfigError(f"{text!r} is no sample of generation {generation.name}: "
                                     f"give a sample id or an index in 0..{len(samples) - 1}")
    if not out:
        raise InvalidConfigError("no sample named: give at least one sample id or index")
    return np.unique(np.asarray(out, dtype=np.int64))


def record_hand(project: Project, generation_ref: str, samples: Iterable[str | int],
                decision: str, *, by: str, via: str = "", note: str = "") -> HandOverride:
    """Keep, drop or clear (back to the band) some samples of a generation by hand.

    Args:
        samples: sample ids or indices (``resolve_samples``).
        decision: "keep", "drop" or "clear".
        by: who decided ("cli:alice", "studio:visitor"); via: with what ("lasso", "gallery",
            "neighbours of img_1a2b"); both go into the samples' provenance.

    Returns:
        the ``HandOverride`` row (its members in ``selections/overrides/<id>.npy``).
    """
    if decision not in curation.DECISIONS:
        raise InvalidConfigError(f"decision must be one of {curation.DECISIONS}, "
                                 f"got {decision!r}")
    gen = project.get(Generation, generation_ref)
    members = resolve_samples(project, gen, samples)
    rows = project.list(HandOverride, generation_id=gen.id)
    row_id = new_id("hand")
    rel = f"selections/overrides/{row_id}.npy"
    project.save_array(rel, members)
    return project.add(HandOverride(
        id=row_id, generation_id=gen.id, decision=decision, count=int(len(members)),
        members_path=rel, decided_by=str(by)[:200], decided_via=str(via)[:200],
        note=str(note)[:1000],
        seq=1 + max((r.seq for r in rows), default=0)))


def _hand_rows(project: Project, generation_id: str) -> list[HandOverride]:
    """The generation's hand decision rows, oldest first."""
    return sorted(project.list(HandOverride, generation_id=generation_id),
                  key=lambda r: (r.seq, r.created_at, r.id))


def _hand_log(project: Project, gen: Generation,
              through: str | None = None) -> list[tuple[HandOverride, np.ndarray]]:
    """The generation's hand decisions, oldest first, with their members (up to and with
    the row ``through`` when given)."""
    rows = _hand_rows(project, gen.id)
    out = []
    for row in rows:
        out.append((row, np.asarray(project.load_array(row.members_path, mmap=False),
                                    dtype=np.int64)))
        if row.id == through:
            break
    return out


def _decision_dict(row: HandOverride) -> dict[str, Any]:
    return {"decision": row.decision, "by": row.decided_by, "via": row.decided_via,
            "note": row.note,
            "at": row.created_at.isoformat(timespec="seconds"), "override_id": row.id}


def hand_state(project: Project, generation_ref: str, through: str | None = None
               ) -> np.ndarray:
    """(N,) int8 per sample: 1 kept by hand, -1 dropped by hand, 0 the band decides (after
    every decision, or up to the override ``through``)."""
    gen = project.get(Generation, generation_ref)
    return curation.hand_state(gen.count or len(project.samples(gen.id)),
                               [(r.decision, m) for r, m in _hand_log(project, gen, through)])


def hand_table(project: Project, generation_ref: str) -> pd.DataFrame:
    """One row per sample with a hand decision in force: idx, sample, class, decision
    ("keep" / "drop"), by, via, note, at, override_id."""
    gen = project.get(Generation, generation_ref)
    latest: dict[int, HandOverride] = {}
    for row, members in _hand_log(project, gen):
        for i in members.tolist():
            latest[i] = row
    samples = project.samples(gen.id)
    rows = [{"idx": i, "sample": str(samples["id"].iat[i]),
             "class": str(samples["class_name"].iat[i]), **_decision_dict(r)}
            for i, r in sorted(latest.items()) if r.decision != "clear"]
    cols = ["idx", "sample", "class", "decision", "by", "via", "note", "at", "override_id"]
    return pd.DataFrame(rows, columns=cols)


def _with_hand(project: Project, gen: Generation, mask: np.ndarray
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """``mask`` with the hand decisions applied, and what they changed (for the config)."""
    log_rows = _hand_log(project, gen)
    state = curation.hand_state(len(mask), [(r.decision, m) for r, m in log_rows])
    kept = curation.apply_hand(mask, state)
    return kept, {"kept_by_band": int(mask.sum()),
                  "kept_by_hand": int((kept & ~mask).sum()),
                  "dropped_by_hand": int((mask & ~kept).sum()),
                  "through": log_rows[-1][0].id if log_rows else ""}


def kept_mask(project: Project, bd: BandData, band: BandConfig) -> np.ndarray:
    """(N,) bool: what a selection saved now would keep (the band, then the hand)."""
    return curation.apply_hand(band_mask(bd, band), hand_state(project, bd.generation.id))


def view_hand_state(project: Project, bd: BandData) -> np.ndarray:
    """``hand_state`` of the view's generation, cached in the view (``bd.cache``) for as long
    as its decision rows stay the same: a band change reads the rows (one query), not their
    member arrays, and replays nothing. A decision recorded since (by any path: the rows
    are compared, not a counter) replays them again. Do not modify the result."""
    rows = _hand_rows(project, bd.generation.id)
    key = tuple((r.id, r.decision, r.members_path) for r in rows)
    cached = bd.cache.get("hand_state")
    if cached is not None and cached[0] == key:
        return cached[1]
    n = bd.generation.count or len(bd.labels)
    state = curation.hand_state(n, [(r.decision, np.asarray(
        project.load_array(r.members_path, mmap=False), dtype=np.int64)) for r in rows])
    state.flags.writeable = False  # shared by every band change of the view
    bd.cache["hand_state"] = (key, state)
    return state


def hand_counts(project: Project, bd: BandData, mask: np.ndarray) -> pd.DataFrame:
    """Per class (and ``all``): generated, kept by band, + kept by hand, - dropped by hand,
    kept; ``mask`` is the band's."""
    return curation.hand_counts(bd.labels, mask, view_hand_state(project, bd), bd.class_names)


# ------------------------------------------------------------------ more like this


INDEX_PARTS = ("real", "synthetic")


def index_path(project: Project, bd: BandData, part: str) -> Path:
    """Where the faiss index of ``part`` ("real": the training images, "synthetic": the
    samples) of this view's encodings and metric is kept."""
    enc = bd.real_encoding if part == "real" else bd.encoding
    return project.assets / "indexes" / f"{enc.id}-{'train' if part == 'real' else 'all'}-" \
                                        f"{bd.metric}.faiss"


def index_rows(bd: BandData, part: str) -> int:
    """How many vectors the index of ``part`` holds."""
    return len(bd.train_idx) if part == "real" else len(bd.distances)


def indexes_pending(project: Project, bd: BandData) -> list[str]:
    """The parts whose index is missing and too large to build while a person waits (more
    than ``knn.EXACT_MAX`` vectors: a trained IVF index, minutes at 520,000): the studio
    builds those in an ``index`` job first (``engine.stages.index_stage``). Exact indexes
    below that size are a copy of the vectors and are built on the spot."""
    return [part for part in INDEX_PARTS
            if index_rows(bd, part) > knn.EXACT_MAX and not index_path(project, bd, part).is_file()
            and f"index-{part}-{bd.metric}" not in bd.cache]


def _index(project: Project, bd: BandData, part: str):
    """The faiss index of the real training images (``part="real"``) or of the samples
    (``"synthetic"``) in this view's encodings and metric: from ``NAME.assets/indexes/``, or
    built and saved there (atomically) when missing or stale; kept on the view."""
    key = f"index-{part}-{bd.metric}"
    if key in bd.cache:
        return bd.cache[key]
    enc = bd.real_encoding if part == "real" else bd.encoding
    arr = project.embeddings(enc)
    rows = bd.train_idx if part == "real" else None
    n = len(rows) if rows is not None else len(arr)
    path = index_path(project, bd, part)
    index = None
    if path.is_file():
        try:
            index = knn.load_index(path)
            if index.ntotal != n or index.d != arr.shape[1]:
                index = None  # stale: the encoding or the split changed
        except InvalidConfigError:
            index = None
    if index is None:
        index = knn.build_index(arr, bd.metric, rows=rows)
        knn.save_index(index, path)
    bd.cache[key] = index
    return index


def _query(project: Project, bd: BandData, image_ref: str | int
           ) -> tuple[np.ndarray, str, int, str]:
    """(1, D) vector of a real image of the dataset or a sample of the generation (id, or a
    bare sample index); its kind ("real" / "synthetic"), row and id."""
    text = str(image_ref).strip()
    if text.isdigit():
        text = str(project.samples(bd.generation.id)["id"].iat[
            resolve_samples(project, bd.generation, [text])[0]])
    try:
        sample = project.get(Sample, text)
    except NotFoundError:  # not a sample: a real image?
        sample = None
    if sample is not None:
        if sample.generation_id != bd.generation.id:
            raise InvalidConfigError(f"sample {text} belongs to another generation than "
                                     f"{bd.generation.name}")
        syn = project.embeddings(bd.encoding)
        return np.asarray(syn[sample.idx:sample.idx + 1], np.float32), "synthetic", \
            int(sample.idx), text
    try:
        img = project.get(Image, text)
    except NotFoundError:
        raise InvalidConfigError(f"{text!r} is neither a sample of generation "
                                 f"{bd.generation.name} nor a real image") from None
    if img.dataset_id != bd.generation.dataset_id:
        raise InvalidConfigError(f"image {text} is not from the dataset of generation "
                                 f"{bd.generation.name}")
    real = project.embeddings(bd.real_encoding)
    return np.asarray(real[img.idx:img.idx + 1], np.float32), "real", int(img.idx), text


def generation_for(project: Project, image_ref: str,
                   generation_ref: str | None = None) -> Generation:
    """The generation to search around ``image_ref``: ``generation_ref`` when given, else the
    sample's own generation, else (a real image) the latest re-encoded generation of its
    dataset.

    Raises:
        InvalidConfigError: the image is unknown, or its dataset has no re-encoded generation.
    """
    if generation_ref:
        return project.get(Generation, generation_ref)
    text = str(image_ref).strip()
    try:
        return project.get(Generation, project.get(Sample, text).generation_id)
    except NotFoundError:
        pass
    try:
        img = project.get(Image, text)
    except NotFoundError:
        raise InvalidConfigError(f"{text!r} is neither a sample id nor a real image id "
                                 f"(a sample index needs --generation)") from None
    encoded = {e.target_id for e in project.list(Encoding, target="generation")}
    gens = [g for g in project.list(Generation, dataset_id=img.dataset_id) if g.id in encoded]
    if not gens:
        raise InvalidConfigError(f"no re-encoded generation of image {text}'s dataset: "
                                 f"generate and re-encode one first")
    return gens[-1]


def neighbours(project: Project, bd: BandData, image_ref: str | int, k: int = 20,
               among: tuple[str, ...] = ("real", "synthetic")) -> pd.DataFrame:
    """"More like this": the ``k`` nearest real training images and / or samples of the
    generation to one image (a real image id, a sample id or a sample index), in this view's
    encoding and metric (``bd.metric``), through the cached faiss indexes. The image itself is
    left out.

    Returns:
        DataFrame of at most ``k`` rows, nearest first: rank, kind ("real" / "synthetic"), id,
        idx (row in the dataset / the generation), class, distance, path (thumbnail or PNG,
        absolute), hand ("keep" / "drop" / "" for samples). ``attrs``: query, query_kind, metric.
    """
    if not among or set(among) - {"real", "synthetic"}:
        raise InvalidConfigError(f"among must name real and/or synthetic, got {among!r}")
    if k < 1 or k > 1000:
        raise InvalidConfigError(f"k must be in [1, 1000], got {k}")
    q, kind, row, qid = _query(project, bd, image_ref)
    parts = []
    if "real" in among:
        index = _index(project, bd, "real")
        d, ids = knn.search(index, q, min(k + 1, index.ntotal), bd.metric)
        ok = ids[0] >= 0
        images = project.images(bd.generation.dataset_id)
        rows_ = bd.train_idx[ids[0][ok]]
        parts.append(pd.DataFrame({
            "kind": "real", "id": images["id"].to_numpy()[rows_], "idx": rows_,
            "class": images["class_name"].to_numpy()[rows_], "distance": d[0][ok],
            "path": [str(project.abs(t or p)) for t, p in
                     zip(images["thumb"].to_numpy()[rows_], images["path"].to_numpy()[rows_])],
            "hand": ""}))
    if "synthetic" in among:
        index = _index(project, bd, "synthetic")
        d, ids = knn.search(index, q, min(k + 1, index.ntotal), bd.metric)
        ok = ids[0] >= 0
        samples = project.samples(bd.generation.id)
        rows_ = ids[0][ok]
        state = hand_state(project, bd.generation.id)
        parts.append(pd.DataFrame({
            "kind": "synthetic", "id": samples["id"].to_numpy()[rows_], "idx": rows_,
            "class": samples["class_name"].to_numpy()[rows_], "distance": d[0][ok],
            "path": [str(project.abs(p)) for p in samples["path"].to_numpy()[rows_]],
            "hand": np.array(["drop", "", "keep"])[state[rows_] + 1]}))
    out = pd.concat(parts, ignore_index=True)
    out = out[~((out["kind"] == kind) & (out["idx"] == row))]  # not the image itself
    out = out.sort_values("distance", kind="stable").head(k).reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out.attrs.update(query=qid, query_kind=kind, metric=bd.metric)
    return out


def real_neighbour_distance(project: Project, bd: BandData, max_queries: int = 2_000,
                            seed: int = 0) -> float:
    """Median distance of a real training image to its nearest other one (seeded subsample
    of at most ``max_queries``), in the view's metric: the scale "copies" are judged on."""
    key = f"real-nn-{bd.metric}-{max_queries}-{seed}"
    if key not in bd.cache:
        index = _index(project, bd, "real")
        n = index.ntotal
        if n < 2:
            raise InvalidConfigError("finding copies needs at least 2 real training images")
        pick = np.sort(np.random.default_rng(seed).choice(n, min(n, max_queries),
                                                          replace=False))
        real = project.embeddings(bd.real_encoding)
        d, ids = knn.search(index, np.asarray(real[bd.train_idx[pick]], np.float32), 2,
                           bd.metric)
        own = ids[:, 0] == pick  # skip the query itself (ties may put it second)
        bd.cache[key] = float(np.median(np.where(own, d[:, 1], d[:, 0])))
    return bd.cache[key]


def copies(project: Project, bd: BandData, image_ref: str, k: int = 20,
           copy_factor: float = 0.5) -> pd.DataFrame:
    """"Find copies of this training image": its ``k`` nearest samples, each flagged
    ``copy`` when closer than ``copy_factor`` x the median real-real nearest-neighbour
    distance (``real_neighbour_distance``). ``attrs["threshold"]`` is that distance."""
    if copy_factor <= 0:
        raise InvalidConfigError(f"copy_factor must be > 0, got {copy_factor}")
    out = neighbours(project, bd, image_ref, k, among=("synthetic",))
    threshold = copy_factor * real_neighbour_distance(project, bd)
    out["copy"] = out["distance"] < threshold
    out.attrs["threshold"] = threshold
    return out


# ------------------------------------------------------------------ per-sample scores

SCORE_KEYS = ("centroid_distance", "class_quantile", "fidelity", "nearest_real",
              "uniqueness", "confidence")
JUDGE_HINT = ("evaluate a real-only classifier that judges it: rcdm-studio evaluate --mix real "
              "--score-generation GEN, or in the Evaluate tab 'real only' with 'judge the "
              "selection's generation'")


def judge(project: Project, generation: Generation) -> Evaluation | None:
    """The newest finished evaluation whose classifier judged every sample of
    ``generation`` (``evaluate_stage.prepare(score_generation=...)``), or None."""
    found = [e for e in project.list(Evaluation, status="done")
             if e.results.get("judged", {}).get("generation_id") == generation.id]
    return max(found, key=lambda e: e.created_at) if found else None


def judgement(project: Project, evaluation: Evaluation, n: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(confidence (n,) float32, predicted (n,) int32) saved by ``evaluation``.

    Raises:
        InvalidConfigError: its arrays do not hold one value per sample (the generation
            changed since).
    """
    judged = evaluation.results["judged"]
    folder = f"evaluations/{evaluation.id}"
    conf = np.asarray(project.load_array(f"{folder}/{check_name(judged['confidence'], 'file')}",
                                         mmap=False), dtype=np.float32)
    pred = np.asarray(project.load_array(f"{folder}/{check_name(judged['predicted'], 'file')}",
                                         mmap=False), dtype=np.int32)
    if conf.shape != (n,) or pred.shape != (n,):
        raise InvalidConfigError(f"evaluation {evaluation.name} judged {len(conf)} samples, "
                                 f"the generation has {n}")
    return conf, pred


def scores(project: Project, bd: BandData, sort: str | None = None,
           descending: bool = False) -> pd.DataFrame:
    """Per-sample scores of the generation, in this view's encoding and metric.

    Columns: idx, sample, class, source_image_id, ``centroid_distance`` (to the class
    centroid), ``class_quantile`` (its rank in the class, 0..1), ``fidelity`` (cosine between
    the source image and the sample; NaN when the source is unknown), ``nearest_real``
    (distance to the nearest real training image) and ``nearest_real_id``, ``uniqueness``
    (distance to the nearest other sample) and ``nearest_synthetic``, ``confidence`` (the
    softmax probability a classifier trained on real images only gives the sample's own
    label: low is a likely mislabelled or off-class sample) and ``predicted`` (its predicted
    class), from the newest evaluation that judged the generation (``judge``; NaN and ""
    when none has), hand ("keep" / "drop" / ""). ``attrs["notes"]`` names the judging
    evaluation (or says how to get one), ``attrs["judge"]`` is its id or "".

    Args:
        sort: one of ``SCORE_KEYS`` (or any column); None keeps the sample order.
    """
    samples = project.samples(bd.generation.id)
    n = len(samples)
    syn = project.embeddings(bd.encoding)
    rank, counts = bd.class_ranks()[:2]
    out = pd.DataFrame({
        "idx": samples["idx"].to_numpy(np.int64), "sample": samples["id"].to_numpy(),
        "class": samples["class_name"].to_numpy(),
        "source_image_id": samples["source_image_id"].to_numpy(),
        "centroid_distance": bd.distances.astype(np.float32),
        "class_quantile": ((rank + 0.5) / np.maximum(counts[bd.labels], 1)).astype(np.float32),
        "fidelity": fidelity(project, bd)})
    images = project.images(bd.generation.dataset_id)
    near_d = np.full(n, np.nan, np.float32)
    near_id = np.full(n, "", dtype=object)
    uniq_d = np.full(n, np.nan, np.float32)
    uniq_id = np.full(n, "", dtype=object)
    real_index, syn_index = _index(project, bd, "real"), _index(project, bd, "synthetic")
    for start in range(0, n, 8_192):  # 1. in chunks of queries: memory stays bounded
        stop = min(n, start + 8_192)
        q = np.asarray(syn[start:stop], np.float32)  # (c, D)
        d, ids = knn.search(real_index, q, 1, bd.metric)
        near_d[start:stop] = d[:, 0]
        near_id[start:stop] = np.where(ids[:, 0] >= 0,
                                       images["id"].to_numpy()[bd.train_idx[ids[:, 0]]], "")
        if syn_index.ntotal >= 2:  # 2. nearest other sample (ties may put itself second)
            d, ids = knn.search(syn_index, q, 2, bd.metric)
            own = ids[:, 0] == np.arange(start, stop)
            other = np.where(own, ids[:, 1], ids[:, 0])
            uniq_d[start:stop] = np.where(own, d[:, 1], d[:, 0])
            uniq_id[start:stop] = np.where(other >= 0, samples["id"].to_numpy()[other], "")
    out["nearest_real"], out["nearest_real_id"] = near_d, near_id
    out["uniqueness"], out["nearest_synthetic"] = uniq_d, uniq_id
    out["confidence"], out["predicted"], judged_by, note = _confidence(project, bd, n)
    out["hand"] = np.array(["drop", "", "keep"])[hand_state(project, bd.generation.id) + 1]
    out.attrs["judge"] = judged_by
    out.attrs["notes"] = [
        note, f"distances are {bd.metric} in {bd.encoding.encoder} (encoding {bd.encoding.id})"]
    if sort:
        if sort not in out.columns:
            raise InvalidConfigError(f"cannot sort by {sort!r}: choose one of "
                                     f"{', '.join(SCORE_KEYS)} (or idx, sample, class)")
        out = out.sort_values(sort, ascending=not descending, kind="stable",
                              na_position="last").reset_index(drop=True)
    return out


def _confidence(project: Project, bd: BandData, n: int
                ) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(confidence (n,) float32, predicted class names (n,), judging evaluation id, note)."""
    conf = np.full(n, np.nan, np.float32)
    pred = np.full(n, "", dtype=object)
    e = judge(project, bd.generation)
    if e is None:
        return conf, pred, "", f"no classifier confidence yet: {JUDGE_HINT}"
    try:
        c, p = judgement(project, e, n)
    except (InvalidConfigError, NotFoundError, OSError, ValueError, KeyError) as exc:
        return conf, pred, "", f"no classifier confidence: {exc}"
    names = np.array(bd.class_names, dtype=object)
    ok = (p >= 0) & (p < len(names))
    pred[ok] = names[p[ok]]
    trained = e.results["judged"].get("trained_on", e.mix)
    return c, pred, e.id, (
        f"confidence judged by evaluation {e.name} ({e.id}): a {e.config.get('arch', '')} "
        f"classifier trained on {trained} images only (top-1 {e.top1 or 0:.1f} % on its "
        f"{e.eval_split} split), which never saw these samples")
