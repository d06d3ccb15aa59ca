"""Sampling from an RCDM: DDPM, DDIM and DPM-Solver++ from diffusers, seeded per sample.

Every sample owns a ``torch.Generator(seed)`` on the CPU that draws its initial noise and,
for DDPM, its noise at every step. A sample therefore depends only on
(model, representation, seed, sampler, steps, guidance), not on the batch it is drawn in.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from engine.config import SAMPLERS, GenerateConfig, TrainConfig
from engine.errors import InvalidConfigError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.rcdm.model import RCDM

log = logging.getLogger(__name__)


def make_scheduler(sampler: str, config: TrainConfig):
    """The diffusers scheduler for ``sampler`` with the training's noise schedule.

    "ddpm" -> DDPMScheduler (ancestral, stochastic), "ddim" -> DDIMScheduler (eta 0),
    "dpm++" -> DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"). All use
    ``timestep_spacing="trailing"`` so that the first step starts from pure noise
    (t = num_train_timesteps - 1) whatever the number of steps.
    """
    common = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        timestep_spacing="trailing",
    )
    if sampler == "ddpm":
        return DDPMScheduler(**common, clip_sample=True)
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=True)
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++")
    raise InvalidConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def guided_eps(model: RCDM, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
               guidance: float) -> torch.Tensor:
    """Model output with classifier-free guidance.

    Args:
        x: (B, C, H, W) current samples; t: (B,) timesteps; cond: (B, D) representations.
        guidance: g; 1.0 is one conditional pass; otherwise
            ``eps = eps_null + g * (eps_cond - eps_null)`` with both passes in one batch.

    Returns:
        (B, C, H, W) predicted noise.
    """
    if guidance == 1.0:
        return model(x, t, cond, None)
    b = x.shape[0]
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]),
                drop.to(x.device))  # (2B, C, H, W)
    eps_cond, eps_null = out[:b], out[b:]
    return eps_null + guidance * (eps_cond - eps_null)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def sample_images(model: RCDM, cond: np.ndarray, seeds: np.ndarray, config: GenerateConfig,
                  progress: ProgressFn = no_progress, cancel: CancelToken | None = None
                  ) -> np.ndarray:
    """Draw one image per (representation, seed).

    Args:
        model: a trained RCDM (its sample size and channels give H, W, C).
        cond: (N, D) float32 representations.
        seeds: (N,) integer seeds, one per sample.
        config: sampler, steps, guidance, batch_size, device.

    Returns:
        (N, H, W, C) uint8 images.
    """
    cond = np.asarray(cond, dtype=np.float32)
    seeds = np.asarray(seeds).astype(np.int64).reshape(-1)
    if cond.ndim != 2 or cond.shape[1] != model.cond_dim:
        raise InvalidConfigError(
            f"cond must have shape (N, {model.cond_dim}), got {cond.shape}")
    if len(seeds) != len(cond):
        raise InvalidConfigError(f"got {len(seeds)} seeds for {len(cond)} representations")
    train_config = model.train_config  # the noise schedule the model was trained with
    device = torch.device(config.device)
    was_training = model.training
    model.eval().to(device)
    c_, size = int(model.unet.config.in_channels), int(model.unet.config.sample_size)
    n, bs = len(cond), config.batch_size
    total_batches = max(1, -(-n // bs))
    out = np.zeros((n, size, size, c_), dtype=np.uint8)
    for bi, start in enumerate(range(0, n, bs)):
        stop = min(n, start + bs)
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start:stop]]
        c = torch.from_numpy(cond[start:stop]).to(device)  # (b, D)
        # Initial noise, one generator per sample, drawn on the CPU: (b, C, H, W)
        x = torch.cat([torch.randn((1, c_, size, size), generator=g) for g in gens]).to(device)
        scheduler = make_scheduler(config.sampler, train_config)
        with warnings.catch_warnings():
            # diffusers' DPM-Solver calls np.array(tensor), which numpy 2 flags as deprecated
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message="__array__ implementation doesn't accept")
            scheduler.set_timesteps(config.steps, device=device)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            if cancel is not None:
                cancel.raise_if_cancelled()
            x_in = scheduler.scale_model_input(x, t)
            tt = torch.full((x.shape[0],), int(t), device=device, dtype=torch.long)
            # 1. predict noise, conditional pass plus (when guided) the null pass, one batch
            # 2. guidance: eps = eps_null + g * (eps_cond - eps_null)
            eps = guided_eps(model, x_in, tt, c, config.guidance)  # (b, C, H, W)
            # 3. previous x_t: x_t -> x_{t-1}; DDPM draws each sample's noise from its own
            #    generator (diffusers' randn_tensor accepts one generator per batch row)
            x = scheduler.step(eps, t, x, generator=gens).prev_sample
        out[start:stop] = to_uint8(x)
        progress(ProgressEvent(stage="sample", step=bi + 1, total=total_batches,
                               message=f"{stop}/{n} images"))
    model.train(was_training)
    return out
