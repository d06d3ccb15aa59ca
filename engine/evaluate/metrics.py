"""Classification metrics on the held-out split: top-k accuracy, per-class accuracy, confusion.

Every accuracy is a percentage in [0, 100]. The functions accept logits ``(N, C)``; the
per-class accuracy and the confusion matrix also accept predicted labels ``(N,)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from engine.errors import InvalidConfigError

log = logging.getLogger(__name__)


def _predictions(logits_or_preds: torch.Tensor) -> torch.Tensor:
    """(N, C) logits -> (N,) argmax labels; (N,) labels pass through."""
    if logits_or_preds.ndim == 2:
        return logits_or_preds.argmax(dim=1)
    if logits_or_preds.ndim == 1:
        return logits_or_preds.long()
    raise InvalidConfigError(
        f"expected logits (N, C) or labels (N,), got shape {tuple(logits_or_preds.shape)}")


def _check_targets(n: int, targets: torch.Tensor) -> None:
    if targets.ndim != 1 or targets.shape[0] != n:
        raise InvalidConfigError(
            f"targets must have shape ({n},), got {tuple(targets.shape)}")


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor,
                  ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent.

    Args:
        logits: (N, C) scores.
        targets: (N,) integer labels in [0, C).
        ks: the k values; each is clipped to C, so with 3 classes "top5" is top-3 (100 %).

    Returns:
        ``{"top1": ..., "top5": ...}`` keyed by the requested k; 0.0 when N == 0.
    """
    if logits.ndim != 2:
        raise InvalidConfigError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    n, c = logits.shape
    _check_targets(n, targets)
    out: dict[str, float] = {}
    if n == 0:
        return {f"top{k}": 0.0 for k in ks}
    k_max = min(max(ks), c)
    top = logits.topk(k_max, dim=1).indices  # (N, k_max), best first
    hit = top == targets.long().view(-1, 1)  # (N, k_max)
    for k in ks:
        k_eff = min(k, c)
        out[f"top{k}"] = 100.0 * hit[:, :k_eff].any(dim=1).float().mean().item()
    return out


def confusion_matrix(logits_or_preds: torch.Tensor, targets: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Counts of (true class, predicted class) pairs.

    Args:
        logits_or_preds: (N, C) logits or (N,) predicted labels.
        targets: (N,) true labels in [0, num_classes).
        num_classes: C.

    Returns:
        (C, C) int64 tensor; row = true class, column = predicted class.
    """
    preds = _predictions(logits_or_preds)
    _check_targets(preds.shape[0], targets)
    t = targets.long().cpu()
    p = preds.cpu()
    bad = (t < 0) | (t >= num_classes) | (p < 0) | (p >= num_classes)
    if bool(bad.any()):
        found = sorted(set(t[bad].tolist() + p[bad].tolist()))[:5]
        raise InvalidConfigError(f"labels must be in [0, {num_classes}), got {found}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def per_class_accuracy(logits_or_preds: torch.Tensor, targets: torch.Tensor,
                       num_classes: int) -> list[float]:
    """Recall of each class in percent: correct / test images of that class.

    Returns:
        C floats; NaN for a class that has no test image.
    """
    cm = confusion_matrix(logits_or_preds, targets, num_classes).double()
    support = cm.sum(dim=1)
    acc = 100.0 * cm.diagonal() / support
    return [float(v) if s > 0 else float("nan") for v, s in zip(acc.tolist(), support.tolist())]
