"""The "pca" encoder: an offline learned representation, PCA of the pixels.

Fitted on the training split at ``config.image_size`` (RGB, values / 255), it keeps
``config.dim`` principal components and outputs, for an image x (D = size * size * 3)::

    z = (x - mean) @ components.T / scales      # whitened: unit variance per component
    e = sqrt(dim) * z / ||z||                   # on the sphere of radius sqrt(dim)

Why whitened: without it the first two or three components dominate every distance; on the
bundled digits (16 px, 32 components, cosine to the class centroid) whitening raises
nearest-centroid accuracy from about 0.90 to 0.95, and class centroids are what curation
measures distances to. Why L2-normalised: generated images carry noise in low-variance
directions, which whitening amplifies; a fixed norm keeps such outliers from feeding huge
vectors to the denoiser, and makes euclidean and cosine curation agree. The sqrt(dim)
radius keeps each coordinate at about unit scale, which suits the denoiser's projection.

Deterministic: the covariance (or, with fewer images than pixels, the centred data) is
decomposed with LAPACK (scipy ``eigh`` of the k largest eigenpairs, or numpy ``svd``) and
each component's sign is fixed so that its largest-magnitude entry is positive. State is
float64 in ``state.safetensors``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.linalg

from engine.config import EncodeConfig
from engine.data import resize_pixels
from engine.encoders.base import Encoder
from engine.encoders.registry import register_encoder
from engine.errors import InvalidConfigError
from engine.progress import CancelToken, ProgressFn, no_progress

log = logging.getLogger(__name__)

_CHUNK = 4096  # images per chunk when accumulating the covariance
_REL_EPS = 1e-9  # variances below this fraction of the largest count as zero


def _sign_fix(components: np.ndarray) -> np.ndarray:
    """Flip each row so that its largest-magnitude entry is positive. (k, D) -> (k, D)."""
    rows = np.arange(components.shape[0])
    signs = np.sign(components[rows, np.abs(components).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


@register_encoder
class PCAEncoder(Encoder):
    """Whitened, L2-normalised PCA of RGB pixels: uint8 (N, H, W, 3) -> float32 (N, dim)."""

    name = "pca"
    offline = True
    needs_fit = True
    needs_labels = False
    description = ("PCA of the pixels fitted on your training images (offline, no download); "
                   "whitened and L2-normalised")

    def __init__(self, config: EncodeConfig, num_classes: int) -> None:
        super().__init__(config, num_classes)
        self.dim = config.dim
        self.mean: np.ndarray | None = None  # (D,) float64
        self.components: np.ndarray | None = None  # (dim, D) float64, orthonormal rows
        self.scales: np.ndarray | None = None  # (dim,) float64, sqrt(explained variance)
        self.explained_variance_ratio: float = 0.0

    @property
    def is_fitted(self) -> bool:
        return self.components is not None

    def _flat(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) -> float64 (B, D) at ``image_size``, values in [0, 1]."""
        px = resize_pixels(np.asarray(pixels), self.config.image_size)
        return px.reshape(px.shape[0], -1).astype(np.float64) / 255.0

    def fit(self, pixels: np.ndarray, labels: np.ndarray | None = None,
            progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> None:
        """Fit the components on training images uint8 (N, H, W, 3); labels are ignored."""
        self._check_inputs(pixels, None)
        n = int(pixels.shape[0])
        size = self.config.image_size
        d = size * size * 3
        k = self.config.dim
        if k > min(d, n - 1):
            raise InvalidConfigError(
                f"pca dim {k} is too large for {n} training images of {size}x{size}x3: "
                f"use dim <= {min(d, n - 1)}")
        # 1. mean, over chunks
        total = np.zeros(d, dtype=np.float64)
        for start in range(0, n, _CHUNK):
            total += self._flat(pixels[start:start + _CHUNK]).sum(axis=0)
        mean = total / n
        # 2. the top-k principal directions: SVD of the centred data when N <= D, else
        #    eigh of the covariance restricted to its k largest eigenpairs
        if n <= d:
            xc = self._flat(pixels) - mean  # (N, D)
            _, s, vt = np.linalg.svd(xc, full_matrices=False)
            variances = s[:k] ** 2 / (n - 1)  # descending
            vectors = vt[:k]  # (k, D)
            total_variance = float((s**2).sum() / (n - 1))
        else:
            cov = np.zeros((d, d), dtype=np.float64)
            for start in range(0, n, _CHUNK):
                xc = self._flat(pixels[start:start + _CHUNK]) - mean  # (B, D)
                cov += xc.T @ xc
            cov /= n - 1
            w, v = scipy.linalg.eigh(cov, subset_by_index=[d - k, d - 1])  # ascending
            variances = w[::-1]
            vectors = v[:, ::-1].T  # (k, D), rows by descending variance
            total_variance = float(np.trace(cov))
        variances = np.clip(variances, 0.0, None)
        top = float(variances[0])
        rank = int((variances > _REL_EPS * top).sum()) if top > 0 else 0
        if rank < k:
            raise InvalidConfigError(
                f"the training images vary along only {rank} direction(s) at "
                f"{size}x{size}; pca dim {k} needs at least {k}: lower dim")
        self.mean = mean
        self.components = _sign_fix(np.ascontiguousarray(vectors))
        self.scales = np.sqrt(variances)
        self.explained_variance_ratio = float(variances.sum() / total_variance)
        self.dim = k
        log.info("pca fitted on %d images at %dpx: %d components explain %.1f%% of the "
                 "variance", n, size, k, 100 * self.explained_variance_ratio)

    def _encode_batch(self, pixels: np.ndarray | None,
                      labels: np.ndarray | None) -> np.ndarray:
        x = self._flat(pixels)  # (B, D)
        z = (x - self.mean) @ self.components.T / self.scales  # (B, dim), whitened
        norm = np.linalg.norm(z, axis=1, keepdims=True)  # (B, 1)
        z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)
        return (z * np.sqrt(self.dim)).astype(np.float32)

    # ---------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, np.ndarray]:
        if not self.is_fitted:
            raise InvalidConfigError("the pca encoder must be fitted before it is saved")
        return {"mean": self.mean, "components": self.components, "scales": self.scales}

    def extra_json(self) -> dict[str, Any]:
        return {
            "explained_variance_ratio": self.explained_variance_ratio,
            "output": "whitened PCA, L2-normalised, times sqrt(dim)",
        }

    def load_state(self, manifest: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        super().load_state(manifest, state)
        missing = {"mean", "components", "scales"} - set(state)
        if missing:
            raise InvalidConfigError(f"pca state is missing {sorted(missing)}")
        size = self.config.image_size
        d = size * size * 3
        if state["components"].shape != (self.dim, d) or state["mean"].shape != (d,) \
                or state["scales"].shape != (self.dim,):
            raise InvalidConfigError(
                f"pca state shapes {state['components'].shape} do not match dim {self.dim} "
                f"at image_size {size}")
        self.mean = state["mean"].astype(np.float64)
        self.components = state["components"].astype(np.float64)
        self.scales = state["scales"].astype(np.float64)
        self.explained_variance_ratio = float(manifest.get("explained_variance_ratio", 0.0))
