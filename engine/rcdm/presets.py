"""Named TrainConfig presets: a tiny pixel-space U-Net for CPUs, the paper's 256 px latent RCDM.

    quick         the quick demo's denoiser: 16 px pixel space, block_channels (16, 32),
                  0.27 M parameters, 400 steps at batch 64 (the studio's default on a CPU)
    tiny-cpu      the engine's defaults: 16 px pixel space, block_channels (32, 64), 1.0 M
                  parameters, 1,500 steps (tens of minutes on a 2-core CPU)
    imagenet256   256 px images -> 32x32x4 Stable Diffusion VAE latents, block_channels
                  (256, 512, 768, 768), 2 layers per block, cross-attention at 16, 8, 4 and the
                  middle block (the 32x32 level is a plain ResNet level), 768-wide tokens,
                  batch 16, lr 1e-4, the paper's 125 epochs expressed as optimiser steps

``preset_config(name, num_images=..., **overrides)`` gives the TrainConfig; its ``steps`` are
``ceil(125 * num_images / batch_size)`` for the epoch-based presets.
"""

from __future__ import annotations

import math
from typing import Any

from engine.config import QUICK_TRAIN, TrainConfig
from engine.errors import InvalidConfigError

IMAGENET100_TRAIN_IMAGES = 130_000  # about 1,300 images per class x 100 classes
PAPER_EPOCHS = 125

PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(QUICK_TRAIN),
    "tiny-cpu": {},
    "imagenet256": dict(
        space="latent", vae_id="stabilityai/sd-vae-ft-mse", image_size=256,
        block_channels=(256, 512, 768, 768), layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=64, cond_tokens=1, batch_size=16, learning_rate=1e-4,
        warmup_steps=1000, weight_decay=0.0, ema_decay=0.9999, hflip=True,
        min_snr_gamma=5.0, precision="bf16", device="cuda", checkpoint_every=5000,
        preview_every=5000),
}
EPOCHS = {"imagenet256": PAPER_EPOCHS}
# What each preset's U-Net denoises, for counting parameters without a VAE at hand:
# (channels, size); the SD VAE gives 4 channels at 1/8 of the image size.
SAMPLE_SHAPES = {"quick": (3, TrainConfig.image_size), "tiny-cpu": (3, TrainConfig.image_size),
                 "imagenet256": (4, 32)}


def preset_config(name: str, num_images: int | None = None, **overrides: Any) -> TrainConfig:
    """The TrainConfig of preset ``name``; ``overrides`` win over the preset's values.

    Args:
        num_images: training images, for presets defined in epochs (default: ImageNet-100's
            ~130k); ignored when ``steps`` is overridden.
    """
    if name not in PRESETS:
        raise InvalidConfigError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    values = dict(PRESETS[name])
    if name in EPOCHS and "steps" not in overrides:
        n = int(num_images or IMAGENET100_TRAIN_IMAGES)
        batch = int(overrides.get("batch_size", values["batch_size"]))
        values["steps"] = math.ceil(EPOCHS[name] * n / batch)
    values.update(overrides)
    return TrainConfig(**values)


def preset_parameters(name: str, cond_dim: int = 768) -> int:
    """Parameters of the RCDM of preset ``name`` (built on the meta device: no memory)."""
    import torch

    from engine.rcdm.model import build_rcdm, count_parameters

    config = preset_config(name)
    with torch.device("meta"):
        model = build_rcdm(config, cond_dim, SAMPLE_SHAPES[name])
    return count_parameters(model)
