"""Encoders: images (or labels) -> representations that condition the RCDM.

``ENCODERS`` maps names to classes; importing this package registers the built-in ones:
``class`` (one-hot labels, the class-conditioned baseline), ``pca`` (offline PCA of the
pixels), ``simclr`` (an offline small CNN trained self-supervised on the dataset) and the
pretrained ``dinov2``, ``dinov3`` (transformers) and ``clip`` (open_clip), whose weights load
lazily from a hub id or a local folder.
"""

from engine.encoders.base import MANIFEST, Encoder
from engine.encoders.class_onehot import ClassOneHotEncoder  # noqa: E402  (registers "class")
from engine.encoders.clip import ClipEncoder  # noqa: E402  (registers "clip")
from engine.encoders.dino import Dinov2Encoder, Dinov3Encoder  # noqa: E402
from engine.encoders.learned import SimCLREncoder  # noqa: E402  (registers "simclr")
from engine.encoders.pca import PCAEncoder  # noqa: E402  (registers "pca")
from engine.encoders.pretrained import Preprocess, PretrainedEncoder  # noqa: E402
from engine.encoders.registry import (
    ENCODERS,
    available_encoders,
    create_encoder,
    encoder_class,
    load_encoder,
    register_encoder,
)

__all__ = [
    "MANIFEST", "Encoder", "ENCODERS", "available_encoders", "create_encoder",
    "encoder_class", "load_encoder", "register_encoder", "ClassOneHotEncoder", "PCAEncoder",
    "SimCLREncoder", "Preprocess", "PretrainedEncoder", "Dinov2Encoder", "Dinov3Encoder",
    "ClipEncoder",
]
