"""Encoders: images (or labels) -> representations that condition the RCDM.

``ENCODERS`` maps names to classes; importing this package registers the built-in ones:
``class`` (one-hot labels, the class-conditioned baseline) and ``pca`` (offline PCA of the
pixels). Pretrained encoders (DINOv2, DINOv3, CLIP) register the same way.
"""

from engine.encoders.base import MANIFEST, Encoder
from engine.encoders.registry import (
    ENCODERS,
    available_encoders,
    create_encoder,
    encoder_class,
    load_encoder,
    register_encoder,
)
from engine.encoders.class_onehot import ClassOneHotEncoder  # noqa: E402  (registers "class")
from engine.encoders.pca import PCAEncoder  # noqa: E402  (registers "pca")

__all__ = [
    "MANIFEST", "Encoder", "ENCODERS", "available_encoders", "create_encoder",
    "encoder_class", "load_encoder", "register_encoder", "ClassOneHotEncoder", "PCAEncoder",
]
