"""Metrics of a synthetic dataset in the representation space (no Inception download needed).

- Precision / recall on k-NN manifolds (Kynkäänniemi et al., 2019) and density / coverage
  (Naeem et al., 2020): the k-th nearest-neighbour radius of every real (and every generated)
  sample defines a ball; precision is the share of generated samples inside some real ball,
  recall the share of real samples inside some generated ball, density the mean number of real
  balls holding a generated sample divided by k, coverage the share of real balls holding at
  least one generated sample.
- Memorisation: each generated sample's nearest real *training* image; a sample closer to it
  than ``copy_factor`` times the median real-real nearest-neighbour distance is flagged as a
  near-copy. Near-duplicates: pairs of generated samples closer than that same threshold.
- Fréchet distance overall and per class, conditioning fidelity (cosine between each source
  representation and its generated re-encoding), and a per-class dashboard (acceptance under a
  band, diversity, conditioning fidelity, drift).

Nearest neighbours are exact (faiss ``IndexFlatL2``, squared L2, square-rooted here). The
ball-membership pass reads the (generated x real) distance matrix in row chunks of bounded
size, so memory stays ``O(chunk x N_real)``; the sets are subsampled (seeded) to
``max_samples`` each, as is usual for these metrics, because the pass is quadratic.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd

from engine.curation.arrays import DEFAULT_CHUNK, check_emb, normalise
from engine.curation.bands import class_centroids
from engine.errors import InvalidConfigError

log = logging.getLogger(__name__)

CHUNK_ELEMENTS = 1 << 24  # distance-matrix chunk: 16 M float32 = 64 MiB


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def nearest(query: np.ndarray, base: np.ndarray, k: int = 1, *,
            exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by L2 distance (faiss ``IndexFlatL2``).

    Args:
        query: (Q, D) float; base: (B, D) float.
        k: neighbours per query.
        exclude_self: ``query`` is ``base``: skip each row's own index.

    Returns:
        distances (Q, k) float32 (L2, ascending), indices (Q, k) int64 into ``base``.
    """
    import faiss

    check_emb(query, "query")
    check_emb(base, "base")
    if query.shape[1] != base.shape[1]:
        raise InvalidConfigError(f"dimensions differ: {query.shape[1]} vs {base.shape[1]}")
    extra = 1 if exclude_self else 0
    if k < 1 or k + extra > base.shape[0]:
        raise InvalidConfigError(f"k must be in [1, {base.shape[0] - extra}], got {k}")
    q, b = _f32(query), _f32(base)
    index = faiss.IndexFlatL2(b.shape[1])
    index.add(b)
    d2, idx = index.search(q, k + extra)
    if exclude_self:
        # drop the query's own row (wherever ties put it), else the last column
        own = idx == np.arange(len(q))[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
        keep = np.ones_like(own)
        keep[np.arange(len(q)), drop] = False
        d2 = d2[keep].reshape(len(q), k)
        idx = idx[keep].reshape(len(q), k)
    return np.sqrt(np.maximum(d2, 0.0)), idx.astype(np.int64)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """(N,) distance of each row of x (N, D) to its k-th nearest other row."""
    return nearest(x, x, k, exclude_self=True)[0][:, -1]


def subsample(n: int, max_samples: int | None, seed: int = 0,
              labels: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of ``min(n, max_samples)`` of ``n`` rows, seeded; stratified by ``labels``
    when given (each class keeps its share; largest remainders get the rounding)."""
    if max_samples is None or n <= max_samples:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, size=max_samples, replace=False)).astype(np.int64)
    keys = rng.random(n)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.lexsort((keys, labels))
    counts = np.bincount(labels)
    exact = counts * (max_samples / n)  # each class's share, then largest remainders
    take = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - take), kind="stable")[:max_samples - int(take.sum())]
    take[extra] += 1
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(n) - first[labels[order]]
    return np.sort(order[pos < take[labels[order]]]).astype(np.int64)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, *, max_samples: int | None = 10_000,
         seed: int = 0) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real``.

    Args:
        real: (N, D) real representations; fake: (M, D) generated ones (memmaps allowed).
        k: the neighbour that sets each ball's radius (5 as in Naeem et al.; 3 in
            Kynkäänniemi et al.).
        max_samples: each set is subsampled (seeded) to this many rows; None = all.

    Returns:
        {"precision", "recall", "density", "coverage"} (density may exceed 1), and
        "n_real", "n_fake" (rows used), "k".
    """
    check_emb(real, "real")
    check_emb(fake, "fake")
    r = _f32(real[subsample(len(real), max_samples, seed)])
    f = _f32(fake[subsample(len(fake), max_samples, seed + 1)])
    if min(len(r), len(f)) <= k:
        raise InvalidConfigError(f"prdc needs more than k={k} samples per set, got "
                                 f"{len(r)} real and {len(f)} generated")
    # 1. ball radii: the k-th nearest neighbour inside each set (faiss)
    rr2 = knn_radii(r, k) ** 2  # (N,) float32, like the distance matrix (no upcast)
    fr2 = knn_radii(f, k) ** 2  # (M,)
    # 2. one pass over the (M, N) squared-distance matrix, in row chunks
    r_sq = np.einsum("ij,ij->i", r, r)
    f_sq = np.einsum("ij,ij->i", f, f)
    in_real = np.zeros(len(f), dtype=bool)  # fake inside some real ball  -> precision
    in_fake = np.zeros(len(r), dtype=bool)  # real inside some fake ball  -> recall
    nearest_fake = np.full(len(r), np.inf, dtype=np.float32)  # per real  -> coverage
    density = 0
    step = max(1, CHUNK_ELEMENTS // len(r))
    for s in range(0, len(f), step):
        fb = f[s:s + step]
        d2 = fb @ r.T  # (b, N), then in place: |f|^2 + |r|^2 - 2 f.r
        d2 *= -2.0
        d2 += f_sq[s:s + step, None]
        d2 += r_sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        inside = d2 <= rr2[None, :]  # (b, N): fake i in the ball of real j
        in_real[s:s + step] = inside.any(axis=1)
        density += int(inside.sum())
        in_fake |= (d2 <= fr2[s:s + step, None]).any(axis=0)
        np.minimum(nearest_fake, d2.min(axis=0), out=nearest_fake)
    return {"precision": float(in_real.mean()), "recall": float(in_fake.mean()),
            "density": float(density / (k * len(f))),
            "coverage": float((nearest_fake <= rr2).mean()),
            "n_real": int(len(r)), "n_fake": int(len(f)), "k": int(k)}


def copy_threshold(real_train: np.ndarray, copy_factor: float = 0.5) -> tuple[float, float]:
    """(threshold, median real-real nearest-neighbour distance) for near-copy flags."""
    if copy_factor <= 0:
        raise InvalidConfigError(f"copy_factor must be > 0, got {copy_factor}")
    ref = float(np.median(nearest(real_train, real_train, 1, exclude_self=True)[0][:, 0]))
    return copy_factor * ref, ref


def memorisation(fake: np.ndarray, real_train: np.ndarray, copy_factor: float = 0.5,
                 ) -> pd.DataFrame:
    """Each generated sample's nearest real training image, and near-copy flags.

    Args:
        fake: (M, D) generated; real_train: (N, D) the real training images (N >= 2).
        copy_factor: flagged when the distance is below ``copy_factor x`` the median distance
            of a real training image to its nearest other real training image.

    Returns:
        DataFrame of M rows: nearest_real (row in ``real_train``), distance, ratio (distance /
        median real-real NN distance), copy (bool).
    """
    thr, ref = copy_threshold(real_train, copy_factor)
    d, idx = nearest(fake, real_train, 1)
    return pd.DataFrame({"nearest_real": idx[:, 0], "distance": d[:, 0],
                         "ratio": d[:, 0] / max(ref, 1e-12), "copy": d[:, 0] < thr})


def near_duplicates(fake: np.ndarray, threshold: float) -> pd.DataFrame:
    """Pairs of generated samples closer than ``threshold`` (L2), each pair once (a < b).

    Only each sample's nearest other sample is looked at, so a cluster of m copies gives at
    least m - 1 pairs, not all m (m - 1) / 2.

    Returns:
        DataFrame with columns a, b (row indices), distance; sorted by distance.
    """
    if len(fake) < 2:
        return pd.DataFrame({"a": [], "b": [], "distance": []})
    d, idx = nearest(fake, fake, 1, exclude_self=True)
    i = np.arange(len(fake))
    close = d[:, 0] < threshold
    a = np.minimum(i, idx[:, 0])[close]
    b = np.maximum(i, idx[:, 0])[close]
    out = pd.DataFrame({"a": a, "b": b, "distance": d[close, 0]}).drop_duplicates(["a", "b"])
    return out.sort_values("distance", kind="stable").reset_index(drop=True)


def _mean_cov(x: np.ndarray, chunk_size: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) in float64, reading (N, D) in chunks."""
    n, d = x.shape
    s = np.zeros(d)
    ss = np.zeros((d, d))
    # shift by the first row for numerical stability of the sum of squares
    shift = np.asarray(x[0], dtype=np.float64)
    for start in range(0, n, chunk_size):
        b = np.asarray(x[start:start + chunk_size], dtype=np.float64) - shift
        s += b.sum(axis=0)
        ss += b.T @ b
    mean_shifted = s / n
    cov = (ss - n * np.outer(mean_shifted, mean_shifted)) / (n - 1)
    return mean_shifted + shift, cov


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets.

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with unbiased covariances.

    Args:
        a: (N, D) float, N >= 2; b: (M, D) float, M >= 2 (memmaps allowed).

    Returns:
        float >= 0 (tiny negative round-off is clipped to 0).
    """
    import scipy.linalg

    a = a if isinstance(a, np.ndarray) else np.asarray(a)  # keeps memmaps as they are
    b = b if isinstance(b, np.ndarray) else np.asarray(b)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    check_emb(a, "a")
    check_emb(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InvalidConfigError(f"dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise InvalidConfigError(
            f"frechet_distance needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    mu1, s1 = _mean_cov(a)
    mu2, s2 = _mean_cov(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # singular product (N < D): regularise, as pytorch-fid does
        offset = np.eye(s1.shape[0]) * 1e-6
        log.warning("frechet_distance: singular covariance product, adding %g to the diagonal",
                    1e-6)
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3 * max(1.0, np.max(np.abs(covmean.real))):
            log.warning("frechet_distance: sqrtm has an imaginary part of %g; using its real part",
                        imag)
        covmean = covmean.real
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def conditioning_fidelity(source_emb: np.ndarray, generated_emb: np.ndarray,
                          *, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Cosine similarity between each source representation and its generated re-encoding.

    Args:
        source_emb: (N, D) the representation each sample was conditioned on (row i = sample i).
        generated_emb: (N, D) the generated image re-encoded with the same encoder.

    Returns:
        (N,) float32 in [-1, 1] (0 where either vector is zero).
    """
    check_emb(source_emb, "source_emb")
    check_emb(generated_emb, "generated_emb")
    if source_emb.shape != generated_emb.shape:
        raise InvalidConfigError(
            f"source and generated embeddings must have the same shape, got {source_emb.shape} "
            f"and {generated_emb.shape}")
    n = source_emb.shape[0]
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk_size):
        s = normalise(np.asarray(source_emb[start:start + chunk_size], dtype=np.float32))
        g = normalise(np.asarray(generated_emb[start:start + chunk_size], dtype=np.float32))
        out[start:start + len(s)] = np.einsum("ij,ij->i", s, g)
    return out


def frechet_per_class(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray,
                      fake_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) Fréchet distance per class; NaN for a class with fewer than 2 samples on a side."""
    out = np.full(num_classes, np.nan)
    rl, fl = np.asarray(real_labels), np.asarray(fake_labels)
    for c in range(num_classes):  # one small (D, D) problem per class
        ri, fi = np.flatnonzero(rl == c), np.flatnonzero(fl == c)
        if len(ri) >= 2 and len(fi) >= 2:
            out[c] = frechet_distance(np.asarray(real[ri]), np.asarray(fake[fi]))
    return out


def _pairwise_mean(x: np.ndarray, metric: str) -> float:
    """Mean distance over all pairs of rows of x (n, D); NaN when n < 2."""
    n = len(x)
    if n < 2:
        return float("nan")
    if metric == "cosine":
        u = normalise(x.astype(np.float64))
        sims = u @ u.T
        return float((n * n - sims.sum()) / (n * (n - 1)))  # mean of 1 - cos over i != j
    sq = np.einsum("ij,ij->i", x, x)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))
    return float(d.sum() / (n * (n - 1)))


def class_dashboard(fake: np.ndarray, fake_labels: np.ndarray, mask: np.ndarray,
                    real: np.ndarray, real_labels: np.ndarray, class_names: Sequence[str], *,
                    fidelity: np.ndarray | None = None, metric: str = "cosine",
                    per_class_pairs: int = 256, seed: int = 0) -> pd.DataFrame:
    """One row per class: where the model is weak shows at a glance.

    Args:
        fake: (M, D) generated representations; fake_labels: (M,); mask: (M,) bool kept.
        real: (N, D) real training representations; real_labels: (N,).
        fidelity: (M,) conditioning fidelity per sample (cosine), optional.
        metric: "cosine" or "euclidean", for diversity and drift.
        per_class_pairs: diversity uses at most this many samples per class (seeded).

    Returns:
        DataFrame: class, generated, kept, acceptance (kept / generated), diversity (mean
        pairwise distance of the class's generated samples), real_diversity (the same for the
        real images), fidelity (mean conditioning cosine), drift (distance between the
        generated and the real centroid).
    """
    c = len(class_names)
    fl = np.asarray(fake_labels, dtype=np.int64)
    rl = np.asarray(real_labels, dtype=np.int64)
    mask = np.asarray(mask, dtype=bool)
    total = np.bincount(fl, minlength=c)
    kept = np.bincount(fl[mask], minlength=c)
    fc = class_centroids(fake, fl, c, metric).astype(np.float64)
    rc = class_centroids(real, rl, c, metric).astype(np.float64)
    if metric == "cosine":
        drift = 1.0 - np.einsum("ij,ij->i", fc, rc)
    else:
        drift = np.linalg.norm(fc - rc, axis=1)
    rng = np.random.default_rng(seed)
    div, rdiv = np.full(c, np.nan), np.full(c, np.nan)
    for k in range(c):
        fi, ri = np.flatnonzero(fl == k), np.flatnonzero(rl == k)
        if len(fi) > per_class_pairs:
            fi = np.sort(rng.choice(fi, per_class_pairs, replace=False))
        if len(ri) > per_class_pairs:
            ri = np.sort(rng.choice(ri, per_class_pairs, replace=False))
        div[k] = _pairwise_mean(np.asarray(fake[fi], dtype=np.float64), metric)
        rdiv[k] = _pairwise_mean(np.asarray(real[ri], dtype=np.float64), metric)
    fid = np.full(c, np.nan)
    if fidelity is not None:
        sums = np.bincount(fl, weights=np.asarray(fidelity, dtype=np.float64), minlength=c)
        with np.errstate(invalid="ignore", divide="ignore"):
            fid = sums / total
    with np.errstate(invalid="ignore", divide="ignore"):
        acceptance = kept / total
    return pd.DataFrame({"class": [str(n) for n in class_names], "generated": total,
                         "kept": kept, "acceptance": acceptance, "diversity": div,
                         "real_diversity": rdiv, "fidelity": fid, "drift": drift})


def evaluate(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray,
             fake_labels: np.ndarray, mask: np.ndarray, class_names: Sequence[str], *,
             fidelity: np.ndarray | None = None, metric: str = "cosine", k: int = 5,
             max_samples: int | None = 10_000, copy_factor: float = 0.5,
             seed: int = 0) -> dict[str, Any]:
    """Every metric of the kept samples (``mask``) against the real training images.

    Returns:
        {"overall": {precision, recall, density, coverage, frechet, fidelity, copies,
        duplicate_pairs, kept, ...}, "per_class": DataFrame (``class_dashboard`` + frechet +
        copies), "copies": DataFrame of flagged samples (sample = row in ``fake``),
        "duplicates": DataFrame of pairs (a, b = rows in ``fake``), "copy_threshold": float}.
    """
    mask = np.asarray(mask, dtype=bool)
    kept_idx = np.flatnonzero(mask)
    if len(kept_idx) <= k:
        raise InvalidConfigError(f"metrics need more than k={k} kept samples, got "
                                 f"{len(kept_idx)}")
    fl = np.asarray(fake_labels, dtype=np.int64)
    kept = _f32(fake[kept_idx])  # (K, D)
    real32 = _f32(real)
    c = len(class_names)
    overall: dict[str, Any] = prdc(real32, kept, k, max_samples=max_samples, seed=seed)
    overall["frechet"] = frechet_distance(real32, kept)
    thr, ref = copy_threshold(real32, copy_factor)
    mem = memorisation(kept, real32, copy_factor)
    mem.insert(0, "sample", kept_idx)
    dup = near_duplicates(kept, thr)
    dup["a"], dup["b"] = kept_idx[dup["a"].to_numpy(np.int64)], kept_idx[dup["b"].to_numpy(
        np.int64)]
    table = class_dashboard(fake, fl, mask, real32, real_labels, class_names,
                            fidelity=fidelity, metric=metric, seed=seed)
    table["frechet"] = frechet_per_class(real32, real_labels, kept, fl[kept_idx], c)
    table["copies"] = np.bincount(fl[kept_idx][mem["copy"].to_numpy()], minlength=c)
    if fidelity is not None:
        overall["fidelity"] = float(np.mean(np.asarray(fidelity)[kept_idx]))
    overall.update(copies=int(mem["copy"].sum()), duplicate_pairs=int(len(dup)),
                   kept=int(len(kept_idx)), generated=int(len(mask)),
                   copy_threshold=float(thr), real_nn_median=float(ref))
    return {"overall": overall, "per_class": table, "copies": mem[mem["copy"]].reset_index(
        drop=True), "duplicates": dup, "copy_threshold": float(thr)}
