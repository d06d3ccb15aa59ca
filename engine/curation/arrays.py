"""Checks and small array helpers shared by the curation modules.

Every curation function takes plain numpy arrays (memory-mapped ones included): embeddings
(N, D), integer labels (N,) in ``[0, C)``, distances (N,). The checks here raise
``InvalidConfigError`` naming the bad shape, dtype or value.
"""

from __future__ import annotations

import numpy as np

from engine.errors import InvalidConfigError

METRICS = ("cosine", "euclidean")
DEFAULT_CHUNK = 65_536  # rows per read: 65,536 x 768 float32 = 192 MiB peak in float32
EPS = 1e-12


def check_metric(metric: str) -> None:
    """Raise unless ``metric`` is one of ``METRICS``."""
    if metric not in METRICS:
        raise InvalidConfigError(f"metric must be one of {METRICS}, got {metric!r}")


def check_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """(n,) integer labels in ``[0, num_classes)`` -> the same as int64 (no copy if already)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InvalidConfigError(f"labels must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InvalidConfigError(f"labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise InvalidConfigError(
            f"labels must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64, copy=False)


def check_emb(emb: np.ndarray, name: str = "emb") -> None:
    """Raise unless ``emb`` is a 2-D (N, D) array (a memmap counts)."""
    if getattr(emb, "ndim", None) != 2:
        raise InvalidConfigError(f"{name} must be a 2-D (N, D) array, got shape "
                                 f"{getattr(emb, 'shape', None)}")


def check_distances(distances: np.ndarray, labels: np.ndarray, num_classes: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(N,) finite distances and their (N,) labels -> (distances, int64 labels).

    A non-finite distance means its class has no centroid (e.g. no real image of that class).
    """
    distances = np.asarray(distances)
    if distances.ndim != 1:
        raise InvalidConfigError(f"distances must be 1-D, got shape {distances.shape}")
    labels = check_labels(labels, len(distances), num_classes)
    bad = ~np.isfinite(distances)
    if bad.any():
        classes = np.unique(labels[bad])[:10].tolist()
        raise InvalidConfigError(
            f"{int(bad.sum())} distances are not finite (classes {classes}): their class has "
            "no centroid, e.g. no real image of that class")
    return distances, labels


def num_classes_of(labels: np.ndarray) -> int:
    """C = largest label + 1 (0 for no labels)."""
    return int(labels.max()) + 1 if len(labels) else 0


def normalise(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows; zero rows stay zero. x: (n, D) float -> (n, D) same dtype."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, EPS).astype(x.dtype)
