"""Classifier evaluation: architectures, metrics, the training loop, determinism, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.config import EvalConfig
from engine.errors import Cancelled, InvalidConfigError
from engine.evaluate import (
    build_classifier,
    confusion_matrix,
    count_parameters,
    mix_arrays,
    per_class_accuracy,
    topk_accuracy,
    train_classifier,
)
from engine.evaluate.classifier_training import CHECKPOINT, lr_at, random_resized_crop
from engine.progress import CancelToken

# ----------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(per_class: int, classes: int = 4, size: int = 16, seed: int = 0):
    """An easy, separable dataset: class c is a 6x6 square of colour c at a random place, on noise.

    The class is in the colour, not the place, so random-resized crops keep it.

    Returns x (N, size, size, 3) uint8 and y (N,) int64, classes interleaved.
    """
    rng = np.random.default_rng(seed)
    n = per_class * classes
    y = np.arange(n) % classes
    x = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    palette = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30],
                        [230, 30, 230], [30, 230, 230]], np.uint8)
    for i, c in enumerate(y):
        r0, c0 = rng.integers(0, size - 6 + 1, size=2)
        x[i, r0:r0 + 6, c0:c0 + 6, :] = palette[c % len(palette)]
    return x, y.astype(np.int64)


def tiny_config(**changes) -> EvalConfig:
    base = dict(arch="resnet_tiny", image_size=16, epochs=2, batch_size=32, learning_rate=0.4,
                warmup_epochs=1, seed=0)
    base.update(changes)
    return EvalConfig(**base)


# ----------------------------------------------------------------------------- classifiers


@pytest.mark.parametrize("arch", ["resnet_tiny", "resnet18", "resnet50"])
def test_each_arch_maps_small_images_to_logits(arch):
    torch.manual_seed(0)
    model = build_classifier(arch, num_classes=7, image_size=16).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_resnet_tiny_size_and_small_image_stems():
    assert count_parameters(build_classifier("resnet_tiny", 10, 16)) == 308_650
    small = build_classifier("resnet18", 10, 16)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    large = build_classifier("resnet18", 10, 64)  # the ImageNet stem is kept from 64 px up
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, torch.nn.MaxPool2d)


def test_unknown_arch_is_a_named_error():
    with pytest.raises(InvalidConfigError, match="vgg"):
        build_classifier("vgg", 10, 16)
    with pytest.raises(InvalidConfigError, match="2 classes"):
        build_classifier("resnet_tiny", 1, 16)


# ----------------------------------------------------------------------------- metrics

LOGITS = torch.tensor([
    [0.9, 0.05, 0.03, 0.02],  # true 0, pred 0
    [0.1, 0.2, 0.6, 0.1],  # true 1, pred 2, rank of 1: 2nd
    [0.1, 0.1, 0.7, 0.1],  # true 2, pred 2
    [0.4, 0.3, 0.2, 0.1],  # true 3, pred 0, rank of 3: 4th
    [0.2, 0.5, 0.1, 0.2],  # true 1, pred 1
])
TARGETS = torch.tensor([0, 1, 2, 3, 1])


def test_topk_accuracy_pinned():
    acc = topk_accuracy(LOGITS, TARGETS, ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(60.0)
    assert acc["top2"] == pytest.approx(80.0)
    assert acc["top5"] == pytest.approx(100.0)  # clipped to top-4 with 4 classes
    assert topk_accuracy(LOGITS[:0], TARGETS[:0]) == {"top1": 0.0, "top5": 0.0}


def test_confusion_and_per_class_pinned():
    cm = confusion_matrix(LOGITS, TARGETS, 4)
    assert cm.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    assert torch.equal(confusion_matrix(LOGITS.argmax(1), TARGETS, 4), cm)  # labels too
    assert per_class_accuracy(LOGITS, TARGETS, 4) == [100.0, 50.0, 100.0, 0.0]
    five = per_class_accuracy(LOGITS, TARGETS, 5)  # class 4 has no test image
    assert five[:4] == [100.0, 50.0, 100.0, 0.0] and math.isnan(five[4])
    with pytest.raises(InvalidConfigError):
        confusion_matrix(LOGITS, torch.tensor([0, 1, 2, 3, 9]), 4)


# ----------------------------------------------------------------------------- pieces


def test_lr_schedule_pinned():
    # 2 warm-up steps then a half cosine over 4 steps, peak 1.0
    lrs = [lr_at(s, total_steps=6, warmup_steps=2, peak=1.0) for s in range(6)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                 0.5 * (1 + math.cos(3 * math.pi / 4))])
    assert lr_at(0, total_steps=4, warmup_steps=0, peak=0.2) == pytest.approx(0.2)


def test_random_resized_crop_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 16, 16)
    # the whole image at aspect 1 is the identity
    same = random_resized_crop(x, g, scale_min=1.0, hflip=False, ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5)
    # seeded: the same generator state gives the same crops; crops change the images
    a = random_resized_crop(x, torch.Generator().manual_seed(3), 0.35, hflip=True)
    b = random_resized_crop(x, torch.Generator().manual_seed(3), 0.35, hflip=True)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    # a crop only resamples inside the image: values stay within the input's range
    assert a.min() >= x.min() - 1e-5 and a.max() <= x.max() + 1e-5


def test_mix_arrays_concatenates_and_checks():
    xa, ya = blobs(2)
    xb, yb = blobs(1, seed=1)
    x, y = mix_arrays([(xa, ya), (xb[:0], yb[:0]), (xb, yb)])
    assert x.shape == (12, 16, 16, 3) and x.dtype == np.uint8
    assert np.array_equal(y, np.concatenate([ya, yb]))
    x0, y0 = mix_arrays([])
    assert x0.shape[0] == 0 and y0.shape == (0,)
    with pytest.raises(InvalidConfigError, match="shape"):
        mix_arrays([(xa, ya), (np.zeros((1, 8, 8, 3), np.uint8), np.zeros(1, int))])
    with pytest.raises(InvalidConfigError, match="labels"):
        mix_arrays([(xa, ya[:-1])])


# ----------------------------------------------------------------------------- training


def test_empty_mix_and_bad_labels_are_named_errors():
    x, y = blobs(2)
    cfg = tiny_config(epochs=1)
    with pytest.raises(InvalidConfigError, match="the training mix is empty"):
        train_classifier(*mix_arrays([]), x, y, 4, cfg)
    with pytest.raises(InvalidConfigError, match=r"\[0, 4\).*\[7\]"):
        train_classifier(x, np.where(y == 3, 7, y), x, y, 4, cfg)
    with pytest.raises(InvalidConfigError, match="expected 32x32"):
        train_classifier(x, y, x, y, 4, tiny_config(image_size=32))


def test_learns_an_easy_dataset():
    x, y = blobs(32)  # 128 training images, 8 steps per epoch
    xt, yt = blobs(16, seed=1)
    events = []
    res = train_classifier(x, y, xt, yt, 4, tiny_config(epochs=3, batch_size=16),
                           progress=events.append)
    assert res["top1"] >= 95.0, res["curves"]
    assert res["top5"] == 100.0
    assert res["num_train"] == 128 and res["num_test"] == 64
    assert len(res["per_class"]) == 4 and np.array(res["confusion"]).sum() == 64
    assert res["curves"]["epoch"] == [1, 2, 3]
    assert res["curves"]["train_loss"][-1] < res["curves"]["train_loss"][0]
    assert {e.stage for e in events} == {"evaluate"}
    steps = [e.step for e in events]
    assert steps == sorted(steps) and steps[-1] == events[-1].total == 3 * 8
    assert sum("top1" in e.metrics for e in events) == 3
    assert len(events) > 3  # reports inside epochs too


def test_seeded_runs_are_identical_and_seeds_differ():
    x, y = blobs(8)
    xt, yt = blobs(4, seed=1)
    a = train_classifier(x, y, xt, yt, 4, tiny_config())
    b = train_classifier(x, y, xt, yt, 4, tiny_config())
    c = train_classifier(x, y, xt, yt, 4, tiny_config(seed=1))
    assert a["curves"] == b["curves"] and a["confusion"] == b["confusion"]
    assert a["curves"]["train_loss"] != c["curves"]["train_loss"]


def test_cancel_then_resume_equals_one_run(tmp_path):
    x, y = blobs(8)
    xt, yt = blobs(4, seed=1)
    cfg = tiny_config(epochs=4, batch_size=16)  # 2 steps per epoch
    whole = train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "whole")

    # cancel once epoch 2 is reported: its checkpoint stays, epoch 3 never starts
    token = CancelToken()

    def stop_after_two(event):
        if event.metrics.get("top1") is not None and event.step == 2 * 2:
            token.cancel()

    with pytest.raises(Cancelled):
        train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "split",
                         progress=stop_after_two, cancel=token)
    state = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2
    resumed = train_classifier(x, y, xt, yt, 4, cfg, out_dir=tmp_path / "split")

    assert resumed["curves"] == whole["curves"]
    assert resumed["top1"] == whole["top1"]
    w1 = torch.load(tmp_path / "whole" / CHECKPOINT, weights_only=True)["model"]
    w2 = torch.load(tmp_path / "split" / CHECKPOINT, weights_only=True)["model"]
    for k in w1:
        assert torch.allclose(w1[k].float(), w2[k].float(), atol=1e-5, rtol=0), k

    # a checkpoint from another recipe is refused rather than silently mixed
    with pytest.raises(InvalidConfigError, match="another evaluation config"):
        train_classifier(x, y, xt, yt, 4, cfg.replace(seed=5), out_dir=tmp_path / "split")
