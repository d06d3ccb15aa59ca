"""Train a classifier on a training mix and test it on the held-out real split.

This is how the studio measures the *training value* of synthetic images: the same recipe
(architecture, epochs, optimiser, augmentation, seed) is run on different training mixes
(real, synthetic, real + synthetic, ...) and the top-1 accuracies on the same real test
split are compared.

The images are decoded once: the whole mix becomes one uint8 tensor ``(N, 3, H, W)`` on the
device, and every batch is converted to floats, augmented with tensor ops (a random-resized
crop through ``F.affine_grid`` / ``F.grid_sample``, per sample, seeded) and normalised with the
mix's own channel mean and std. No DataLoader, no worker processes, no PIL in the loop.
A mix too large for memory comes instead as image sources (map-style torch Datasets, see
``engine.streams``): ``ImageStream`` has DataLoader worker processes read the rows of the
batches the loop has drawn, in order, so a streamed run trains on the same batches. The
classical augmentation baselines (AutoAugment, RandAugment, Mixup, CutMix) come on top of the
crop from ``engine.evaluate.augment``; ME-ADA (``engine.evaluate.meada``) grows the training
tensor with adversarial images at the start of some epochs and keeps them in the checkpoint.

How synthetic images join training (``EvalConfig``'s mixing options; ``is_synthetic`` says
which rows are synthetic). At their defaults a synthetic image is one more training image:
the mix is shuffled as one set, weighed and normalised as the real images. Otherwise:

- ``syn_weight`` w: a synthetic image's loss counts w times (the batch loss is
  ``sum_i w_i l_i / B``, real images keeping weight 1); with mixup / cutmix a row has the
  weight of the image in its place.
- ``syn_fraction`` f: every batch holds ``round(f B)`` synthetic images and the rest real;
  an epoch is one pass over the real images, the synthetic ones drawn from successive shuffles
  (each once before any twice; as many passes as needed, or part of one).
- ``syn_bn="separate"``: BatchNorm normalises the real and the synthetic rows of a batch
  with their own statistics, and keeps running statistics of the real rows only, used at
  test time (``engine.evaluate.domain_batchnorm``, after "Diversify, Don't Fine-Tune").
- ``curriculum="synthetic_then_real"``: the first ``curriculum_split`` of the epochs train on
  the synthetic images only, the rest on the real images only, an epoch being a pass over
  the phase's images. Real only, not real + synthetic, in the second phase: "mixed" already
  covers real + synthetic throughout, the run ends on the distribution it is tested on, and
  the BatchNorm running statistics (a moving average) are then the real images'.

The learning-rate schedule follows the epochs' actual lengths. ME-ADA refuses the mixing
options (its adversarial images are neither real nor synthetic).

Several processes: started by ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1, see
``engine.evaluate.classifier_ranks``), training is data-parallel through the runtime's
``engine.torchrun.ranks.Ranks``, and the loop is the same for 1..N processes. Every rank draws
the same global batch from the seeded generator (``config.batch_size`` indices, crop
parameters, policy / mix seeds) and takes its rows of it (rank r: ``[r*B/W, (r+1)*B/W)``); the
model is wrapped in DDP (gloo on the CPU, nccl on ``cuda:LOCAL_RANK``) so gradients are
averaged, and BatchNorm uses the statistics of the whole global batch (``SyncBatchNorm`` on
CUDA, ``engine.torchrun.batchnorm.GlobalBatchNorm`` on the CPU). One step is therefore the
same update as in one process, up to float summation order. AutoAugment / RandAugment and
Mixup / CutMix draw through the whole batch, so with them every rank augments the whole batch
and keeps its rows (the crop alone is drawn for the whole batch and applied to the rows only).
Rank 0 alone tests, reports progress and writes the checkpoint, whose format does not depend
on the number of processes: a run started with one process resumes with several and the
other way round.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from engine.config import SYN_DEFAULTS, EvalConfig
from engine.errors import Cancelled, InvalidConfigError, StudioError
from engine.evaluate import meada
from engine.evaluate.augment import BatchAugment
from engine.evaluate.classifier import build_classifier
from engine.evaluate.domain_batchnorm import batch_domains, separate_batchnorm
from engine.evaluate.metrics import confusion_matrix, per_class_accuracy, topk_accuracy
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.torchrun.ranks import Ranks, weights_digest

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1
STAGE = "evaluate"
EVAL_BATCH = 512
STREAM_PREFETCH = 4  # batches each DataLoader worker reads ahead
STREAM_OPTIONS = ("data_path", "memory_fraction", "loader_workers")  # change no result
REPORTS_PER_EPOCH = 5  # progress reports inside an epoch (plus one at its end)
STEP_FRACTIONS = (1 / 3, 2 / 3, 8 / 9)  # "step" schedule: x0.1 here (ImageNet: 30, 60, 80 of 90)


def mix_arrays(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the (images, labels) parts of a training mix.

    Args:
        parts: pairs ``(x (N_i, H, W, 3) uint8, y (N_i,) int)``; empty parts are allowed.

    Returns:
        ``x (sum N_i, H, W, 3) uint8`` and ``y (sum N_i,) int64``. With no part (or only
        empty ones) both are empty, and ``train_classifier`` then says the mix is empty.

    Raises:
        InvalidConfigError: a part whose images and labels disagree in length, or parts
            whose images differ in size.
    """
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for i, (x, y) in enumerate(parts):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.shape[0] != y.shape[0]:
            raise InvalidConfigError(
                f"part {i} of the training mix has {x.shape[0]} images but {y.shape[0]} labels")
        if x.shape[0] == 0:
            continue
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise InvalidConfigError(
                f"part {i} of the training mix has images of shape {x.shape[1:]}, "
                f"the first part {xs[0].shape[1:]}")
        xs.append(x)
        ys.append(y.astype(np.int64))
    if not xs:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(xs).astype(np.uint8, copy=False), np.concatenate(ys)


# ---------------------------------------------------------------------------------------------
# Data on tensors


def _check_split(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, size: int) -> None:
    if x.ndim != 4 or x.shape[3] != 3:
        raise InvalidConfigError(f"the {name} images must have shape (N, H, W, 3), got {x.shape}")
    if x.dtype != np.uint8:
        raise InvalidConfigError(f"the {name} images must be uint8, got {x.dtype}")
    if x.shape[1] != size or x.shape[2] != size:
        raise InvalidConfigError(
            f"the {name} images are {x.shape[1]}x{x.shape[2]}, expected {size}x{size} "
            f"(config.image_size)")
    if y.shape != (x.shape[0],):
        raise InvalidConfigError(
            f"the {name} labels must have shape ({x.shape[0]},), got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = sorted(set(y[(y < 0) | (y >= num_classes)].tolist()))[:5]
        raise InvalidConfigError(
            f"the {name} labels must be in [0, {num_classes}), found {bad}")


def _to_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) uint8 tensor on the device."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous().to(device)


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (N, 3, H, W) uint8 images, in [0, 1] units, each (3,).

    Computed in float64 chunks, so a large mix needs no float copy. A flat channel gets
    std 1 so that normalising never divides by zero.
    """
    mean, std = chunks_channel_stats(x[i:i + chunk] for i in range(0, x.shape[0], chunk))
    return mean.to(x.device), std.to(x.device)


def chunks_channel_stats(chunks: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``channel_stats`` of the images given as successive (n, 3, H, W) uint8 chunks."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for x in chunks:
        b = x.to(torch.float64) / 255.0
        total += b.sum(dim=(0, 2, 3)).cpu()
        total_sq += (b * b).sum(dim=(0, 2, 3)).cpu()
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / max(1, count)
    std = (total_sq / max(1, count) - mean * mean).clamp_min(0.0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float(), std.float()


def _normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, H, W) float32, zero mean and unit std per channel."""
    return (x_uint8.float() / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, scale_min: float,
                        hflip: bool, ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        total: int | None = None, rows: slice | None = None) -> torch.Tensor:
    """Random-resized crop of each image of a batch, resized back to the input size.

    Per sample: an area fraction ``s ~ U(scale_min, 1)`` and an aspect ratio
    ``r ~ logU(ratio)`` give a box of width ``sqrt(s r)`` and height ``sqrt(s / r)`` (fractions
    of the side, clipped to 1) placed uniformly inside the image, then mirrored with
    probability 1/2 when ``hflip``. One ``affine_grid`` + bilinear ``grid_sample`` does the lot.

    Args:
        x: (B, C, H, W) float images.
        generator: CPU generator; the parameters are drawn on the CPU, so a run is
            reproducible whatever the device.
        total, rows: several processes: the parameters are drawn for a whole batch of
            ``total`` images and ``x`` holds its ``rows`` (this rank's slice).

    Returns:
        (B, C, H, W) float images.
    """
    b = x.shape[0]
    u = torch.rand(b if total is None else total, 5, generator=generator)
    if rows is not None:
        u = u[rows]  # this rank's rows of the whole batch's draws
    # u: (B, 5): scale, ratio, cx, cy, flip
    s = scale_min + (1.0 - scale_min) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = log_r.exp()
    w = (s * r).sqrt().clamp(max=1.0)  # box width as a fraction of the side
    h = (s / r).sqrt().clamp(max=1.0)
    cx = (1.0 - w) * (2.0 * u[:, 2] - 1.0)  # box centre in [-1, 1] coordinates
    cy = (1.0 - h) * (2.0 * u[:, 3] - 1.0)
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if hflip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---------------------------------------------------------------------------------------------
# Data streamed from an image source


def _collate_uint8(items: list[np.ndarray]) -> torch.Tensor:
    """(S, S, 3) uint8 images -> one (n, 3, S, S) uint8 tensor (in the loader's worker)."""
    return torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).contiguous()


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # a loader worker decodes; the loop's process computes


class _Batches:
    """A DataLoader batch sampler that yields the index batches it is given, in order, as
    lists (converted one at a time: an epoch's N indices stay one int64 tensor each)."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def __iter__(self) -> Any:
        return (b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ImageStream:
    """The training mix and the scored split read per batch by DataLoader workers.

    One worker pool (persistent, ``spawn``ed) serves both: ``train`` is rows [0, N) of the
    concatenation, ``test`` rows [N, N + M). The loop says which rows each batch holds before
    iterating, so the streamed batches are the in-memory ones, in the same order.

    Args:
        train, test: map-style datasets whose item i is a (S, S, 3) uint8 array (see
            ``engine.streams``).
        workers: loader processes; 0 reads in the calling process.
        device: where the batches go (pinned memory on CUDA).
    """

    def __init__(self, train: Dataset, test: Dataset, workers: int,
                 device: torch.device) -> None:
        self.n, self.m = len(train), len(test)
        self.sampler = _Batches()
        self.device = device
        self.loader = DataLoader(
            ConcatDataset([train, test]), batch_sampler=self.sampler, num_workers=workers,
            collate_fn=_collate_uint8, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, worker_init_fn=_one_thread if workers else None,
            multiprocessing_context="spawn" if workers else None,  # torch + fork can hang
            prefetch_factor=STREAM_PREFETCH if workers else None)

    def _read(self, batches: list[torch.Tensor]) -> Any:
        self.sampler.batches = batches
        for xb in self.loader:
            yield xb.to(self.device, non_blocking=True)

    def train_batches(self, selections: list[torch.Tensor]) -> Any:
        """(k, 3, S, S) uint8 device tensors of the training rows ``selections``, in order."""
        return self._read([sel.cpu() for sel in selections])

    def train_chunks(self, chunk: int = EVAL_BATCH) -> Any:
        """The whole training mix in order, (k, 3, S, S) uint8 chunks."""
        return self._read(list(torch.arange(self.n).split(chunk)))

    def test_chunks(self, chunk: int = EVAL_BATCH) -> Any:
        """The scored split in order, (k, 3, S, S) uint8 chunks."""
        return self._read(list(torch.arange(self.n, self.n + self.m).split(chunk)))

    def close(self) -> None:
        """Stop the loader's worker processes (they persist between epochs)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None


# ---------------------------------------------------------------------------------------------
# Schedule, checkpoint


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float,
          schedule: str = "cosine") -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, then the schedule.

    During warm-up the rate climbs from ``peak / warmup_steps`` to ``peak``; after it,
    "cosine" is a half cosine from ``peak`` (first step after warm-up) towards 0 (at
    ``total_steps``), and "step" is ``peak`` divided by 10 at each of ``STEP_FRACTIONS`` of
    ``total_steps`` (the ImageNet recipe's epochs 30, 60 and 80 of 90).
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "step":
        drops = sum(step >= round(f * total_steps) for f in STEP_FRACTIONS)
        return peak * 0.1 ** drops
    decay_steps = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / decay_steps
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _fingerprint(train_y: np.ndarray, train_shape: tuple[int, ...], test_y: np.ndarray,
                 num_classes: int, is_synthetic: torch.Tensor | None = None) -> str:
    """A cheap identity of the data a checkpoint belongs to (shapes and labels, and which
    rows are synthetic when the recipe treats them apart)."""
    h = hashlib.sha1()
    h.update(repr((tuple(train_shape), len(test_y), num_classes)).encode())
    h.update(np.ascontiguousarray(train_y, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(test_y, dtype=np.int64).tobytes())
    if is_synthetic is not None:
        h.update(is_synthetic.cpu().numpy().astype(np.uint8).tobytes())
    return h.hexdigest()


def _config_key(config: EvalConfig) -> str:
    """The config as stored in a checkpoint; the device and the number of processes may
    change between runs (a checkpoint does not depend on them)."""
    values = config.replace(device="cpu").to_dict()
    values.pop("processes", None)
    for key in STREAM_OPTIONS:  # streamed or in memory, the same batches
        values.pop(key, None)
    if config.augment != meada.KIND:  # options that change nothing: older checkpoints resume
        values = {k: v for k, v in values.items() if not k.startswith("meada_")}
    if config.curriculum == SYN_DEFAULTS["curriculum"]:
        values.pop("curriculum_split")
    # the mixing options at their defaults: checkpoints from before them resume
    values = {k: v for k, v in values.items() if k not in SYN_DEFAULTS or v != SYN_DEFAULTS[k]}
    return json.dumps(values, sort_keys=True)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, config: EvalConfig, fingerprint: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # cut short or damaged: torch's own error names no file
        raise InvalidConfigError(
            f"classifier checkpoint {path} is unreadable (cut short or damaged: "
            f"{type(exc).__name__}); delete it to start this evaluation over") from exc
    if state.get("version") != CHECKPOINT_VERSION:
        raise InvalidConfigError(
            f"{path} is a classifier checkpoint of version {state.get('version')!r}, "
            f"this studio reads version {CHECKPOINT_VERSION}; delete it to start again")
    if state.get("config") != _config_key(config):
        raise InvalidConfigError(
            f"{path} was written with another evaluation config ({state.get('config')}); "
            f"delete it or use another folder to train with {_config_key(config)}")
    if state.get("fingerprint") != fingerprint:
        raise InvalidConfigError(
            f"{path} was written for another training mix or test split; "
            f"delete it or use another folder")
    return state


# ---------------------------------------------------------------------------------------------
# The loop's parts


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


class _Schedule(NamedTuple):
    """The numbers of a run that follow from the mix's size and the recipe.

    An epoch is one pass over the images it trains on: the whole mix ("mixed"), the synthetic
    or the real images (a curriculum's phases), the real images (``syn_fraction``, whose
    batches add ``syn_per_batch`` synthetic images to ``batch - syn_per_batch`` real ones).
    """

    batch: int  # B, images per optimiser step (all ranks together)
    epoch_steps: tuple[int, ...]  # optimiser steps of each epoch
    warmup_steps: int
    peak_lr: float  # config.learning_rate scaled from batch 256 to B
    syn_per_batch: int = 0  # syn_fraction: the synthetic images of every batch

    @property
    def total_steps(self) -> int:
        return sum(self.epoch_steps)

    def first_step(self, epoch: int) -> int:
        """Optimiser steps done before ``epoch`` (0-based) starts."""
        return sum(self.epoch_steps[:epoch])

    @classmethod
    def of(cls, n: int, n_syn: int, config: EvalConfig) -> _Schedule:
        """The schedule of a mix of ``n`` images, ``n_syn`` of them synthetic."""
        batch = min(config.batch_size, n)
        n_real = n - n_syn
        syn_per_batch = 0
        if config.syn_fraction is not None:
            f = config.syn_fraction
            syn_per_batch = min(max(_round_half_up(f * batch), 1), batch - 1)
            real_per_batch = batch - syn_per_batch
            if real_per_batch > n_real:  # fewer real images than a batch: smaller, same ratio
                real_per_batch = n_real
                syn_per_batch = max(1, _round_half_up(n_real * f / (1.0 - f)))
                batch = real_per_batch + syn_per_batch
            epoch_steps = (math.ceil(n_real / real_per_batch),) * config.epochs
        elif config.curriculum == "synthetic_then_real":
            first = config.curriculum_epochs()
            epoch_steps = ((math.ceil(n_syn / batch),) * first
                           + (math.ceil(n_real / batch),) * (config.epochs - first))
        else:
            epoch_steps = (math.ceil(n / batch),) * config.epochs
        # warm-up epochs beyond the run's count as long as its last one
        warmup_steps = sum(epoch_steps[min(e, config.epochs - 1)]
                           for e in range(config.warmup_epochs))
        return cls(batch, epoch_steps, warmup_steps, config.learning_rate * batch / 256.0,
                   syn_per_batch)


def _check_source(name: str, x: Dataset, y: np.ndarray, num_classes: int, size: int) -> None:
    """``_check_split`` for an image source: its length, its labels, its first image."""
    if y.shape != (len(x),):
        raise InvalidConfigError(f"the {name} labels must have shape ({len(x)},), got {y.shape}")
    first = np.asarray(x[0])
    if first.shape != (size, size, 3) or first.dtype != np.uint8:
        raise InvalidConfigError(
            f"the {name} images must be ({size}, {size}, 3) uint8 (config.image_size), "
            f"the first is {first.dtype} {first.shape}")
    _check_split(name, first[None], y[:1], num_classes, size)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = sorted(set(y[(y < 0) | (y >= num_classes)].tolist()))[:5]
        raise InvalidConfigError(f"the {name} labels must be in [0, {num_classes}), found {bad}")


def _checked_inputs(train_x: np.ndarray | Dataset, train_y: np.ndarray,
                    test_x: np.ndarray | Dataset, test_y: np.ndarray, num_classes: int,
                    config: EvalConfig) -> tuple[Any, np.ndarray, Any, np.ndarray]:
    """The four inputs (arrays, or image sources when streamed; labels as int64), or
    InvalidConfigError naming what is wrong."""
    streamed = isinstance(train_x, Dataset)
    if streamed != isinstance(test_x, Dataset):
        raise InvalidConfigError("the training mix and the test split must both be arrays or "
                                 "both image sources (torch Datasets)")
    if not streamed:
        train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    train_y = np.asarray(train_y).astype(np.int64, copy=False)
    test_y = np.asarray(test_y).astype(np.int64, copy=False)
    if len(train_x) == 0:
        raise InvalidConfigError("the training mix is empty: it has no image to train on")
    if len(test_x) == 0:
        raise InvalidConfigError("the test split is empty: there is no image to test on")
    if num_classes < 2:
        raise InvalidConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if streamed:
        if config.augment == meada.KIND:
            raise InvalidConfigError("meada grows the training set in memory: give it arrays, "
                                     "not streamed image sources")
        _check_source("training", train_x, train_y, num_classes, config.image_size)
        _check_source("test", test_x, test_y, num_classes, config.image_size)
    else:
        _check_split("training", train_x, train_y, num_classes, config.image_size)
        _check_split("test", test_x, test_y, num_classes, config.image_size)
    return train_x, train_y, test_x, test_y


def uses_synthetic_rows(config: EvalConfig) -> bool:
    """True when the recipe treats synthetic rows apart from real ones (a mixing option off
    its default), so that training needs to know which rows are synthetic."""
    return any(getattr(config, k) != v for k, v in SYN_DEFAULTS.items()
               if k != "curriculum_split")


def check_mixing(config: EvalConfig, n_real: int, n_syn: int) -> None:
    """Refuse mixing options that a mix of ``n_real`` real and ``n_syn`` synthetic images
    cannot serve (what ``train_classifier`` checks; a caller can check before a job starts).

    Raises:
        InvalidConfigError: a ratio or a curriculum without real or without synthetic
            images; separate BatchNorm statistics without real images (the test-time
            statistics come from them); a ratio in batches of fewer than 2 images.
    """
    both = {"syn_fraction": config.syn_fraction is not None,
            "curriculum": config.curriculum != "mixed"}
    for name, active in both.items():
        if active and not (n_real > 0 and n_syn > 0):
            raise InvalidConfigError(
                f"{name}={getattr(config, name)} needs real and synthetic images in the "
                f"training mix, got {n_real} real and {n_syn} synthetic")
    if config.syn_bn == "separate" and n_real == 0:
        raise InvalidConfigError(
            f"syn_bn=separate takes the test-time BatchNorm statistics from the real images, "
            f"and the training mix has none ({n_syn} synthetic)")
    if config.syn_fraction is not None and min(config.batch_size, n_real + n_syn) < 2:
        raise InvalidConfigError(
            f"syn_fraction needs batches of at least 2 images, got batch_size "
            f"{config.batch_size}")


def _synthetic_rows(is_synthetic: np.ndarray | None, n: int,
                    config: EvalConfig) -> torch.Tensor | None:
    """``is_synthetic`` as a (N,) bool CPU tensor, or None when not given; checked against
    the mix's size and what the mixing options need (``check_mixing``).

    Raises:
        InvalidConfigError: a mask of the wrong shape, a mixing option without a mask, or
            what ``check_mixing`` refuses.
    """
    if is_synthetic is None:
        if uses_synthetic_rows(config):
            changed = {k: getattr(config, k) for k, v in SYN_DEFAULTS.items()
                       if getattr(config, k) != v}
            raise InvalidConfigError(
                f"the recipe treats synthetic images apart ({changed}) but the training mix "
                f"does not say which are synthetic: pass is_synthetic")
        return None
    mask = np.asarray(is_synthetic)
    if mask.shape != (n,) or mask.dtype != np.bool_:
        raise InvalidConfigError(
            f"is_synthetic must be a ({n},) bool array, got {mask.dtype} {mask.shape}")
    n_syn = int(mask.sum())
    check_mixing(config, n - n_syn, n_syn)
    return torch.from_numpy(mask.copy())


def _epoch_batches(epoch: int, size: int, syn: torch.Tensor | None, sched: _Schedule,
                   config: EvalConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """The batches of ``epoch``: (B,) int64 CPU indices into the ``size`` training rows
    (the last batch may be shorter), drawn from the run's generator.

    - "mixed": one shuffle of all rows, cut into batches of B;
    - a curriculum: one shuffle of the synthetic rows (its first epochs), else the real ones;
    - ``syn_fraction``: one shuffle of the real rows, ``B - s`` per batch, joined by ``s``
      synthetic rows taken from successive shuffles of the synthetic ones (every synthetic
      image once before any twice, as many passes as the epoch needs), each batch shuffled.
    """
    b, steps = sched.batch, sched.epoch_steps[epoch]
    if config.syn_fraction is not None:
        real = torch.nonzero(~syn).squeeze(1)  # (n_real,)
        synth = torch.nonzero(syn).squeeze(1)  # (n_syn,)
        real = real[torch.randperm(real.numel(), generator=generator)]
        s = sched.syn_per_batch
        passes = math.ceil(steps * s / synth.numel())
        synth = synth[torch.cat([torch.randperm(synth.numel(), generator=generator)
                                 for _ in range(passes)])]  # (passes * n_syn,)
        batches = []
        for i in range(steps):
            idx = torch.cat([real[i * (b - s):(i + 1) * (b - s)], synth[i * s:(i + 1) * s]])
            batches.append(idx[torch.randperm(idx.numel(), generator=generator)])
        return batches
    if config.curriculum != "mixed":
        pool = torch.nonzero(syn if epoch < config.curriculum_epochs() else ~syn).squeeze(1)
        perm = pool[torch.randperm(pool.numel(), generator=generator)]
    else:
        perm = torch.randperm(size, generator=generator)
    return [perm[i * b:(i + 1) * b] for i in range(steps)]


def _rows_loss(logits: torch.Tensor, yb: torch.Tensor, criterion: nn.Module,
               kinds: torch.Tensor | None, config: EvalConfig) -> torch.Tensor:
    """The mean loss of this rank's rows: logits (b, C), labels (b,) or soft targets (b, C).
    With ``syn_weight`` != 1 a synthetic row's loss counts ``syn_weight`` times (kinds (b,)
    bool): ``sum_i w_i l_i / b``, so the real rows keep their weight."""
    if config.syn_weight == 1.0 or kinds is None:
        return criterion(logits, yb)
    per_row = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing,
                              reduction="none")  # (b,)
    weights = torch.where(kinds, config.syn_weight, 1.0).to(per_row.dtype)  # (b,)
    return (per_row * weights).mean()


def _model_and_optimizer(config: EvalConfig, num_classes: int, peak_lr: float,
                         ranks: Ranks) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``config.arch`` seeded by ``config.seed`` (the global RNG untouched), its BatchNorm
    over the whole batch of all ranks (with ``syn_bn="separate"``: of each kind of rows), on
    the device; SGD without decay on BN and biases."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_classifier(config.arch, num_classes, config.image_size)
    if config.syn_bn == "separate":  # own statistics for synthetic rows, over all ranks
        model = separate_batchnorm(model)
    else:
        model = ranks.sync_batchnorm(model)  # same parameters and state dict; alone: model
    model.to(device=ranks.device, memory_format=torch.channels_last)  # faster convs
    decay = [p for p in model.parameters() if p.ndim > 1]  # conv / linear weights
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN and biases
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return model, optimizer


def _skipped(idx: torch.Tensor, n: int, ranks: Ranks) -> bool:
    """A batch too small to train on: a lone last sample gives BatchNorm one value per
    channel (and every rank needs a row)."""
    return idx.numel() < max(2, ranks.world) and n > 1


def _selected(idx: torch.Tensor, rows: slice, extra: BatchAugment) -> torch.Tensor:
    """The rows of the batch ``idx`` (B,) whose images this rank reads: all of them when a
    policy or a mix draws through the batch, else this rank's ``rows``."""
    return idx if extra.policy is not None or extra.mix is not None else idx[rows]


def _batch(xu: torch.Tensor, yb: torch.Tensor, total: int, rows: slice,
           mean: torch.Tensor, std: torch.Tensor, config: EvalConfig, extra: BatchAugment,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's ``rows`` of the augmented batch of ``total`` images: (b, 3, S, S) floats
    and (b,) labels, or (b, C) soft targets after a mix.

    ``xu`` (k, 3, S, S) uint8 and ``yb`` (k,) are the images and labels of the rows
    ``_selected`` names (k = B with a policy or a mix, else b).

    uint8 -> (policy) -> normalised floats -> crop -> (mix). Every rank draws for the whole
    batch, so the rows are those one process would make: a policy or a mix draws through
    the batch, so with one every rank augments the whole batch and keeps its rows; the crop
    alone is drawn for the whole batch and applied to the rows only.
    """
    if extra.policy is not None or extra.mix is not None:
        xb = _normalise(extra.policy_batch(xu, generator), mean, std)  # (B, 3, S, S)
        xb = random_resized_crop(xb, generator, config.crop_scale_min, config.hflip)
        xb, yb = extra.mix_batch(xb, yb, generator)
        return xb[rows], yb[rows]
    xb = _normalise(xu, mean, std)  # (b, 3, S, S)
    if config.augment != "none":
        xb = random_resized_crop(xb, generator, config.crop_scale_min, config.hflip,
                                 total=total, rows=rows)
    return xb, yb


def _resume(path: Path | None, config: EvalConfig, fingerprint: str, model: nn.Module,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, xs: torch.Tensor,
            ys: torch.Tensor) -> tuple[int, float, dict[str, list[float]], torch.Tensor,
                                       torch.Tensor]:
    """Restore the checkpoint at ``path`` when there is one into the model, the optimiser and
    the generator; (epochs done, seconds spent, curves, xs and ys grown by the meada images
    of those epochs). Without one: (0, 0.0, empty curves, xs, ys)."""
    curves: dict[str, list[float]] = {"epoch": [], "train_loss": [], "test_loss": [],
                                      "test_top1": []}
    if path is None or not path.exists():
        return 0, 0.0, curves, xs, ys
    state = _load_checkpoint(path, config, fingerprint)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["rng"])
    if "meada_x" in state:  # the images of the phases run so far
        xs = torch.cat([xs, state["meada_x"].to(xs.device)])
        ys = torch.cat([ys, state["meada_y"].to(ys.device)])
    log.info("resuming classifier training from %s at epoch %d", path, int(state["epoch"]))
    return (int(state["epoch"]), float(state["seconds"]),
            {k: list(v) for k, v in state["curves"].items()}, xs, ys)


def _meada_phase(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, config: EvalConfig, generator: torch.Generator, epoch: int,
                 sched: _Schedule, progress: ProgressFn, cancel: CancelToken | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ME-ADA maximisation phase due at the start of ``epoch``: xs (N', 3, S, S) and ys
    (N',) with its adversarial images appended."""
    phase = meada.phase_at(config, epoch)
    progress(ProgressEvent(
        stage=STAGE, step=sched.first_step(epoch), total=sched.total_steps,
        message=f"ME-ADA phase {phase}/{config.meada_phases}: "
                f"{min(config.meada_batch, xs.shape[0])} images"))
    x_adv, y_adv = meada.maximisation_phase(model, xs, ys, mean, std, config, generator, cancel)
    xs, ys = torch.cat([xs, x_adv]), torch.cat([ys, y_adv])
    log.info("ME-ADA phase %d/%d: %d images appended, %d in the training set",
             phase, config.meada_phases, x_adv.shape[0], xs.shape[0])
    return xs, ys


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy (percent) of logits (M, C) against labels (M,)."""
    return topk_accuracy(logits, y, ks=(1,))["top1"]


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor | ImageStream, mean: torch.Tensor,
             std: torch.Tensor) -> torch.Tensor:
    """Logits (M, C) of the uint8 images (M, 3, H, W) (or the stream's scored split),
    batched, in eval mode, on the CPU."""
    model.eval()
    chunks = (x.test_chunks() if isinstance(x, ImageStream) else
              (x[i:i + EVAL_BATCH] for i in range(0, x.shape[0], EVAL_BATCH)))
    out = [torch.zeros(0, 0)]
    for xu in chunks:
        xb = _normalise(xu, mean, std)  # (b, 3, S, S)
        out.append(model(xb.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out[1:]) if len(out) > 1 else out[0]


@torch.no_grad()
def judge_images(model: nn.Module, source: Dataset, labels: np.ndarray, mean: torch.Tensor,
                 std: torch.Tensor, workers: int = 0, device: torch.device | str = "cpu",
                 cancel: CancelToken | None = None,
                 chunk: int = EVAL_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """A trained classifier's judgement of every image of ``source``: per image, the softmax
    probability of its own label and the class it predicts.

    Cost: one forward pass over the images, ``chunk`` at a time (read and decoded by
    ``workers`` DataLoader processes, as the streamed scored split), in eval mode, normalised
    with the training mix's ``mean`` / ``std`` as the scored split is; memory holds one chunk
    and the two (M,) outputs, never the (M, C) logits.

    Args:
        source: map-style dataset, item i a (S, S, 3) uint8 image (e.g. ``streams.ImageFiles``).
        labels: (M,) int labels in [0, C).
        mean, std: (3,) channel statistics of the training mix, in [0, 1] units.

    Returns:
        confidence (M,) float32 in [0, 1], predicted (M,) int32.

    Raises:
        InvalidConfigError: ``labels`` does not have one label per image.
        Cancelled: when ``cancel`` is set (checked between chunks).
    """
    labels = np.asarray(labels, dtype=np.int64)
    m = len(source)
    if labels.shape != (m,):
        raise InvalidConfigError(f"judging {m} images needs {m} labels, got {labels.shape}")
    device = torch.device(device)
    model.eval()
    loader = DataLoader(source, batch_size=chunk, shuffle=False, num_workers=workers,
                        collate_fn=_collate_uint8, worker_init_fn=_one_thread if workers else None,
                        multiprocessing_context="spawn" if workers else None)
    confidence = np.empty(m, dtype=np.float32)
    predicted = np.empty(m, dtype=np.int32)
    done = 0
    for xu in loader:  # (b, 3, S, S) uint8
        if cancel is not None and cancel.cancelled:
            raise Cancelled(f"cancelled while judging images ({done} of {m} done)")
        xb = _normalise(xu.to(device), mean.to(device), std.to(device))
        logits = model(xb.contiguous(memory_format=torch.channels_last)).float()  # (b, C)
        prob = torch.softmax(logits, dim=1)
        y = torch.from_numpy(labels[done:done + len(xu)]).to(prob.device)
        confidence[done:done + len(xu)] = prob.gather(1, y[:, None])[:, 0].cpu().numpy()
        predicted[done:done + len(xu)] = prob.argmax(1).cpu().numpy()
        done += len(xu)
    return confidence, predicted


def _final_metrics(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """top1, top5, per_class and confusion of test logits (M, C) against labels (M,)."""
    acc = topk_accuracy(logits, y, ks=(1, 5))
    return {"top1": acc["top1"], "top5": acc["top5"],
            "per_class": per_class_accuracy(logits, y, num_classes),
            "confusion": confusion_matrix(logits, y, num_classes).tolist()}


# ---------------------------------------------------------------------------------------------
# Training


def train_classifier(train_x: np.ndarray | Dataset, train_y: np.ndarray,
                     test_x: np.ndarray | Dataset, test_y: np.ndarray, num_classes: int,
                     config: EvalConfig,
                     out_dir: Path | None = None, progress: ProgressFn = no_progress,
                     cancel: CancelToken | None = None,
                     is_synthetic: np.ndarray | None = None,
                     judge: tuple[Dataset, np.ndarray] | None = None) -> dict[str, Any]:
    """Train ``config.arch`` from scratch on the training mix; test on the real test split.

    One path for 1..N processes: with ``WORLD_SIZE`` > 1 (torchrun) each rank trains on its
    rows of every batch and ``engine.torchrun.ranks.Ranks`` does the rest (DDP, BatchNorm
    over all ranks, the loss summed over them); alone, all of that is the identity.

    Two data paths, the same batches: arrays are held in memory as one uint8 tensor on the
    device; image sources (map-style torch Datasets whose item i is image i as (S, S, 3)
    uint8, e.g. ``engine.streams``) are read per batch by ``config.loader_workers``
    DataLoader processes (``ImageStream``), so memory does not grow with N. The channel
    statistics then take one pass over the mix first.

    Args:
        train_x: (N, S, S, 3) uint8 training mix, S = ``config.image_size``, or an image
            source of N images.
        train_y: (N,) int labels in [0, num_classes).
        test_x: (M, S, S, 3) uint8 held-out real images, or an image source (as ``train_x``).
        test_y: (M,) int labels.
        num_classes: C.
        config: the recipe (arch, epochs, batch size, lr at batch 256, warm-up, weight decay,
            label smoothing, augmentation, seed, device).
        out_dir: if given, ``out_dir/checkpoint.pt`` is written at the end of every epoch and
            training resumes from it when it exists (same config and data required).
        progress: receives stage "evaluate" events, step = optimiser steps done, with
            ``loss`` (running mean of the epoch) and, at epoch ends, ``top1`` on the test split.
        cancel: polled at every step; on cancel the last end-of-epoch checkpoint is kept
            and ``Cancelled`` is raised. With several processes, a cancel on any rank stops
            them all after the current step's forward pass.
        is_synthetic: (N,) bool, True for the synthetic rows of the mix; needed by the
            mixing options (``syn_weight``, ``syn_fraction``, ``syn_bn``, ``curriculum``),
            which at their defaults train synthetic rows exactly as real ones.
        judge: (images, labels): after training, rank 0 judges these images with the
            trained classifier (``judge_images``: one forward pass, in bounded chunks) and
            the result gains ``judged_confidence`` (M,) float32 and ``judged_predicted``
            (M,) int32 arrays, for the caller to save (they are not JSON).

    Returns:
        ``top1``, ``top5`` (percent; top5 is top-min(5, C)), ``per_class`` (C percents, NaN
        for a class without test image), ``confusion`` (C x C ints, row = true class),
        ``curves`` {"epoch", "train_loss", "test_loss", "test_top1"}, ``num_train``,
        ``num_test``, ``num_params``, ``seconds`` (training time, including before a resume),
        ``world_size``, ``rank``, ``data_path`` ("memory" or "stream"); with meada,
        ``meada_images`` (adversarial images appended, ``num_train`` staying the mix's
        size); with ``is_synthetic``, ``num_synthetic`` (synthetic images in the mix).
        With several processes (``WORLD_SIZE`` > 1) only rank 0 tests and returns all of
        this; every rank adds ``weights_digest`` (same on all ranks when they agree), and the
        other ranks return only ``world_size``, ``rank``, ``weights_digest``, ``curves``
        (train loss) and ``num_train``.

    Raises:
        InvalidConfigError: an empty training mix or test split, labels outside [0, C),
            images not at ``config.image_size``, a checkpoint from another config or data,
            a batch smaller than the number of processes, or mixing options the mix cannot
            serve (see ``check_mixing``).
        Cancelled: when ``cancel`` is set.
    """
    started = time.perf_counter()
    train_x, train_y, test_x, test_y = _checked_inputs(train_x, train_y, test_x, test_y,
                                                       num_classes, config)
    meada.check_one_process(config)  # before any process group
    ranks = Ranks(config.device)
    device = ranks.device
    if not ranks.main:
        progress = no_progress  # rank 0 reports for all

    n = len(train_y)  # the mix's size: the schedule's, even when meada grows xs
    syn = _synthetic_rows(is_synthetic, n, config)  # (N,) bool on the CPU, or None

    # 1. data: in memory, uint8 tensors on the device, decoded once; streamed, read per batch
    #    by loader workers. Normalisation from the training mix.
    ys = torch.from_numpy(train_y).to(device)  # (N,)
    yt = torch.from_numpy(test_y)  # (M,) on the CPU, for the metrics
    stream: ImageStream | None = None
    xs: Any = None
    if isinstance(train_x, Dataset):
        stream = ImageStream(train_x, test_x if ranks.main else Subset(test_x, []),
                             config.loader_workers, device)
        xt: Any = stream  # the scored split, read by _predict
        mean, std = (v.to(device) for v in chunks_channel_stats(stream.train_chunks()))
    else:
        xs = _to_tensor(train_x, device)  # (N, 3, S, S) uint8
        xt = _to_tensor(test_x if ranks.main else test_x[:0], device)  # (M, 3, S, S), rank 0
        mean, std = channel_stats(xs)
    try:
        return _train(train_y, test_y, num_classes, config, out_dir, progress, cancel, syn,
                      started, ranks, xs, ys, xt, yt, stream, mean, std, judge=judge)
    finally:
        if stream is not None:
            stream.close()


def _train(train_y: np.ndarray, test_y: np.ndarray, num_classes: int, config: EvalConfig,
           out_dir: Path | None, progress: ProgressFn, cancel: CancelToken | None,
           syn: torch.Tensor | None, started: float, ranks: Ranks, xs: torch.Tensor | None,
           ys: torch.Tensor, xt: Any, yt: torch.Tensor, stream: ImageStream | None,
           mean: torch.Tensor, std: torch.Tensor,
           judge: tuple[Dataset, np.ndarray] | None = None) -> dict[str, Any]:
    """``train_classifier`` from its step 2 on: the data ready in memory (``xs``, ``xt``)
    or as a ``stream``; ``syn`` the (N,) synthetic rows or None; ``judge`` images to judge
    at the end (rank 0)."""
    device = ranks.device
    n = len(train_y)
    n_syn = int(syn.sum()) if syn is not None else 0
    sched = _Schedule.of(n, n_syn, config)
    batch = sched.batch
    # the kind of each row, for the loss weight and separate BatchNorm statistics
    kinds_all = (syn.to(device) if syn is not None and
                 (config.syn_weight != 1.0 or config.syn_bn == "separate") else None)
    if batch < ranks.world:
        raise InvalidConfigError(
            f"a batch of {batch} images cannot be split between {ranks.world} processes")

    # 2. model, optimiser, loss, the data generator (shuffles, crops, augmentation seeds)
    model, optimizer = _model_and_optimizer(config, num_classes, sched.peak_lr, ranks)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)  # on the CPU
    extra = BatchAugment(config, num_classes)  # policy / batch mix on top of the crop

    # 3. resume: weights, optimiser, generator, curves, the meada images of the epochs done
    shape = (n, config.image_size, config.image_size, 3)  # as the array's, streamed or not
    fingerprint = _fingerprint(train_y, shape, test_y, num_classes,
                               syn if uses_synthetic_rows(config) else None)
    ckpt_path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    start_epoch, seconds_before, curves, xs, ys = _resume(ckpt_path, config, fingerprint, model,
                                                          optimizer, generator, xs, ys)
    wrapped = ranks.wrap(model)  # DDP with several processes (all start from rank 0's)

    for epoch in range(start_epoch, config.epochs):
        # 4. meada: a maximisation phase may first append adversarial images to xs; an
        #    epoch stays its scheduled number of batches of B images, drawn without
        #    replacement from the grown set (the schedule is the mix's)
        if meada.phase_at(config, epoch):
            xs, ys = _meada_phase(model, xs, ys, mean, std, config, generator, epoch, sched,
                                  progress, cancel)
        model.train()
        batches = _epoch_batches(epoch, n if xs is None else xs.shape[0], syn, sched, config,
                                 generator)
        report_every = max(1, len(batches) // REPORTS_PER_EPOCH)
        # streamed: the loader reads the images of the batches the loop trains on, in order
        images = None if stream is None else stream.train_batches(
            [_selected(idx, ranks.rows(idx.numel()), extra) for idx in batches
             if not _skipped(idx, n, ranks)])
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for i, idx in enumerate(batches):
            step = sched.first_step(epoch) + i
            idx = idx.to(device)
            if _skipped(idx, n, ranks):
                continue  # a lone last sample gives BatchNorm one value per channel
            # 5. this rank's rows of the augmented batch, (b, 3, S, S), and their kinds (b,)
            rows = ranks.rows(idx.numel())
            sel = _selected(idx, rows, extra)
            xu = xs[sel] if images is None else next(images)  # (k, 3, S, S) uint8
            xb, yb = _batch(xu, ys[sel], idx.numel(), rows, mean, std, config, extra, generator)
            kinds = kinds_all[idx[rows]] if kinds_all is not None else None
            # 6. forward at the scheduled rate; the rows' mean loss, weighted by b * W / B
            #    so that DDP's mean of the gradients over the ranks is the whole batch's
            lr = lr_at(step, sched.total_steps, sched.warmup_steps, sched.peak_lr,
                       config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with (batch_domains(model, kinds) if config.syn_bn == "separate"
                  else contextlib.nullcontext()):
                logits = wrapped(xb.contiguous(memory_format=torch.channels_last))  # (b, C)
            rows_loss = _rows_loss(logits, yb, criterion, kinds, config)
            loss = rows_loss * (ranks.world * xb.shape[0] / idx.numel())
            # 7. one collective: the batch's summed loss, and whether any rank was cancelled
            summed, stop = ranks.sum([float(rows_loss.detach() * xb.shape[0]),
                                      float(cancel is not None and cancel.cancelled)])
            if stop:
                raise Cancelled(f"cancelled at step {step + 1}; the checkpoint of epoch "
                                f"{epoch} is kept")
            if not math.isfinite(summed):
                raise StudioError(
                    f"classifier loss became {summed / idx.numel()} at step {step + 1}; "
                    f"try a lower learning_rate (now {config.learning_rate})")
            # 8. backward (DDP averages the gradients), SGD step
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += torch.tensor(summed, device=device)
            seen += idx.numel()
            if (i + 1) % report_every == 0 and i + 1 < len(batches):
                progress(ProgressEvent(
                    stage=STAGE, step=step + 1, total=sched.total_steps,
                    metrics={"loss": float(loss_sum) / max(1, seen), "lr": lr},
                    message=f"epoch {epoch + 1}/{config.epochs}"))

        # 9. end of the epoch: the curves; rank 0 tests on the held-out split
        train_loss = float(loss_sum) / max(1, seen)
        curves["epoch"].append(epoch + 1)
        curves["train_loss"].append(train_loss)
        elapsed = seconds_before + time.perf_counter() - started
        if not ranks.main:
            continue
        logits_t = _predict(model, xt, mean, std)  # (M, C)
        test_loss, top1 = float(F.cross_entropy(logits_t, yt)), _top1(logits_t, yt)
        curves["test_loss"].append(test_loss)
        curves["test_top1"].append(top1)
        log.info("epoch %d/%d: train loss %.4f, test loss %.4f, test top-1 %.2f %% (%.1f s)",
                 epoch + 1, config.epochs, train_loss, test_loss, top1, elapsed)

        # 10. checkpoint, then report (a cancel set by the report keeps this checkpoint)
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, {
                "version": CHECKPOINT_VERSION, "config": _config_key(config),
                "fingerprint": fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": generator.get_state(),
                "curves": curves, "seconds": elapsed,
                **({"meada_x": xs[n:].cpu(), "meada_y": ys[n:].cpu()}
                   if config.augment == meada.KIND else {})})
        progress(ProgressEvent(
            stage=STAGE, step=sched.first_step(epoch + 1), total=sched.total_steps,
            metrics={"loss": train_loss, "test_loss": test_loss, "top1": top1},
            message=f"epoch {epoch + 1}/{config.epochs}"))

    # 11. final metrics on the test split (rank 0); the weights' digest to compare ranks
    parallel: dict[str, Any] = {"world_size": ranks.world, "rank": ranks.rank}
    if ranks.world > 1:
        parallel["weights_digest"] = weights_digest(model)
    if not ranks.main:
        return {**parallel, "curves": {"epoch": curves["epoch"],
                                       "train_loss": curves["train_loss"]},
                "num_train": int(n)}
    judged: dict[str, Any] = {}
    if judge is not None:  # 12. one forward pass over the images to judge
        progress(ProgressEvent(stage=STAGE, step=sched.total_steps, total=sched.total_steps,
                               message=f"judging {len(judge[0]):,} images"))
        confidence, predicted = judge_images(model, judge[0], judge[1], mean, std,
                                             workers=config.loader_workers, device=device,
                                             cancel=cancel)
        judged = {"judged_confidence": confidence, "judged_predicted": predicted}
    return {
        **parallel,
        **_final_metrics(_predict(model, xt, mean, std), yt, num_classes),
        "curves": curves,
        "num_train": int(n),
        "num_test": int(len(yt)),
        "data_path": "memory" if stream is None else "stream",
        "num_params": sum(p.numel() for p in model.parameters()),
        "seconds": seconds_before + time.perf_counter() - started,
        **({"meada_images": int(xs.shape[0] - n)} if config.augment == meada.KIND else {}),
        **({"num_synthetic": n_syn} if syn is not None else {}),
        **judged,
    }
