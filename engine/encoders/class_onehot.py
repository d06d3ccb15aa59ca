"""The "class" encoder: a one-hot of the label, the class-conditioned LDM baseline.

It turns an RCDM into the paper's class-conditioned LDM (the Cond-LDM baseline). It reads
only labels, so it cannot re-encode generated images: curation needs an image encoder.
"""

from __future__ import annotations

import numpy as np

from engine.config import EncodeConfig
from engine.encoders.base import Encoder
from engine.encoders.registry import register_encoder
from engine.errors import InvalidConfigError

CANNOT_ENCODE = "the class encoder cannot re-encode images; pick an image encoder"


@register_encoder
class ClassOneHotEncoder(Encoder):
    """One-hot labels: (N,) int in [0, num_classes) -> float32 (N, num_classes)."""

    name = "class"
    offline = True
    needs_fit = False
    needs_labels = True
    can_encode_images = False
    description = "one-hot class label (the class-conditioned LDM baseline); no image features"

    def __init__(self, config: EncodeConfig, num_classes: int) -> None:
        super().__init__(config, num_classes)
        if self.num_classes < 1:
            raise InvalidConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.dim = self.num_classes

    def _check_inputs(self, pixels: np.ndarray | None, labels: np.ndarray | None) -> int:
        if labels is None:
            raise InvalidConfigError(CANNOT_ENCODE)
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise InvalidConfigError(
                f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if pixels is not None and len(pixels) != len(labels):
            raise InvalidConfigError(f"got {len(pixels)} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
            raise InvalidConfigError(
                f"label {int(bad)} is outside [0, {self.num_classes}) for the class encoder")
        return int(labels.shape[0])

    def _encode_batch(self, pixels: np.ndarray | None,
                      labels: np.ndarray | None) -> np.ndarray:
        if labels is None:
            raise InvalidConfigError(CANNOT_ENCODE)
        return np.eye(self.num_classes, dtype=np.float32)[labels]  # (B, C)
