"""The interface every encoder implements (offline ones here, pretrained ones later).

An encoder maps uint8 images (N, H, W, 3) to float32 representations (N, dim). Offline
encoders (PCA, the class one-hot) are fitted on the dataset or need no weights; pretrained
ones (DINOv2, DINOv3, CLIP) load weights and look at images at their own resolution
(``input_size``), resizing what they are given. Fitted state is saved as ``encoder.json``
(name, version, config, dim, encoder-specific fields) plus, when there are arrays,
``state.safetensors``; nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from engine.config import EncodeConfig
from engine.errors import InvalidConfigError, NotFoundError, SchemaVersionError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.project import write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "encoder.json"
STATE = "state.safetensors"
_REPORT_EVERY_S = 0.1


class Encoder(ABC):
    """Base class of the registry's encoders.

    Class attributes:
        name: registry key, also written to ``encoder.json``.
        offline: True when the encoder needs no download (labelled so in UI and exports).
        needs_fit: True when ``fit`` must run on the training images before ``encode``.
        needs_labels: True when ``encode`` reads the labels (the class one-hot).
        can_encode_images: False when it cannot represent an image it is only shown
            (the class one-hot cannot re-encode generated images).
        description: one line for the UI.
        version: format version of the saved state; ``load`` refuses newer ones.

    Instance attributes:
        config: the EncodeConfig it was created with.
        dim: output dimension.
    """

    name: ClassVar[str]
    offline: ClassVar[bool]
    needs_fit: ClassVar[bool]
    needs_labels: ClassVar[bool]
    can_encode_images: ClassVar[bool] = True
    reads_files: ClassVar[bool] = False  # True: the encode stage feeds ``read_images(paths)``
    description: ClassVar[str]
    version: ClassVar[int] = 1

    def __init__(self, config: EncodeConfig, num_classes: int) -> None:
        self.config = config
        self.num_classes = int(num_classes)
        self.dim: int = 0

    # ---------------------------------------------------------------- what callers use

    @property
    def input_size(self) -> int:
        """Side (pixels) at which the encoder wants images; others are resized inside."""
        return self.config.image_size

    @property
    def load_size(self) -> int:
        """Side (pixels) of the images ``read_images`` returns."""
        return self.config.image_size

    def read_images(self, paths: list[Path]) -> np.ndarray:
        """Image files -> uint8 (N, load_size, load_size, 3) (centre square, resized)."""
        from engine.data import load_pixels

        return load_pixels([Path(p) for p in paths], self.load_size)

    @property
    def is_fitted(self) -> bool:
        return True

    def fit(self, pixels: np.ndarray, labels: np.ndarray | None = None,
            progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> None:
        """Fit on the training images. A no-op for encoders that need no fit.

        Args:
            pixels: uint8 (N, H, W, 3).
            labels: int (N,) (unused by self-supervised and unsupervised encoders).
            progress: receives ``ProgressEvent(stage="fit", ...)`` from long fits.
            cancel: polled by long fits.
        """

    def encode(self, pixels: np.ndarray | None, labels: np.ndarray | None = None,
               progress: ProgressFn = no_progress,
               cancel: CancelToken | None = None) -> np.ndarray:
        """Encode images in batches of ``config.batch_size``.

        Args:
            pixels: uint8 (N, H, W, 3); may be None only for encoders that do not read
                pixels (the class one-hot), then N comes from ``labels``.
            labels: int (N,), read only when ``needs_labels``.
            progress: receives ``ProgressEvent(stage="encode", step=images done, total=N)``.
            cancel: polled between batches.

        Returns:
            float32 (N, dim).
        """
        if self.needs_fit and not self.is_fitted:
            raise InvalidConfigError(f"the {self.name} encoder must be fitted before encoding")
        n = self._check_inputs(pixels, labels)
        out = np.empty((n, self.dim), dtype=np.float32)
        batch = self.config.batch_size
        last_report = 0.0
        for start in range(0, n, batch):
            if cancel is not None:
                cancel.raise_if_cancelled()
            stop = min(start + batch, n)
            px = None if pixels is None else np.asarray(pixels[start:stop])
            lb = None if labels is None else np.asarray(labels[start:stop])
            out[start:stop] = self._encode_batch(px, lb)  # (B, dim)
            now = time.monotonic()
            if now - last_report >= _REPORT_EVERY_S or stop == n:
                last_report = now
                progress(ProgressEvent(stage="encode", step=stop, total=n))
        return out

    def _check_inputs(self, pixels: np.ndarray | None, labels: np.ndarray | None) -> int:
        if pixels is None:
            raise InvalidConfigError(f"the {self.name} encoder needs pixels (N, H, W, 3)")
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise InvalidConfigError(f"pixels must have shape (N, H, W, 3), got {pixels.shape}")
        if pixels.dtype != np.uint8:
            raise InvalidConfigError(f"pixels must be uint8, got {pixels.dtype}")
        if labels is not None and len(labels) != len(pixels):
            raise InvalidConfigError(
                f"got {len(pixels)} images but {len(labels)} labels")
        return int(pixels.shape[0])

    @abstractmethod
    def _encode_batch(self, pixels: np.ndarray | None,
                      labels: np.ndarray | None) -> np.ndarray:
        """One batch: uint8 (B, H, W, 3) [and int (B,)] -> float (B, dim)."""

    # ---------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to save in ``state.safetensors`` (none by default)."""
        return {}

    def extra_json(self) -> dict[str, Any]:
        """Encoder-specific fields for ``encoder.json``."""
        return {}

    def save(self, folder: Path) -> None:
        """Write ``encoder.json`` (+ ``state.safetensors`` when there are arrays), atomically."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        if state:
            tmp = folder / f"{STATE}.tmp"
            try:
                save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))
                os.replace(tmp, folder / STATE)
            except BaseException:  # a full disk: no half-written state left behind
                tmp.unlink(missing_ok=True)
                raise
        manifest = {
            "name": self.name,
            "version": self.version,
            "offline": self.offline,
            "dim": self.dim,
            "num_classes": self.num_classes,
            "config": self.config.to_dict(),
            **self.extra_json(),
        }
        write_json_atomic(folder / MANIFEST, manifest)

    @classmethod
    def load(cls, folder: Path) -> "Encoder":
        """Rebuild an encoder saved by ``save``."""
        manifest = read_manifest(folder)
        if manifest.get("name") != cls.name:
            raise InvalidConfigError(
                f"{folder} holds a {manifest.get('name')!r} encoder, not {cls.name!r}")
        if int(manifest.get("version", 1)) > cls.version:
            raise SchemaVersionError(
                f"encoder in {folder} has format version {manifest['version']}, newer than "
                f"this studio's {cls.version}; upgrade rcdm-studio")
        enc = cls(EncodeConfig.from_dict(manifest.get("config")), int(manifest["num_classes"]))
        state: dict[str, np.ndarray] = {}
        if (Path(folder) / STATE).exists():
            from safetensors.numpy import load_file

            state = load_file(str(Path(folder) / STATE))
        enc.load_state(manifest, state)
        return enc

    def load_state(self, manifest: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        """Restore what ``extra_json`` and ``state_dict`` wrote."""
        self.dim = int(manifest["dim"])


def read_manifest(folder: Path) -> dict[str, Any]:
    """``encoder.json`` of a saved encoder."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise NotFoundError(f"no saved encoder in {folder} ({MANIFEST} is missing)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InvalidConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "name" not in data:
        raise InvalidConfigError(f"{path} does not name an encoder")
    return data
