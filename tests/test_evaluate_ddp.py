"""One evaluation on several processes: torchrun, 2 gloo ranks on the CPU, tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import EvalConfig
from engine.errors import Cancelled, InvalidConfigError
from engine.evaluate.classifier import build_classifier
from engine.evaluate.classifier_ranks import launch_train_classifier
from engine.evaluate.classifier_training import train_classifier
from engine.progress import CancelToken, ProgressEvent

CONFIG = EvalConfig(arch="resnet_tiny", image_size=8, epochs=2, batch_size=16, warmup_epochs=1,
                    learning_rate=0.4, seed=0)


def tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8, 8, 3) uint8 images of 4 classes (a bright 3x3 patch at a class position)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.integers(0, 60, size=(n, 8, 8, 3), dtype=np.uint8)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 1 + 4 * r:4 + 4 * r, 1 + 4 * q:4 + 4 * q, c % 3] = 220
    return x, y


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


# Largest divergence allowed between one process and two, as a fraction of how far training
# moved the weights. The two differ only by float rounding (summation order of BatchNorm's
# statistics and of the all-reduced gradients), which training then amplifies: measured here,
# 6e-7 of the movement for one resumed epoch and 1.3e-4 for an epoch with mixup from scratch
# (an absolute bound of 1e-5 was tuned to one CPU: another one's rounding gave 6e-5). A real
# divergence changes the updates themselves (a rank on the wrong rows, gradients not averaged,
# one rank's BatchNorm statistics): a learning rate 10 % off already moves them 7e-2 apart.
DIVERGENCE_BOUND = 1e-2


def _initial_state(config: EvalConfig) -> dict[str, torch.Tensor]:
    """The weights ``train_classifier`` starts from (seeded by ``config.seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_classifier(config.arch, 4, config.image_size).state_dict()


def _divergence(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                start: dict[str, torch.Tensor]) -> float:
    """The largest difference between two runs' weights and BatchNorm statistics, divided by
    the largest change training made to them from ``start`` (their common starting point)."""
    assert a.keys() == b.keys() == start.keys()
    floats = [k for k in a if a[k].is_floating_point()]
    assert all(torch.equal(a[k], b[k]) for k in a if k not in floats)  # BN step counts
    apart = max(float((a[k].double() - b[k].double()).abs().max()) for k in floats)
    moved = max(float((a[k].double() - start[k].double()).abs().max()) for k in floats)
    assert moved > 0
    return apart / moved


def test_two_processes_match_one(tmp_path: Path, one_thread):
    """Epoch 1 in this process (cancelled at its end), epoch 2 in two torchrun processes that
    resume its checkpoint, each taking half of every batch: the same weights (up to float
    rounding, DIVERGENCE_BOUND) and the same accuracy as two epochs in one process; both ranks
    agree; rank 0 alone writes."""
    train_x, train_y = tiny_split(64, seed=0)
    test_x, test_y = tiny_split(32, seed=1)
    args = (train_x, train_y, test_x, test_y, 4)
    reference = train_classifier(*args, CONFIG, out_dir=tmp_path / "single")

    cancel = CancelToken()

    def stop_after_epoch_1(event: ProgressEvent) -> None:
        if "top1" in event.metrics:
            cancel.cancel()

    with pytest.raises(Cancelled):
        train_classifier(*args, CONFIG, out_dir=tmp_path / "ddp", progress=stop_after_epoch_1,
                         cancel=cancel)
    after_epoch_1 = _state(tmp_path / "ddp")  # where both runs' second epoch starts
    events: list[ProgressEvent] = []
    result = launch_train_classifier(*args, CONFIG.replace(processes=2), tmp_path / "ddp",
                                     progress=events.append, poll_seconds=0.2)

    log = (tmp_path / "ddp" / "launch" / "log.txt").read_text()
    assert "resuming classifier training" in log and "at epoch 1" in log
    ranks = [json.loads((tmp_path / "ddp" / "ranks" / f"rank_{r}.json").read_text())
             for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"] == result["weights_digest"]
    assert ranks[0]["train_loss"] == ranks[1]["train_loss"]  # the global batch's loss
    # rank 0 alone tests and writes: one result, the arrays passed to torchrun are gone
    assert result["world_size"] == 2 and result["rank"] == 0
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.json")) == ["result.json"]
    assert not list((tmp_path / "ddp" / "launch").glob("*.npy"))
    # rank 0's progress reached this process: epoch 2's end, with its test accuracy
    assert events and events[-1].step == events[-1].total == 8
    assert events[-1].metrics["top1"] == result["top1"]

    # what was compared: every weight and BN statistic after the last step, the curves
    single, ddp = _state(tmp_path / "single"), _state(tmp_path / "ddp")
    divergence = _divergence(single, ddp, after_epoch_1)
    assert divergence < DIVERGENCE_BOUND, divergence
    assert result["top1"] == reference["top1"] and result["top5"] == reference["top5"]
    assert result["confusion"] == reference["confusion"]
    assert result["curves"]["test_top1"] == reference["curves"]["test_top1"]
    np.testing.assert_allclose(result["curves"]["train_loss"], reference["curves"]["train_loss"],
                               rtol=1e-5)
    assert result["top1"] > 25.0  # 4 classes: it learned something in 2 epochs

    # and back: one process reads the two-process checkpoint (its last epoch: nothing to do)
    again = train_classifier(*args, CONFIG, out_dir=tmp_path / "ddp")
    assert again["top1"] == result["top1"] and again["curves"] == result["curves"]


def test_processes_option_is_validated():
    with pytest.raises(InvalidConfigError, match="processes"):
        EvalConfig(processes=0)
    from studio.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--project", "p", "--processes", "2"])
    assert args.processes == 2


def test_evaluate_stage_runs_two_processes_with_mixup(tmp_path: Path, one_thread):
    """The job stage with ``processes=2`` runs torchrun on its prepared arrays and returns
    rank 0's result. Mixup draws through the whole batch, so every rank mixes the whole
    batch and keeps its half: the weights still match one process (up to float rounding,
    DIVERGENCE_BOUND)."""
    from engine.stages import evaluate_stage

    train_x, train_y = tiny_split(48, seed=2)
    test_x, test_y = tiny_split(16, seed=3)
    config = CONFIG.replace(augment="mixup", epochs=1, batch_size=12)
    reference = train_classifier(train_x, train_y, test_x, test_y, 4, config,
                                 out_dir=tmp_path / "single")
    np.save(tmp_path / "pixels.npy", np.concatenate([train_x, test_x]))
    params = {"config": config.replace(processes=2).to_dict(), "num_classes": 4,
              "pixels_path": str(tmp_path / "pixels.npy"),
              "labels": np.concatenate([train_y, test_y]).tolist(),
              "train_idx": list(range(48)), "test_idx": list(range(48, 64)),
              "synthetic_paths": [], "synthetic_labels": [], "out_dir": str(tmp_path / "ddp")}
    result = evaluate_stage.run(params, tmp_path, progress=lambda e: None, cancel=CancelToken())
    single, ddp = _state(tmp_path / "single"), _state(tmp_path / "ddp")
    divergence = _divergence(single, ddp, _initial_state(config))
    assert divergence < DIVERGENCE_BOUND, divergence
    assert result["world_size"] == 2 and result["top1"] == reference["top1"]
    assert result["num_train"] == 48 and result["num_test"] == 16
    np.testing.assert_allclose(result["curves"]["train_loss"], reference["curves"]["train_loss"],
                               rtol=1e-5)
