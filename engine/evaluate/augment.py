"""Classical augmentations of a training batch: the baselines synthetic data is compared to.

Every augmentation but "none" starts from the recipe's random-resized crop (``train.py``) and
adds one of torchvision's ``transforms.v2`` baselines:

- "autoaugment" (ImageNet policy) and "randaugment" (``ops`` operations at ``magnitude``):
  a policy drawn per image, applied to the uint8 images before they are normalised;
- "mixup" and "cutmix": a batch transform on the normalised floats that mixes each image
  with its neighbour in the batch and returns soft targets ``(B, C)``.

torchvision draws from the global torch RNG; each batch here draws one seed from the
training loop's own generator and runs the transform under a forked, re-seeded RNG, so a
run is reproducible for its seed (and across a resume) without touching the caller's RNG.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from engine.config import EvalConfig
from engine.errors import InvalidConfigError

log = logging.getLogger(__name__)

POLICIES = ("autoaugment", "randaugment")
BATCH_MIXES = ("mixup", "cutmix")


def batch_seed(generator: torch.Generator) -> int:
    """A seed for one batch's transform, drawn from the loop's CPU generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def _policy(config: EvalConfig) -> Any:
    from torchvision.transforms import v2

    if config.augment == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    if config.augment == "randaugment":
        return v2.RandAugment(num_ops=config.randaugment_ops,
                              magnitude=config.randaugment_magnitude)
    raise InvalidConfigError(f"{config.augment!r} is not a policy augmentation {POLICIES}")


def _batch_mix(config: EvalConfig, num_classes: int) -> Any:
    from torchvision.transforms import v2

    if config.augment == "mixup":
        return v2.MixUp(alpha=config.mixup_alpha, num_classes=num_classes)
    if config.augment == "cutmix":
        return v2.CutMix(alpha=config.cutmix_alpha, num_classes=num_classes)
    raise InvalidConfigError(f"{config.augment!r} is not a batch augmentation {BATCH_MIXES}")


class BatchAugment:
    """The per-batch part of ``config.augment`` that comes on top of the crop.

    Args:
        config: the recipe; ``augment`` picks the transform, the other fields its strength.
        num_classes: C, the width of the soft targets of mixup / cutmix.
    """

    def __init__(self, config: EvalConfig, num_classes: int) -> None:
        self.kind = config.augment
        self.policy = _policy(config) if self.kind in POLICIES else None
        self.mix = _batch_mix(config, num_classes) if self.kind in BATCH_MIXES else None

    @property
    def soft_targets(self) -> bool:
        """True when ``mix_batch`` turns the labels into (B, C) probabilities."""
        return self.mix is not None

    def policy_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Apply the policy to each image of a uint8 batch (B, 3, H, W); identity without one.

        A policy draws its operations per image, as in the papers (not once per batch).
        """
        if self.policy is None:
            return x
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed(generator))
            return torch.stack([self.policy(img) for img in x])  # (B, 3, H, W) uint8

    def mix_batch(self, x: torch.Tensor, y: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup / cutmix of a float batch: ``x (B, 3, H, W)``, ``y (B,)`` int labels ->
        mixed ``x (B, 3, H, W)`` and soft targets ``(B, C)``; identity without a mix."""
        if self.mix is None:
            return x, y
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed(generator))
            return self.mix(x, y)
