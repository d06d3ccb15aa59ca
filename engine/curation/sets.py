"""Set operations on selections: union, intersection and difference of sample indices."""

from __future__ import annotations

import numpy as np

from engine.errors import InvalidConfigError

COMBINE_OPS = ("union", "intersection", "difference")


def combine(a_idx: np.ndarray, b_idx: np.ndarray, op: str) -> np.ndarray:
    """Set operation on two selections of sample indices.

    Args:
        a_idx, b_idx: 1-D int arrays (any order, duplicates allowed).
        op: "union" (a or b), "intersection" (a and b) or "difference" (a and not b).

    Returns:
        sorted unique int64 array.
    """
    a = np.asarray(a_idx, dtype=np.int64).ravel()
    b = np.asarray(b_idx, dtype=np.int64).ravel()
    if op == "union":
        return np.union1d(a, b).astype(np.int64)
    if op == "intersection":
        return np.intersect1d(a, b).astype(np.int64)
    if op == "difference":
        return np.setdiff1d(a, b).astype(np.int64)
    raise InvalidConfigError(f"op must be one of {COMBINE_OPS}, got {op!r}")
