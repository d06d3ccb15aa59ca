"""The mixing options on two torchrun processes (gloo, CPU): the same training as one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.evaluate.classifier_ranks import launch_train_classifier
from engine.evaluate.classifier_training import train_classifier
from engine.progress import CancelToken
from tests.test_evaluate_ddp import (
    CONFIG,
    DIVERGENCE_BOUND,
    _divergence,
    _initial_state,
    _state,
    tiny_split,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stage_with_ratio_weight_and_separate_batchnorm_on_two_processes(tmp_path: Path):
    """The evaluate stage, real + synthetic PNGs, ``processes=2``, with a loss weight, a batch
    ratio and separate BatchNorm statistics: each rank gets its rows of every composed batch
    and the per-kind statistics are summed over the ranks, so the weights match one process
    (up to float rounding, DIVERGENCE_BOUND) and so does the test accuracy."""
    from PIL import Image

    from engine import data
    from engine.stages import evaluate_stage

    train_x, train_y = tiny_split(40, seed=4)
    syn_x, syn_y = tiny_split(12, seed=5)
    syn_x = np.clip(syn_x.astype(np.int16) + 40, 0, 255).astype(np.uint8)  # another domain
    test_x, test_y = tiny_split(16, seed=6)
    paths = []
    for i, img in enumerate(syn_x):
        paths.append(tmp_path / "syn" / f"{i:03d}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(paths[-1])
    config = CONFIG.replace(syn_weight=0.5, syn_fraction=0.3, syn_bn="separate")
    # one process, on the same arrays the stage builds
    loaded = data.load_pixels(paths, config.image_size)
    mix_x, mix_y = np.concatenate([train_x, loaded]), np.concatenate([train_y, syn_y])
    reference = train_classifier(mix_x, mix_y, test_x, test_y, 4, config,
                                 out_dir=tmp_path / "single",
                                 is_synthetic=np.arange(52) >= 40)

    np.save(tmp_path / "pixels.npy", np.concatenate([train_x, test_x]))
    params = {"config": config.replace(processes=2).to_dict(), "num_classes": 4,
              "pixels_path": str(tmp_path / "pixels.npy"),
              "labels": np.concatenate([train_y, test_y]).tolist(),
              "train_idx": list(range(40)), "test_idx": list(range(40, 56)),
              "synthetic_paths": [str(p) for p in paths], "synthetic_labels": syn_y.tolist(),
              "out_dir": str(tmp_path / "ddp")}
    result = evaluate_stage.run(params, tmp_path, progress=lambda e: None, cancel=CancelToken())

    divergence = _divergence(_state(tmp_path / "single"), _state(tmp_path / "ddp"),
                             _initial_state(config))
    assert divergence < DIVERGENCE_BOUND, divergence
    assert result["world_size"] == 2 and result["num_synthetic"] == 12
    assert result["top1"] == reference["top1"]
    np.testing.assert_allclose(result["curves"]["train_loss"], reference["curves"]["train_loss"],
                               rtol=1e-5)


def test_curriculum_with_separate_batchnorm_on_two_processes(tmp_path: Path):
    """A synthetic-then-real curriculum (one epoch each) with separate statistics and a
    synthetic weight, launched on two processes: the weights of one process."""
    real_x, real_y = tiny_split(32, seed=7)
    syn_x, syn_y = tiny_split(24, seed=8)
    x, y = np.concatenate([real_x, syn_x]), np.concatenate([real_y, syn_y])
    is_synthetic = np.arange(56) >= 32
    test_x, test_y = tiny_split(16, seed=9)
    config = CONFIG.replace(curriculum="synthetic_then_real", syn_bn="separate", syn_weight=2.0)
    args = (x, y, test_x, test_y, 4)
    reference = train_classifier(*args, config, out_dir=tmp_path / "single",
                                 is_synthetic=is_synthetic)
    result = launch_train_classifier(*args, config.replace(processes=2), tmp_path / "ddp",
                                     poll_seconds=0.2, is_synthetic=is_synthetic)
    divergence = _divergence(_state(tmp_path / "single"), _state(tmp_path / "ddp"),
                             _initial_state(config))
    assert divergence < DIVERGENCE_BOUND, divergence
    assert result["top1"] == reference["top1"] and result["num_synthetic"] == 24
    assert not list((tmp_path / "ddp" / "launch").glob("*.npy"))  # is_synthetic.npy too
