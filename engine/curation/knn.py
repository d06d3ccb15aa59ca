"""k nearest neighbours in a representation space: a faiss index, built once and kept on disk.

"More like this" asks, for one image, which real and which generated images lie closest to it
in the space of an encoder; "find copies" asks it of a training image among the generated
ones; the per-sample scores ask it of every sample at once. All three search an index of one
encoding's vectors:

- up to ``EXACT_MAX`` vectors: ``IndexFlat`` (exact: every vector is compared);
- above: ``IndexIVFFlat`` (the vectors cut into ``nlist`` k-means cells, seeded; a query
  looks into its ``nprobe`` nearest cells only), so a query reads a few percent of a
  520,000 x 768 array instead of all 1.6 GB. It is approximate: recall against the exact
  answer depends on the data (``benchmarks/neighbours.py`` measures it); with
  ``nprobe == nlist`` it is exact again.

Distances: ``"cosine"`` is ``1 - cos`` (vectors L2-normalised, inner-product index),
``"euclidean"`` is the L2 distance (not squared). ``brute_force`` is the NumPy baseline the
index is checked against. Arrays and paths in, arrays out: nothing here opens a project.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from engine.curation.arrays import DEFAULT_CHUNK, check_emb, check_metric, normalise
from engine.errors import InvalidConfigError

log = logging.getLogger(__name__)

EXACT_MAX = 100_000  # vectors up to which the index is exact (IndexFlat)


def as_vectors(x: np.ndarray, metric: str) -> np.ndarray:
    """(N, D) float -> (N, D) contiguous float32, L2-normalised for ``"cosine"``."""
    check_emb(x, "vectors")
    check_metric(metric)
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return np.ascontiguousarray(normalise(x)) if metric == "cosine" else x


def default_nlist(n: int) -> int:
    """Cells of an IVF index over ``n`` vectors: about sqrt(n), at least 16."""
    return int(max(16, min(65_536, round(np.sqrt(n)))))


def default_nprobe(nlist: int) -> int:
    """Cells a query looks into: 1/16 of them, at least 8 (never more than there are)."""
    return int(min(nlist, max(8, nlist // 16)))


def build_index(vectors: np.ndarray, metric: str = "cosine", *, rows: np.ndarray | None = None,
                exact_max: int = EXACT_MAX, nlist: int | None = None,
                nprobe: int | None = None, seed: int = 0, chunk: int = DEFAULT_CHUNK):
    """An index of ``vectors`` (or of ``vectors[rows]``) for ``search``.

    Args:
        vectors: (N, D) float (a memmap is read ``chunk`` rows at a time).
        rows: index these rows only (id i is then ``rows[i]``'s vector); default all.
        metric: "cosine" or "euclidean".
        exact_max: at most this many vectors: an exact ``IndexFlat``; more: ``IndexIVFFlat``.
        nlist, nprobe: IVF cells and cells searched per query (default ``default_nlist`` /
            ``default_nprobe``); the k-means that makes the cells is trained on a seeded
            subsample of ``64 x nlist`` vectors.

    Returns:
        a faiss index holding N vectors (row i of ``vectors``, or ``rows[i]``, is id i).
    """
    import faiss

    check_emb(vectors, "vectors")
    check_metric(metric)
    d = vectors.shape[1]
    rows = None if rows is None else np.asarray(rows, dtype=np.int64)
    n = vectors.shape[0] if rows is None else len(rows)

    def take(i: np.ndarray | slice) -> np.ndarray:  # (m, D) of the indexed set's rows i
        return vectors[i] if rows is None else vectors[rows[i]]

    if n == 0:
        raise InvalidConfigError("cannot index an empty set of vectors")
    ip = metric == "cosine"
    kind = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
    if n <= exact_max:
        index = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
    else:
        nlist = nlist or default_nlist(n)
        if not 1 <= nlist <= n:
            raise InvalidConfigError(f"nlist must be in [1, {n}], got {nlist}")
        quantizer = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, kind)
        index.cp.seed = seed
        index.cp.niter = 10
        index.cp.max_points_per_centroid = 64
        train = np.sort(np.random.default_rng(seed).choice(n, min(n, 64 * nlist),
                                                           replace=False))
        index.train(as_vectors(take(train), metric))
        index.nprobe = nprobe or default_nprobe(nlist)
    for start in range(0, n, chunk):  # 1. add, a chunk at a time (memmaps stay on disk)
        index.add(as_vectors(take(slice(start, start + chunk)), metric))
    return index


def search(index, queries: np.ndarray, k: int, metric: str = "cosine", *,
           nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest indexed vectors of each query.

    Args:
        index: from ``build_index`` / ``load_index`` (built with the same ``metric``).
        queries: (Q, D) float.
        nprobe: IVF only: cells to look into (default: the index's own).

    Returns:
        distances (Q, k) float32 ascending, ids (Q, k) int64 (rows of the indexed vectors);
        where fewer than k were found (an IVF query near few vectors), id -1, distance inf.
    """
    check_emb(queries, "queries")
    if queries.shape[1] != index.d:
        raise InvalidConfigError(f"queries have {queries.shape[1]} dimensions, the index "
                                 f"{index.d}: they come from different encodings")
    if not 1 <= k <= index.ntotal:
        raise InvalidConfigError(f"k must be in [1, {index.ntotal}], got {k}")
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(min(max(1, nprobe), index.nlist))
    scores, ids = index.search(as_vectors(queries, metric), k)
    dist = (1.0 - scores) if metric == "cosine" else np.sqrt(np.maximum(scores, 0.0))
    dist = np.where(ids < 0, np.inf, dist).astype(np.float32)
    return dist, ids.astype(np.int64)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "cosine", *,
                chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours in NumPy (the baseline ``search`` is checked against).

    Every query is compared with every vector, ``chunk`` vectors at a time (memory stays
    ``O(Q x chunk)``). Same returns as ``search``.
    """
    check_emb(vectors, "vectors")
    check_emb(queries, "queries")
    n = vectors.shape[0]
    if not 1 <= k <= n:
        raise InvalidConfigError(f"k must be in [1, {n}], got {k}")
    q = as_vectors(queries, metric)
    best_d = np.full((len(q), 0), np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, n, chunk):
        x = as_vectors(vectors[start:start + chunk], metric)  # (c, D)
        if metric == "cosine":
            d = 1.0 - q @ x.T  # (Q, c)
        else:  # |q|^2 - 2 q.x + |x|^2 in float64: no cancellation near 0
            q64, x64 = q.astype(np.float64), x.astype(np.float64)
            d = np.sqrt(np.maximum((q64 * q64).sum(1)[:, None] - 2.0 * (q64 @ x64.T)
                                   + (x64 * x64).sum(1)[None, :], 0.0))
        take = min(k, d.shape[1])
        part = np.argpartition(d, take - 1, axis=1)[:, :take]  # (Q, take) unordered
        cand_d = np.concatenate([best_d, np.take_along_axis(d, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(cand_d, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(cand_d, order, 1).astype(np.float32)
        best_i = np.take_along_axis(cand_i, order, 1)
    return best_d, best_i


def save_index(index, path: str | os.PathLike) -> Path:
    """Write ``index`` to ``path`` atomically (a temp file, then a rename)."""
    import faiss

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_index(path: str | os.PathLike):
    """An index written by ``save_index``.

    Raises:
        InvalidConfigError: the file is not a faiss index.
    """
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise InvalidConfigError(f"{path} is not a readable faiss index: "
                                 f"{str(exc).splitlines()[0]}") from exc
