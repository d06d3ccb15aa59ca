"""The encoder registry: name -> Encoder class.

Encoder modules register themselves with ``@register_encoder``; ``engine.encoders`` imports
the built-in ones, so importing the package fills ``ENCODERS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from engine.config import EncodeConfig
from engine.encoders.base import Encoder, read_manifest
from engine.errors import InvalidConfigError

ENCODERS: dict[str, type[Encoder]] = {}

E = TypeVar("E", bound=type[Encoder])


def register_encoder(cls: E) -> E:
    """Class decorator: add an Encoder subclass to ``ENCODERS`` under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise InvalidConfigError(f"{cls.__name__} has no encoder name")
    if name in ENCODERS and ENCODERS[name] is not cls:
        raise InvalidConfigError(
            f"encoder name {name!r} is taken by {ENCODERS[name].__name__}")
    ENCODERS[name] = cls
    return cls


def encoder_class(name: str) -> type[Encoder]:
    """The registered class called ``name``, or InvalidConfigError listing the names."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise InvalidConfigError(
            f"unknown encoder {name!r}; available: {', '.join(sorted(ENCODERS))}") from None


def create_encoder(config: EncodeConfig, num_classes: int) -> Encoder:
    """A new (unfitted) encoder of kind ``config.encoder`` for a dataset of ``num_classes``."""
    return encoder_class(config.encoder)(config, num_classes)


def load_encoder(folder: Path) -> Encoder:
    """Load an encoder saved with ``Encoder.save`` (reads ``encoder.json`` for its kind)."""
    return encoder_class(str(read_manifest(folder)["name"])).load(Path(folder))


def available_encoders() -> list[dict[str, Any]]:
    """One dict per registered encoder, sorted by name, for the UI and the CLI."""
    return [
        {
            "name": cls.name,
            "offline": cls.offline,
            "description": cls.description,
            "needs_fit": cls.needs_fit,
            "needs_labels": cls.needs_labels,
            "can_encode_images": cls.can_encode_images,
        }
        for _, cls in sorted(ENCODERS.items())
    ]
