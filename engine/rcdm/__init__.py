"""Representation-conditioned diffusion: the denoiser, its training loop and its samplers.

    model     RCDM (UNet2DConditionModel + conditioner), build/save/load
    train     train_rcdm: EMA, previews, checkpoints with exact resume
    sample    make_scheduler, sample_images (any diffusers scheduler of the DDPM family by
              name: ddpm, ddim, dpm++, EulerDiscreteScheduler, ...; seeded per sample, CFG)
    conditions  the conditioning space: variations, interpolation, mix-up, class samples
    generate  generate_plan / generate_variations: seeded images written as PNGs
    shard     sharded generation: shard K of P of a plan, merged back into the project
"""

from engine.rcdm.generation import generate_variations
from engine.rcdm.model import RCDM, build_rcdm, load_rcdm, save_rcdm
from engine.rcdm.sample import make_scheduler, sample_images
from engine.rcdm.training import train_rcdm

__all__ = ["RCDM", "build_rcdm", "load_rcdm", "save_rcdm", "train_rcdm", "make_scheduler",
           "sample_images", "generate_variations"]
