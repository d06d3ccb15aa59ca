"""Sampling from an RCDM with any diffusers scheduler of the DDPM family, seeded per sample.

"ddpm" (100 steps: the paper's setting), "ddim" and "dpm++" are short names; any diffusers
class name from ``sampler_names()`` works too ("EulerDiscreteScheduler", ...).

Every sample owns a ``torch.Generator(seed)`` on the CPU that draws its initial noise and,
for stochastic schedulers (DDPM, ancestral ones), its noise at every step. A sample
therefore depends only on (model, representation, seed, sampler, steps, guidance), not on
the batch it is drawn in.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from typing import Any

import numpy as np
import torch

from engine.config import GenerateConfig, TrainConfig
from engine.errors import InvalidConfigError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.rcdm import latent
from engine.rcdm.model import RCDM

log = logging.getLogger(__name__)


# Short names of the usual samplers -> diffusers class and the arguments that set them apart.
SHORT_NAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
}
# Classes that take the DDPM noise schedule but are no samplers of it: inversion (image ->
# noise), video schedulers whose SNR is rescaled away from the training's, and unCLIP's
# (epsilon / sample prediction only, for its prior).
_EXCLUDED = ("Inverse", "CogVideoX", "UnCLIP")
# The arguments that give a scheduler the training's noise schedule and prediction type.
_SCHEDULE_ARGS = ("num_train_timesteps", "beta_schedule", "prediction_type")


def _scheduler_class(name: str):
    """The diffusers class ``name`` if it can sample a DDPM-trained model, else None."""
    import diffusers
    from diffusers import SchedulerMixin

    if not name.endswith("Scheduler") or any(x in name for x in _EXCLUDED):
        return None
    try:
        cls = getattr(diffusers, name)
    except (AttributeError, ImportError, RuntimeError):
        return None
    if not (inspect.isclass(cls) and issubclass(cls, SchedulerMixin)
            and callable(getattr(cls, "step", None))):
        return None  # a dummy object (missing optional dependency) or no sampler
    params = inspect.signature(cls.__init__).parameters
    return cls if all(a in params for a in _SCHEDULE_ARGS) else None


@functools.lru_cache(maxsize=1)
def sampler_names() -> tuple[str, ...]:
    """Every valid ``GenerateConfig.sampler``: the short names, then diffusers class names.

    A diffusers class qualifies when its constructor takes ``num_train_timesteps``,
    ``beta_schedule`` and ``prediction_type`` (the DDPM family: Euler, Heun, UniPC, DEIS,
    LMS, PNDM, KDPM2, DPM-Solver single/multistep, ...); flow-matching, EDM, inversion and
    video schedulers are left out, as are classes whose optional dependency is missing.
    """
    import diffusers

    classes = sorted(n for n in dir(diffusers) if _scheduler_class(n) is not None)
    return tuple(SHORT_NAMES) + tuple(classes)


@contextlib.contextmanager
def _quiet_numpy():
    """Silence numpy 2's deprecation notes on diffusers' ``np.array(tensor)`` / ``np.log``
    of tensors in scheduler set-up (harmless, and one per call)."""
    with warnings.catch_warnings():
        for message in ("__array__ implementation doesn't accept",
                        "__array_wrap__ must accept context"):
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=message)
        yield


def check_sampler(sampler: str) -> None:
    """Raise InvalidConfigError, listing the valid names, unless ``sampler`` is one."""
    if sampler in SHORT_NAMES or _scheduler_class(sampler) is not None:
        return
    raise InvalidConfigError(
        f"unknown sampler {sampler!r}; valid samplers: {', '.join(sampler_names())}")


def make_scheduler(sampler: str, config: TrainConfig):
    """The diffusers scheduler for ``sampler`` with the training's noise schedule.

    "ddpm" -> DDPMScheduler (ancestral, stochastic; 100 steps is the paper's setting),
    "ddim" -> DDIMScheduler (eta 0), "dpm++" -> DPMSolverMultistepScheduler
    (algorithm_type="dpmsolver++"); any other name is a diffusers class name from
    ``sampler_names()`` (e.g. "EulerDiscreteScheduler", "UniPCMultistepScheduler").

    Every scheduler gets the training's ``num_train_timesteps``, ``beta_schedule`` and
    ``prediction_type``, ``timestep_spacing="trailing"`` where it takes one (the first step
    starts from pure noise, t = num_train_timesteps - 1, whatever the number of steps) and,
    in pixel space, ``clip_sample=True`` where it takes one (predicted images are clipped to
    [-1, 1]).
    """
    check_sampler(sampler)
    if sampler in SHORT_NAMES:
        class_name, extra = SHORT_NAMES[sampler]
    else:
        class_name, extra = sampler, {}
    cls = _scheduler_class(class_name)
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
    )
    if "timestep_spacing" in params:
        kwargs["timestep_spacing"] = "trailing"
    if "clip_sample" in params:  # pixels live in [-1, 1]; VAE latents do not
        kwargs["clip_sample"] = getattr(config, "space", "pixel") == "pixel"
    kwargs.update(extra)
    try:
        return cls(**kwargs)
    except (ValueError, NotImplementedError, TypeError) as exc:
        raise InvalidConfigError(
            f"sampler {sampler!r} cannot take this model's noise schedule "
            f"(beta_schedule={config.beta_schedule!r}, prediction_type="
            f"{config.prediction_type!r}): {exc}") from exc


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


def model_timesteps(t: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A scheduler's timestep -> (batch,) timesteps for the U-Net.

    Integer timesteps stay integers (as in training); second-order and interpolating
    schedulers (Heun, KDPM2) ask for fractional ones, which the U-Net's sinusoidal time
    embedding takes as floats.
    """
    value = float(t)
    if value == round(value):
        return torch.full((batch,), int(round(value)), device=device, dtype=torch.long)
    return torch.full((batch,), value, device=device, dtype=torch.float32)


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
    out = np.zeros((n,) + latent.image_shape(model), dtype=np.uint8)  # (N, H, W, C)
    for bi, start in enumerate(range(0, n, bs)):
        stop = min(n, start + bs)
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start:stop]]
        c = torch.from_numpy(cond[start:stop]).to(device)  # (b, D)
        # Initial noise, one generator per sample, drawn on the CPU: (b, C, H, W)
        x = torch.cat([torch.randn((1, c_, size, size), generator=g) for g in gens]).to(device)
        with _quiet_numpy():
            scheduler = make_scheduler(config.sampler, train_config)
            scheduler.set_timesteps(config.steps, device=device)
        if torch.isnan(torch.as_tensor(scheduler.timesteps, dtype=torch.float64)).any():
            raise InvalidConfigError(
                f"sampler {config.sampler!r} gives NaN timesteps for {config.steps} steps with "
                f"beta_schedule={train_config.beta_schedule!r}; choose another sampler")
        # sigma-parameterised schedulers (Euler, Heun, LMS, ...) start from noise of std
        # init_noise_sigma and rescale their input at each step; for the others both are 1
        x = x * scheduler.init_noise_sigma
        stochastic = "generator" in inspect.signature(scheduler.step).parameters
        for t in scheduler.timesteps:
            if cancel is not None:
                cancel.raise_if_cancelled()
            x_in = scheduler.scale_model_input(x, t)
            tt = model_timesteps(t, x.shape[0], device)  # (b,)
            # 1. predict noise, conditional pass plus (when guided) the null pass, one batch
            # 2. guidance: eps = eps_null + g * (eps_cond - eps_null)
            eps = guided_eps(model, x_in, tt, c, config.guidance)  # (b, C, H, W)
            # 3. previous x_t: x_t -> x_{t-1}; stochastic schedulers (DDPM, ancestral ones)
            #    draw each sample's noise from its own generator (diffusers' randn_tensor
            #    accepts one generator per batch row)
            extra = {"generator": gens} if stochastic else {}
            x = scheduler.step(eps, t, x, **extra).prev_sample
        # a latent RCDM's samples are decoded to pixels through its VAE (engine.rcdm.latent)
        out[start:stop] = (to_uint8(x) if getattr(model, "codec", None) is None
                           else latent.decode_samples(model, x))
        progress(ProgressEvent(stage="sample", step=bi + 1, total=total_batches,
                               message=f"{stop}/{n} images"))
    model.train(was_training)
    return out
