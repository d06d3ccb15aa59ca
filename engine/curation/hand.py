"""Hand overrides: samples kept or dropped by hand, on top of whatever a band keeps.

A hand decision names some samples of a generation (their ``idx``) and says ``"keep"``,
``"drop"`` or ``"clear"`` (forget the earlier decision: the band decides again). Decisions are
replayed in order, so a sample's state is the latest decision naming it. The kept set is then

    kept = (kept by the band  |  kept by hand)  &  ~dropped by hand

so a band change moves the band's part only: what a person kept or dropped stays so.
Arrays in, arrays out; ``engine.stages.curate_stage`` reads the decisions from the project.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from engine.errors import InvalidConfigError

DECISIONS = ("keep", "drop", "clear")
KEPT, NONE, DROPPED = 1, 0, -1  # values of a hand state


def check_members(members: np.ndarray, n: int) -> np.ndarray:
    """Sample idx -> sorted unique int64 in ``[0, n)``.

    Raises:
        InvalidConfigError: empty, not integers, or outside ``[0, n)`` (the bad value named).
    """
    members = np.asarray(members)
    if members.size == 0:
        raise InvalidConfigError("no sample named: give at least one sample id or index")
    if not np.issubdtype(members.dtype, np.integer):
        raise InvalidConfigError(f"sample indices must be integers, got dtype {members.dtype}")
    bad = members[(members < 0) | (members >= n)]
    if bad.size:
        raise InvalidConfigError(f"sample index {int(bad[0])} is outside 0..{n - 1}")
    return np.unique(members.astype(np.int64))


def hand_state(n: int, decisions: Iterable[tuple[str, np.ndarray]],
               start: np.ndarray | None = None) -> np.ndarray:
    """The state of every sample after replaying ``decisions`` in order.

    Args:
        n: samples in the generation.
        decisions: ``(decision, idx)`` pairs, oldest first; ``decision`` in ``DECISIONS``,
            ``idx`` int sample indices in ``[0, n)``.
        start: (n,) int8 state to replay them on (default: no decision yet); not modified.

    Returns:
        (n,) int8: ``KEPT`` (1), ``DROPPED`` (-1) or ``NONE`` (0, the band decides).
    """
    state = np.zeros(n, dtype=np.int8) if start is None else np.array(start, dtype=np.int8)
    if state.shape != (n,):
        raise InvalidConfigError(f"start state must have shape ({n},), got {state.shape}")
    value = {"keep": KEPT, "drop": DROPPED, "clear": NONE}
    for decision, idx in decisions:
        if decision not in value:
            raise InvalidConfigError(f"decision must be one of {DECISIONS}, got {decision!r}")
        state[check_members(idx, n) if len(idx) else np.zeros(0, np.int64)] = value[decision]
    return state


def apply_hand(band_mask: np.ndarray, state: np.ndarray) -> np.ndarray:
    """(N,) bool kept: the band's mask with the hand decisions on top."""
    band_mask = np.asarray(band_mask, dtype=bool)
    if band_mask.shape != state.shape:
        raise InvalidConfigError(f"band mask has shape {band_mask.shape}, hand state "
                                 f"{state.shape}: they must describe the same samples")
    return (band_mask | (state == KEPT)) & (state != DROPPED)


def hand_counts(labels: np.ndarray, band_mask: np.ndarray, state: np.ndarray,
                class_names: list[str]) -> pd.DataFrame:
    """Per class: what the band keeps, what the hand adds and removes, what is kept.

    Returns:
        DataFrame with one row per class and a last row ``all``: ``class``, ``generated``,
        ``kept by band``, ``+ kept by hand`` (kept by hand, not by the band), ``- dropped by
        hand`` (kept by the band, dropped by hand), ``kept``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    band_mask = np.asarray(band_mask, dtype=bool)
    if band_mask.shape != state.shape:
        raise InvalidConfigError(f"band mask has shape {band_mask.shape}, hand state "
                                 f"{state.shape}: they must describe the same samples")
    # Only the samples decided by hand can differ from the band (a few among 500,000): the
    # hand's columns are counted over those, and kept = kept by band + added - removed.
    decided = np.flatnonzero(state)
    by_band = band_mask[decided]
    kept_decided = apply_hand(by_band, state[decided])
    c = len(class_names)
    bins = max(c, int(labels.max()) + 1) if len(labels) else c
    cols = {
        "generated": np.bincount(labels, minlength=bins),
        "kept by band": np.bincount(labels[band_mask], minlength=bins),
        "+ kept by hand": np.bincount(labels[decided[kept_decided & ~by_band]], minlength=bins),
        "- dropped by hand": np.bincount(labels[decided[by_band & ~kept_decided]],
                                         minlength=bins),
    }
    cols["kept"] = cols["kept by band"] + cols["+ kept by hand"] - cols["- dropped by hand"]
    out = pd.DataFrame({"class": list(class_names), **{k: v[:c] for k, v in cols.items()}})
    total = {"class": "all", **{k: int(v.sum()) for k, v in cols.items()}}
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)
