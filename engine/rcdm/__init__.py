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

from engine.rcdm.generation import generate_variations
from engine.rcdm.model import RCDM, build_rcdm, load_rcdm, save_rcdm
from engine.rcdm.sample import make_scheduler, sample_images
from engine.rcdm.training import train_rcdm

__all__ = ["RCDM", "build_rcdm", "load_rcdm", "save_rcdm", "train_rcdm", "make_scheduler",
           "sample_images", "generate_variations"]
