"""ME-ADA: maximum-entropy adversarial data augmentation, a classical baseline of the lab.

ADA (Volpi et al., NeurIPS 2018) and its maximum-entropy extension ME-ADA (Zhao et al.,
NeurIPS 2020) alternate two phases while a classifier trains:

- minimisation: ordinary SGD on the current training set (``train.py``'s loop, crop included);
- maximisation, ``K = config.meada_phases`` times: images of the current training set are
  moved by ``T_adv = config.meada_adv_steps`` steps of gradient *ascent*, from ``x' = x``, on

      CE(f(x'), y) + eta * H(softmax(f(x'))) - gamma * mean_d (phi(x') - phi(x))_d ** 2

  where ``phi`` is the classifier's penultimate features (the input of its last linear layer,
  D values) and ``H`` the entropy of the prediction; the results, with the labels of their
  originals, are *appended* to the training set, which grows with every phase.

How this implementation reads the paper and its reference code:

- T_min is counted in epochs: phase j (1..K) runs at the start of epoch ``j * T_min``
  (0-based), i.e. after ``j * T_min`` epochs of minimisation. ``meada_every = 0`` (the
  default) spreads the phases evenly: ``T_min = epochs // (K + 1)`` (30 epochs, K = 2: after
  epochs 10 and 20; the reference CIFAR script uses T_min = 10 of 100 epochs).
- A phase perturbs ``min(meada_batch, current size)`` images of the *current* set, earlier
  adversarial images included, as the reference code does with the whole grown set; when the
  set is larger than ``meada_batch``, a random subset drawn from the run's generator.
- The objective is per image (summed over a chunk of ``batch_size`` images), so
  ``meada_adv_lr`` is the step of one image whatever the chunk size, and the chunks do not
  interact (BatchNorm is in eval mode). The semantic term is the mean over the D features,
  as the reference code's ``MSELoss``, so ``gamma`` weighs the same for any feature width.
  The reference code's CIFAR step, 20 on a batch-mean objective at batch 128 and pixels in
  [-1, 1], is about 0.16 per image there and about 0.6 in our units (pixels / channel std,
  std about 0.25); the default 1.0 is of that order. Plain gradient ascent vanishes on images
  the model is very sure of and the result is rounded to uint8, so each phase logs the mean
  change in pixel levels: a phase that moves nothing needs a larger ``meada_adv_lr``.
- The ascent runs on normalised floats (the mix's channel mean and std, as training sees
  them), with the model in eval mode (running BatchNorm statistics, no update) and its
  parameters frozen (no gradient reaches them). The result is mapped back to uint8 (rounded,
  clamped to [0, 255]) and appended to the uint8 training tensor; the crop then applies to it
  like to any image.
- The learning-rate schedule stays the one of the original mix: ``train.py`` keeps
  ``steps_per_epoch = ceil(N / B)`` for the real mix size N, and each epoch draws that many
  batches without replacement from the grown set. ME-ADA therefore gets the same number of
  SGD steps as every other baseline; the maximisation phases are its extra cost.
- One process only: the grown set lives in one process's memory and its checkpoint.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import EvalConfig
from engine.errors import InvalidConfigError
from engine.progress import CancelToken

log = logging.getLogger(__name__)

KIND = "meada"


def check_one_process(config: EvalConfig) -> None:
    """Refuse ME-ADA under several processes (``WORLD_SIZE`` > 1), before any process group.

    Raises:
        InvalidConfigError: ``config.augment == "meada"`` and ``WORLD_SIZE`` > 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.augment == KIND and world > 1:
        raise InvalidConfigError(
            f"meada runs on one process (the growing training set is not shared between "
            f"processes); got WORLD_SIZE={world}: run it with processes=1")


def phase_every(config: EvalConfig) -> int:
    """T_min in epochs: ``config.meada_every``, or ``epochs // (K + 1)`` when it is 0."""
    if config.meada_every > 0:
        return config.meada_every
    return max(1, config.epochs // (config.meada_phases + 1))


def phase_at(config: EvalConfig, epoch: int) -> int:
    """The phase (1..K) that runs at the start of 0-based ``epoch``, or 0 for none."""
    if config.augment != KIND or epoch <= 0:
        return 0
    every = phase_every(config)
    if epoch % every or epoch // every > config.meada_phases:
        return 0
    return epoch // every


def penultimate(model: nn.Module) -> nn.Linear:
    """The classifier's last linear layer, whose input is ``phi``, the penultimate features.

    Raises:
        InvalidConfigError: a model without a linear layer.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidConfigError(
            f"meada needs a classifier ending in a linear layer, {type(model).__name__} has none")
    return linears[-1]


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> normalised float32, as ``train.py`` feeds the model."""
    return (x.float() / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised float (B, 3, S, S) -> uint8 pixels, rounded and clamped to [0, 255]."""
    pixels = (x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)) * 255.0
    return pixels.round().clamp(0.0, 255.0).to(torch.uint8)


def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor,
            std: torch.Tensor, config: EvalConfig) -> torch.Tensor:
    """ME-ADA's gradient ascent on a chunk of images.

    Args:
        model: the classifier being trained; put in eval mode with frozen parameters for the
            ascent, its mode and ``requires_grad`` flags restored afterwards.
        x: (B, 3, S, S) uint8 images, y: (B,) int labels.
        mean, std: (3,) channel statistics of the training mix in [0, 1] units.
        config: ``meada_adv_steps``, ``meada_adv_lr``, ``meada_eta``, ``meada_gamma``.

    Returns:
        (B, 3, S, S) uint8 perturbed images.
    """
    head = penultimate(model)
    seen: dict[str, torch.Tensor] = {}

    def keep_features(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        seen["phi"] = inputs[0].flatten(1)  # (B, D)

    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    hook = head.register_forward_hook(keep_features)
    model.eval()  # running BatchNorm statistics, none updated
    model.requires_grad_(False)  # the parameters take no gradient and no step
    try:
        # 1. the starting point and its features phi(x), (B, D)
        x0 = _normalise(x, mean, std)  # (B, 3, S, S)
        with torch.no_grad():
            model(x0.contiguous(memory_format=torch.channels_last))
        phi0 = seen["phi"].detach()
        xa = x0.clone()
        for _ in range(config.meada_adv_steps):
            # 2. the objective, summed over the chunk of per-image objectives
            xa.requires_grad_(True)
            logits = model(xa.contiguous(memory_format=torch.channels_last))  # (B, C)
            logp = F.log_softmax(logits.float(), dim=1)
            ce = F.nll_loss(logp, y, reduction="sum")
            entropy = -(logp.exp() * logp).sum()
            distance = (seen["phi"].float() - phi0).pow(2).mean(dim=1).sum()
            objective = ce + config.meada_eta * entropy - config.meada_gamma * distance
            # 3. one ascent step on the images only
            (grad,) = torch.autograd.grad(objective, xa)
            xa = (xa + config.meada_adv_lr * grad).detach()
        return _to_uint8(xa, mean, std)
    finally:
        hook.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def maximisation_phase(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor,
                       mean: torch.Tensor, std: torch.Tensor, config: EvalConfig,
                       generator: torch.Generator,
                       cancel: CancelToken | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One maximisation phase over the current training set.

    Args:
        model: the classifier (its mode and parameters come back unchanged).
        xs: (N', 3, S, S) uint8 current training set (real mix + earlier phases' images).
        ys: (N',) int labels.
        mean, std: (3,) channel statistics of the real training mix.
        config: the recipe; ``meada_batch`` caps the number of images, ``batch_size`` is the
            chunk size of the ascent.
        generator: the run's CPU generator; drawn from only when ``N' > meada_batch``.
        cancel: polled between chunks.

    Returns:
        ``x (A, 3, S, S) uint8`` perturbed images and their labels ``y (A,)``, ``A = min(N',
        meada_batch)``, to append to the training set.
    """
    total = xs.shape[0]
    count = min(config.meada_batch, total)
    if count < total:
        pick = torch.randperm(total, generator=generator)[:count].to(xs.device)
    else:
        pick = torch.arange(total, device=xs.device)
    out = []
    for i in range(0, count, config.batch_size):
        if cancel is not None:
            cancel.raise_if_cancelled()
        idx = pick[i:i + config.batch_size]
        out.append(perturb(model, xs[idx], ys[idx], mean, std, config))
    x_new = torch.cat(out)  # (A, 3, S, S) uint8
    change = (x_new.float() - xs[pick].float()).abs().mean()
    log.info("ME-ADA: %d images perturbed, mean change %.3f pixel levels", count, float(change))
    return x_new, ys[pick].clone()
