"""Classifiers trained to measure a training mix: a tiny ResNet for toy sizes, torchvision ResNets.

``build_classifier`` returns an ``nn.Module`` mapping images ``(B, 3, H, W)`` (normalised floats)
to logits ``(B, num_classes)``. Weights are always initialised from scratch: the point of an
evaluation is the value of the training data, not of a pretrained backbone.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.config import CLASSIFIERS
from engine.errors import InvalidConfigError

log = logging.getLogger(__name__)

SMALL_IMAGE = 64  # below this side the torchvision stem (7x7 stride 2 + max-pool) is replaced


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, c_in, H, W) -> (B, c_out, H / stride, W / stride)
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + self.shortcut(x))


class ResNetTiny(nn.Module):
    """A small ResNet for small images: 3x3 stem, one stage per width, global average pool.

    With the default widths (32, 64, 128) and one block per stage it has about 0.29 M
    parameters; at 16x16 the stages see 16x16, 8x8 and 4x4 feature maps.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128),
                 blocks_per_stage: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        c_in = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(c_in, width, stride))
                c_in = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # No zero-init of the residual branches' last BN: on short schedules (10-30 epochs of
        # a small set) it slowed learning a lot (digits, 4 epochs: 91 % vs 99 % top-1).

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W) -> logits (B, num_classes)
        h = self.stages(self.stem(x))  # (B, C_last, H / 4, W / 4)
        return self.head(h.mean(dim=(2, 3)))


def build_classifier(arch: str, num_classes: int, image_size: int) -> nn.Module:
    """Build an untrained classifier.

    Args:
        arch: "resnet_tiny", "resnet18" or "resnet50".
        num_classes: number of output logits (>= 2).
        image_size: side of the square input images in pixels; below 64 the torchvision
            ResNets get a 3x3 stride-1 stem without max-pool (the CIFAR variant), so that a
            16x16 image is not reduced to 1x1 before the last stage.

    Returns:
        A module mapping ``(B, 3, image_size, image_size)`` floats to ``(B, num_classes)`` logits.

    Raises:
        InvalidConfigError: unknown arch, fewer than 2 classes, or an image size below 4.
    """
    if arch not in CLASSIFIERS:
        raise InvalidConfigError(f"classifier arch must be one of {CLASSIFIERS}, got {arch!r}")
    if num_classes < 2:
        raise InvalidConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if image_size < 4:
        raise InvalidConfigError(f"classifier image_size must be >= 4, got {image_size}")
    if arch == "resnet_tiny":
        return ResNetTiny(num_classes)

    import torchvision

    factory = {"resnet18": torchvision.models.resnet18,
               "resnet50": torchvision.models.resnet50}[arch]
    model = factory(weights=None, num_classes=num_classes)
    if image_size < SMALL_IMAGE:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
