"""engine.encoders: registry, the class one-hot, the PCA encoder (pinned numerically)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.config import EncodeConfig
from engine.data import resize_pixels
from engine.encoders import (
    ENCODERS,
    MANIFEST,
    ClassOneHotEncoder,
    PCAEncoder,
    available_encoders,
    create_encoder,
    load_encoder,
)
from engine.errors import Cancelled, InvalidConfigError, NotFoundError
from engine.progress import CancelToken


def test_registry():
    names = {e["name"]: e for e in available_encoders()}
    assert {"class", "pca"} <= set(names)
    assert names["pca"]["offline"] and names["class"]["offline"]
    assert not names["class"]["can_encode_images"] and names["pca"]["needs_fit"]
    assert isinstance(create_encoder(EncodeConfig(encoder="pca"), 3), PCAEncoder)
    assert ENCODERS["class"] is ClassOneHotEncoder
    with pytest.raises(InvalidConfigError, match="unknown encoder 'nope'.*class.*pca"):
        create_encoder(EncodeConfig(encoder="nope"), 3)


def test_load_encoder_errors(tmp_path):
    with pytest.raises(NotFoundError, match="encoder.json"):
        load_encoder(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"name": "nope"}))
    with pytest.raises(InvalidConfigError, match="unknown encoder"):
        load_encoder(tmp_path)


# ---------------------------------------------------------------------------- class one-hot


def test_class_onehot_exact(tmp_path):
    enc = create_encoder(EncodeConfig(encoder="class", batch_size=2), 4)
    assert enc.dim == 4 and enc.needs_labels and not enc.can_encode_images
    pixels = np.zeros((5, 2, 2, 3), dtype=np.uint8)
    out = enc.encode(pixels, np.array([3, 0, 1, 1, 2]))
    expected = np.array([[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0],
                         [0, 0, 1, 0]], dtype=np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(enc.encode(None, np.array([2])), [[0, 0, 1, 0]])

    with pytest.raises(InvalidConfigError, match="cannot re-encode images"):
        enc.encode(pixels)
    with pytest.raises(InvalidConfigError, match="label 4 is outside"):
        enc.encode(None, np.array([0, 4]))

    enc.save(tmp_path / "cls")
    again = load_encoder(tmp_path / "cls")
    assert isinstance(again, ClassOneHotEncoder) and again.dim == 4
    np.testing.assert_array_equal(again.encode(None, np.array([3, 0, 1, 1, 2])), expected)


# ---------------------------------------------------------------------------- pca


def _halves(left: list[int], right: list[int], size: int = 4) -> np.ndarray:
    """Images whose left half (columns < size/2) is ``left[i]`` and right half ``right[i]``."""
    px = np.zeros((len(left), size, size, 3), dtype=np.uint8)
    for i, (a, b) in enumerate(zip(left, right)):
        px[i, :, : size // 2] = a
        px[i, :, size // 2:] = b
    return px


def test_pca_pinned_on_tiny_array():
    # left half a in {0, 255}, right half b in {0, 100}, uncorrelated: the two principal
    # components are the (normalised) left and right masks, variances 24/3 and 24 x^2/3.
    train = _halves([0, 255, 0, 255], [0, 0, 100, 100])
    enc = create_encoder(EncodeConfig(encoder="pca", dim=2, image_size=4), 2)
    enc.fit(train, np.zeros(4, dtype=np.int64))  # N=4 <= D=48: the SVD path
    x = 100 / 255
    left = np.zeros((4, 4, 3))
    left[:, :2] = 1
    left = left.reshape(-1)
    np.testing.assert_allclose(enc.mean, 0.5 * left + x / 2 * (1 - left), atol=1e-12)
    np.testing.assert_allclose(enc.components[0], left / np.sqrt(24), atol=1e-12)
    np.testing.assert_allclose(enc.components[1], (1 - left) / np.sqrt(24), atol=1e-12)
    np.testing.assert_allclose(enc.scales ** 2, [8.0, 8.0 * x * x], rtol=1e-12)
    assert enc.explained_variance_ratio == pytest.approx(1.0)

    out = enc.encode(train)
    np.testing.assert_allclose(out, [[-1, -1], [1, -1], [-1, 1], [1, 1]], atol=1e-6)
    # an unseen image: left 128 -> z1 = (128/255 - 1/2) / sqrt(1/3); right 0 -> z2 = -sqrt(3)/2
    z = np.array([(128 / 255 - 0.5) * np.sqrt(3), -np.sqrt(3) / 2])
    expected = np.sqrt(2) * z / np.linalg.norm(z)
    got = enc.encode(_halves([128], [0]))[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got, [0.0055459, -1.4142027], atol=1e-6)

    # the covariance path (N > D) finds the same components
    many = create_encoder(EncodeConfig(encoder="pca", dim=2, image_size=4), 2)
    many.fit(np.tile(train, (13, 1, 1, 1)), np.zeros(52, dtype=np.int64))
    np.testing.assert_allclose(many.components, enc.components, atol=1e-9)
    np.testing.assert_allclose(many.encode(train), out, atol=1e-6)


def _random_pixels(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, size, size, 3))
    mix = rng.random((n, 4))
    px = np.einsum("nk,khwc->nhwc", mix / mix.sum(1, keepdims=True), base)
    return (px + rng.normal(0, 8, px.shape)).clip(0, 255).astype(np.uint8)


def test_pca_save_load_identical_and_batch_invariant(tmp_path):
    px = _random_pixels(60, 4, seed=1)
    enc = create_encoder(EncodeConfig(encoder="pca", dim=5, image_size=4, batch_size=7), 3)
    enc.fit(px[:50], np.zeros(50, dtype=np.int64))
    events = []
    out = enc.encode(px, progress=events.append)
    assert out.shape == (60, 5) and out.dtype == np.float32
    assert events[-1].stage == "encode" and events[-1].step == events[-1].total == 60
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.sqrt(5), rtol=1e-5)

    enc.save(tmp_path / "pca")
    assert (tmp_path / "pca" / "state.safetensors").is_file()
    manifest = json.loads((tmp_path / "pca" / MANIFEST).read_text())
    assert manifest["name"] == "pca" and manifest["dim"] == 5 and manifest["offline"]
    again = load_encoder(tmp_path / "pca")
    assert isinstance(again, PCAEncoder) and again.dim == 5
    np.testing.assert_array_equal(again.encode(px), out)
    whole = PCAEncoder.load(tmp_path / "pca")
    whole.config = whole.config.replace(batch_size=256)
    np.testing.assert_allclose(whole.encode(px), out, rtol=0, atol=1e-6)


def test_pca_resizes_other_sizes_itself():
    px8 = _random_pixels(40, 8, seed=2)
    enc = create_encoder(EncodeConfig(encoder="pca", dim=3, image_size=4), 1)
    enc.fit(px8, np.zeros(40, dtype=np.int64))
    px4 = resize_pixels(px8, 4)
    np.testing.assert_array_equal(enc.encode(px8), enc.encode(px4))


def test_pca_errors():
    enc = create_encoder(EncodeConfig(encoder="pca", dim=5, image_size=4), 2)
    px = _random_pixels(5, 4, seed=3)
    with pytest.raises(InvalidConfigError, match="fitted"):
        enc.encode(px)
    with pytest.raises(InvalidConfigError, match="dim <= 4"):
        enc.fit(px, np.zeros(5, dtype=np.int64))
    flat = np.full((10, 4, 4, 3), 9, dtype=np.uint8)
    flat[5:] = 200  # only one direction of variance
    with pytest.raises(InvalidConfigError, match="only 1 direction"):
        create_encoder(EncodeConfig(encoder="pca", dim=2, image_size=4), 2).fit(
            flat, np.zeros(10, dtype=np.int64))
    with pytest.raises(InvalidConfigError, match="uint8"):
        enc.fit(px.astype(np.float32), np.zeros(5, dtype=np.int64))
    fitted = create_encoder(EncodeConfig(encoder="pca", dim=2, image_size=4, batch_size=2), 2)
    fitted.fit(px, np.zeros(5, dtype=np.int64))
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        fitted.encode(px, cancel=token)


def test_pca_separates_digit_classes():
    """Cosine to class centroids (what curation measures) recognises held-out digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * 255 / 16).astype(np.uint8)
    px = np.repeat(gray[..., None], 3, axis=-1)  # (1797, 8, 8, 3)
    y = digits.target
    enc = create_encoder(EncodeConfig(encoder="pca", dim=32, image_size=16), 10)
    enc.fit(px[:1400], y[:1400])
    emb = enc.encode(px)
    centroids = np.stack([emb[:1400][y[:1400] == c].mean(0) for c in range(10)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    accuracy = ((emb[1400:] @ centroids.T).argmax(1) == y[1400:]).mean()
    assert accuracy > 0.85
