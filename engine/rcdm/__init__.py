"""Representation-conditioned diffusion: the denoiser, its training loop and its samplers.

    model     RCDM (UNet2DConditionModel + conditioner), build/save/load
    train     train_rcdm: EMA, previews, checkpoints with exact resume
    sample    make_scheduler, sample_images (DDPM / DDIM / DPM-Solver++, seeded per sample, CFG)
    generate  generate_variations: seeded variations of real images written as PNGs
"""

from engine.rcdm.generate import generate_variations
from engine.rcdm.model import RCDM, build_rcdm, load_rcdm, save_rcdm
from engine.rcdm.sample import make_scheduler, sample_images
from engine.rcdm.train import train_rcdm

__all__ = ["RCDM", "build_rcdm", "load_rcdm", "save_rcdm", "train_rcdm", "make_scheduler",
           "sample_images", "generate_variations"]
