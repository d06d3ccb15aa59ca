"""Classical augmentations (AutoAugment, RandAugment, Mixup, CutMix) and the step schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import AUGMENTS, EvalConfig
from engine.errors import InvalidConfigError
from engine.evaluate import train_classifier
from engine.evaluate.augment import BatchAugment
from engine.evaluate.classifier_training import lr_at

pytestmark = pytest.mark.usefixtures("one_thread")


def squares(per_class: int, classes: int = 4, size: int = 16, seed: int = 0):
    """Class c is a 6x6 square of colour c at a random place on dark noise: (N,S,S,3), (N,)."""
    rng = np.random.default_rng(seed)
    y = np.arange(per_class * classes) % classes
    x = rng.integers(0, 60, size=(len(y), size, size, 3), dtype=np.uint8)
    palette = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.uint8)
    for i, c in enumerate(y):
        r0, c0 = rng.integers(0, size - 6 + 1, size=2)
        x[i, r0:r0 + 6, c0:c0 + 6] = palette[c]
    return x, y.astype(np.int64)


def config(augment: str, **changes) -> EvalConfig:
    base = dict(arch="resnet_tiny", image_size=16, epochs=1, batch_size=16, seed=0,
                augment=augment)
    base.update(changes)
    return EvalConfig(**base)


@pytest.mark.parametrize("augment", ["autoaugment", "randaugment"])
def test_policies_change_uint8_images_and_are_seeded(augment):
    x = torch.from_numpy(squares(4)[0]).permute(0, 3, 1, 2).contiguous()  # (16, 3, 16, 16)
    aug = BatchAugment(config(augment), num_classes=4)
    a = aug.policy_batch(x, torch.Generator().manual_seed(1))
    b = aug.policy_batch(x, torch.Generator().manual_seed(1))
    c = aug.policy_batch(x, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)  # same seed, same images
    assert not torch.equal(a, x)  # not a no-op
    assert not torch.equal(a, c)  # another seed, other operations
    changed = (a != x).flatten(1).any(dim=1)
    assert 0 < int(changed.sum())  # operations are drawn per image
    assert not aug.soft_targets


@pytest.mark.parametrize("augment", ["mixup", "cutmix"])
def test_batch_mixes_give_soft_targets(augment):
    x = torch.rand(8, 3, 16, 16)
    y = torch.arange(8) % 4
    aug = BatchAugment(config(augment), num_classes=4)
    xa, ya = aug.mix_batch(x, y, torch.Generator().manual_seed(0))
    xb, yb = aug.mix_batch(x, y, torch.Generator().manual_seed(0))
    assert aug.soft_targets and ya.shape == (8, 4)
    assert torch.allclose(ya.sum(dim=1), torch.ones(8))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.allclose(xa, x)
    # each row mixes its own label with its neighbour's: two non-zero weights
    assert int((ya > 0).sum(dim=1).max()) == 2
    assert torch.equal(ya.argmax(dim=1) == y, ya.max(dim=1).values >= 0.5)


def test_none_and_crop_add_nothing_per_batch():
    x = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(4)
    for augment in ("none", "crop"):
        aug = BatchAugment(config(augment), num_classes=4)
        g = torch.Generator().manual_seed(0)
        assert aug.policy_batch(x, g) is x and aug.mix_batch(x, y, g) == (x, y)
        assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())


# meada needs more than one epoch for its phases: tests/test_meada.py
@pytest.mark.parametrize("augment", [a for a in AUGMENTS if a not in ("none", "crop", "meada")])
def test_each_augmentation_trains_one_epoch_deterministically(augment):
    x, y = squares(8)
    xt, yt = squares(4, seed=1)
    a = train_classifier(x, y, xt, yt, 4, config(augment))
    b = train_classifier(x, y, xt, yt, 4, config(augment))
    crop = train_classifier(x, y, xt, yt, 4, config("crop"))
    assert a["curves"] == b["curves"] and a["confusion"] == b["confusion"]
    assert np.isfinite(a["curves"]["train_loss"][0])
    # the augmentation changed what the model saw: the training loss differs from crop-only
    assert a["curves"]["train_loss"] != crop["curves"]["train_loss"]


def test_step_schedule_pinned():
    # no warm-up, 9 steps: x0.1 at steps 3, 6 and 8
    lrs = [lr_at(s, 9, 0, 1.0, "step") for s in range(9)]
    assert lrs == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001])
    assert lr_at(0, 9, 2, 1.0, "step") == pytest.approx(0.5)  # warm-up first


def test_bad_augment_and_schedule_are_named_errors():
    with pytest.raises(InvalidConfigError, match="augmix"):
        EvalConfig(augment="augmix")
    with pytest.raises(InvalidConfigError, match="linear"):
        EvalConfig(schedule="linear")
    with pytest.raises(InvalidConfigError, match="mixup_alpha"):
        EvalConfig(mixup_alpha=0.0)
