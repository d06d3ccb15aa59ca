"""NaN losses and checkpoints cut short, in the RCDM and the classifier training loops.

A NaN must stop training with a named error that says what to change; a checkpoint file cut
short must be refused with a message naming it (or skipped to start over), never end in a
library's internal error (engine/rcdm/training.py and engine/evaluate/classifier_training.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import EvalConfig, TrainConfig
from engine.errors import StudioError

from .conftest import TRAIN

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
COND = RNG.normal(size=(12, 4)).astype(np.float32)
LABELS = np.arange(12) % 3


def _cut(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_nan_loss_stops_rcdm_training_with_a_clear_error(tmp_path, one_thread):
    from engine.rcdm.training import train_rcdm

    # an absurd learning rate blows the weights up within a few steps
    with pytest.raises(StudioError, match=r"training loss became (nan|inf).*learning_rate"):
        train_rcdm(PIXELS, COND, TrainConfig(steps=6, learning_rate=1e30, **TRAIN),
                   tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()  # no model is saved from a NaN run


def test_nan_in_the_condition_is_refused_before_training(tmp_path, one_thread):
    from engine.rcdm.training import train_rcdm

    cond = COND.copy()
    cond[3, 1] = np.nan
    with pytest.raises(StudioError, match="NaN or inf"):
        train_rcdm(PIXELS, cond, TrainConfig(steps=2, **TRAIN), tmp_path / "run")


def test_nan_loss_stops_classifier_training_with_a_clear_error(tmp_path, one_thread):
    from engine.evaluate.classifier_training import train_classifier

    with pytest.raises(StudioError, match="nan|inf"):
        train_classifier(PIXELS, LABELS, PIXELS, LABELS, 3,
                         EvalConfig(epochs=2, batch_size=4, image_size=8, learning_rate=1e30),
                         out_dir=tmp_path / "ev")


@pytest.mark.parametrize("part", ["state.pt", "model.safetensors", "ema.safetensors"])
def test_a_cut_rcdm_checkpoint_is_refused_clearly(tmp_path, one_thread, part):
    from engine.rcdm.training import train_rcdm

    config = TrainConfig(steps=4, checkpoint_every=2, **TRAIN)
    train_rcdm(PIXELS, COND, config, tmp_path / "run")
    _cut(tmp_path / "run" / "checkpoint" / part)
    with pytest.raises(StudioError, match="checkpoint"):
        train_rcdm(PIXELS, COND, config.replace(steps=6), tmp_path / "run")


def test_a_cut_classifier_checkpoint_is_refused_clearly(tmp_path, one_thread):
    from engine.evaluate.classifier_training import train_classifier

    config = EvalConfig(epochs=1, batch_size=4, image_size=8)
    train_classifier(PIXELS, LABELS, PIXELS, LABELS, 3, config, out_dir=tmp_path / "ev")
    _cut(tmp_path / "ev" / "checkpoint.pt")
    with pytest.raises(StudioError, match="checkpoint"):
        train_classifier(PIXELS, LABELS, PIXELS, LABELS, 3, config.replace(epochs=2),
                         out_dir=tmp_path / "ev")


def test_a_half_written_checkpoint_folder_is_ignored_on_resume(tmp_path, one_thread):
    """A kill during a checkpoint write leaves ``checkpoint.tmp-PID`` beside the last whole
    checkpoint (written atomically): resume uses the whole one."""
    from engine.rcdm.training import train_rcdm

    config = TrainConfig(steps=4, checkpoint_every=2, **TRAIN)
    train_rcdm(PIXELS, COND, config, tmp_path / "run")
    half = tmp_path / "run" / "checkpoint.tmp-99999"  # a dead writer's temp folder
    half.mkdir()
    (half / "state.pt").write_bytes(b"\x80half")
    events = []
    out = train_rcdm(PIXELS, COND, config.replace(steps=6), tmp_path / "run",
                     progress=events.append)
    assert out["steps_done"] == 6
    assert any("resumed from the checkpoint at step 4" in e.message for e in events)
