"""Representation-conditioned diffusion: the denoiser, its training loop and its samplers.

    model       RCDM (UNet2DConditionModel + conditioner), build/save/load
    training    train_rcdm: EMA, previews, checkpoints with exact resume, 1..N processes
                (engine.torchrun); train_rcdm_files: the same on rows of .npy files
    training_ranks  the torchrun entry point of one rank, and launch_train_rcdm
    latent      the VAE latent space and its cache
    sample      make_scheduler, sample_images (any diffusers scheduler of the DDPM family by
                name: ddpm, ddim, dpm++, EulerDiscreteScheduler, ...; seeded per sample, CFG)
    conditions  the conditioning space: variations, interpolation, mix-up, class samples,
                seeded perturbation of any of them
    generation  generate_plan / generate_variations: seeded images written as PNG, WebP or
                JPEG (a subset of a plan's samples for one shard; sharding itself is
                engine.stages.shard_stage)

Nothing here opens the project: the stages read and write its rows.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562): importing a light submodule such as ``engine.rcdm.presets``
# (the studio's Train form) must not pull in diffusers and torch (about 10 s at start-up).
_LAZY = {"generate_variations": "generation", "RCDM": "model", "build_rcdm": "model",
         "load_rcdm": "model", "save_rcdm": "model", "make_scheduler": "sample",
         "sample_images": "sample", "train_rcdm": "training"}

__all__ = ["RCDM", "build_rcdm", "load_rcdm", "save_rcdm", "train_rcdm", "make_scheduler",
           "sample_images", "generate_variations"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"engine.rcdm.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine.rcdm' has no attribute {name!r}")
