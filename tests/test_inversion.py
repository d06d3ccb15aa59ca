"""Edit-friendly DDPM inversion: inverting an image and regenerating it under the same
representation gives it back; under another representation the source's layout stays closer
than in a fresh sample. A tiny pixel-space RCDM built from a config (random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import GenerateConfig, TrainConfig
from engine.errors import InvalidConfigError
from engine.rcdm import inversion
from engine.rcdm.model import build_rcdm
from engine.rcdm.sample import sample_images

pytestmark = pytest.mark.usefixtures("one_thread")
D = 6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = TrainConfig(image_size=8, block_channels=(8, 16), cross_attention_dim=16,
                         attention_head_dim=8, cond_tokens=1)
    m = build_rcdm(config, D).eval()
    with torch.no_grad():
        m.null_cond.normal_()
    return m


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 8, 8, 3), np.uint8)
    for i in range(n):  # a bright square somewhere on a dark, noisy background
        img[i] = rng.integers(0, 60, (8, 8, 3))
        y, x = rng.integers(0, 5, 2)
        img[i, y:y + 3, x:x + 3] = 230
    return img


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_inverting_and_regenerating_under_the_same_representation_gives_the_image_back(
        model, guidance):
    pixels = _images(3)
    cond = np.random.default_rng(1).normal(size=(3, D)).astype(np.float32)
    x0 = inversion.to_model_space(model, pixels)
    inv = inversion.invert(model, x0, cond, seeds=np.arange(3), steps=12, guidance=guidance)
    assert inv.noise.shape == (12, 3, 3, 8, 8) and inv.timesteps[0] == 999
    back = inversion.regenerate(model, inv, cond, guidance=guidance)
    assert back.shape == pixels.shape and back.dtype == np.uint8
    # exact up to float rounding: at most one grey level anywhere
    assert np.abs(back.astype(int) - pixels.astype(int)).max() <= 1
    # the forward draws are seeded: the same seeds give the same inversion
    again = inversion.invert(model, x0, cond, seeds=np.arange(3), steps=12, guidance=guidance)
    assert torch.equal(again.x_start, inv.x_start) and torch.equal(again.noise, inv.noise)


def test_an_edited_representation_keeps_the_layout_closer_than_a_fresh_sample(model):
    pixels = _images(4, seed=3)
    rng = np.random.default_rng(2)
    cond = rng.normal(size=(4, D)).astype(np.float32)
    edited = cond + 1.5 * rng.normal(size=(1, D)).astype(np.float32)
    inv = inversion.invert(model, inversion.to_model_space(model, pixels), cond,
                           seeds=np.arange(4), steps=12)
    moved = inversion.regenerate(model, inv, edited).astype(float)
    fresh = sample_images(model, edited, np.arange(4), GenerateConfig(
        sampler="ddpm", steps=12, batch_size=4)).astype(float)
    src = pixels.astype(float)
    assert not np.array_equal(moved, src)  # the edit changed something
    assert ((moved - src) ** 2).mean() < ((fresh - src) ** 2).mean()


def test_inversion_steps_are_bounded(model):
    with pytest.raises(InvalidConfigError, match="inversion steps"):
        inversion.timesteps(model, 0)
    assert inversion.timesteps(model, 4) == [999, 749, 499, 249]
