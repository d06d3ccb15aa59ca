"""Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kligler and Michaeli, CVPR 2024).

A real image x_0 is inverted under its own representation r: for the sampler's timesteps
t_1 > ... > t_S, each x_{t_i} is drawn *independently* from q(x_t | x_0) (seeded), then the
noise maps that make the DDPM sampler pass through exactly these x_t are solved for:

    z_i = (x_{t_{i+1}} - mu(x_{t_i}, t_i, r)) / sigma_i        (x_{t_{S+1}} = x_0)

where mu / sigma are the DDPM posterior's mean (from the model's prediction, guided) and
standard deviation. Regenerating from x_{t_1} with the same z_i under r gives back x_0 (up
to float rounding); under an edited or interpolated representation r' the same noise keeps
the source's layout while the representation changes what is drawn. The last step has
sigma = 0 (the posterior at t = 0 is a point), so its "noise" is the plain residual
x_0 - mu (sigma taken as 1): it carries the source's finest detail into every edit.

Pixel-space and latent RCDMs alike: a latent model inverts the VAE latent of the image
(``model.codec``) and decodes the regenerated latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import InvalidConfigError
from engine.image_formats import COLOUR, to_channels
from engine.rcdm.model import RCDM
from engine.rcdm.sample import guided_eps, model_timesteps, to_uint8

INVERSION_STREAM = 20240617  # numpy/torch seed stream of the forward draws: (stream, seed)


@dataclass(frozen=True)
class Inverted:
    """The inversion of B images: x_{t_1} (B, C, H, W) and the S noise maps (S, B, C, H, W)."""

    x_start: torch.Tensor
    noise: torch.Tensor
    timesteps: tuple[int, ...]


def timesteps(model: RCDM, steps: int) -> list[int]:
    """S integer timesteps, from the last training step down, evenly spaced ("trailing")."""
    n = int(model.train_config.num_train_timesteps)
    if not 1 <= int(steps) <= n:
        raise InvalidConfigError(f"inversion steps must be in [1, {n}], got {steps}")
    return [int(round(v)) - 1 for v in np.arange(n, 0, -n / int(steps))][: int(steps)]


def _alphas_cumprod(model: RCDM) -> torch.Tensor:
    from engine.rcdm.sample import make_scheduler

    return make_scheduler("ddpm", model.train_config).alphas_cumprod.to(torch.float64)


def _x0_from_output(out: torch.Tensor, x: torch.Tensor, a_t: float, prediction: str
                    ) -> torch.Tensor:
    """The model's output at x_t -> its estimate of x_0 (clipped to [-1, 1] in pixel space
    by the caller)."""
    if prediction == "epsilon":
        return (x - (1 - a_t) ** 0.5 * out) / a_t ** 0.5
    if prediction == "v_prediction":
        return a_t ** 0.5 * x - (1 - a_t) ** 0.5 * out
    if prediction == "sample":
        return out
    raise InvalidConfigError(f"inversion does not know prediction_type {prediction!r}")


def _posterior(model: RCDM, x: torch.Tensor, t: int, t_prev: int, cond: torch.Tensor,
               guidance: float, ac: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mean of p(x_{t_prev} | x_t), its standard deviation) under ``cond``."""
    a_t = float(ac[t])
    a_prev = float(ac[t_prev]) if t_prev >= 0 else 1.0
    out = guided_eps(model, x, model_timesteps(torch.tensor(t), x.shape[0], x.device), cond,
                     guidance).to(torch.float64)
    x0 = _x0_from_output(out, x.to(torch.float64), a_t, model.train_config.prediction_type)
    if getattr(model, "codec", None) is None:
        x0 = x0.clamp(-1.0, 1.0)
    alpha = a_t / a_prev  # the step's own alpha (several training steps at once)
    beta = 1.0 - alpha
    mean = (a_prev ** 0.5 * beta / (1 - a_t)) * x0 + (alpha ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
    var = (1 - a_prev) / (1 - a_t) * beta
    return mean, var ** 0.5


def to_model_space(model: RCDM, pixels: np.ndarray) -> torch.Tensor:
    """(B, H, W, C) uint8 at the model's image size (C 1 or 3) -> x_0 as the model sees it:
    pixels in [-1, 1], or the VAE latent of a latent model. float64. Colour images given to a
    greyscale model are converted to L first (``image_formats.to_channels``), as its training
    data were."""
    from engine.rcdm.latent import image_channels

    device = next(model.parameters()).device
    pixels = to_channels(np.asarray(pixels), image_channels(model))  # (B, H, W, C_model)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1
    codec = getattr(model, "codec", None)
    if codec is None:
        return x.to(device, torch.float64)
    from engine.rcdm.latent import encode_pixels

    rgb = to_channels(pixels, COLOUR)  # the VAE reads RGB: L repeated
    raw = torch.from_numpy(encode_pixels(codec.vae, np.ascontiguousarray(rgb)))
    return codec.to_model_space(raw).to(device, torch.float64)


@torch.no_grad()
def invert(model: RCDM, x0: torch.Tensor, cond: np.ndarray, seeds: np.ndarray, steps: int,
           guidance: float = 1.0) -> Inverted:
    """Invert B images ``x0`` (B, C, H, W) (``to_model_space``) under (B, D) ``cond``.

    Args:
        seeds: (B,) one seed per image for its independent forward draws.
        steps: S, the number of sampler steps (the regeneration uses the same).
    """
    ts = timesteps(model, steps)
    ac = _alphas_cumprod(model)
    device = x0.device
    c = torch.as_tensor(np.asarray(cond, np.float32), device=device)
    b = x0.shape[0]
    gens = [torch.Generator().manual_seed(int(INVERSION_STREAM + 7919 * int(s))) for s in seeds]
    # 1. x_t for every timestep, drawn independently given x_0
    xs = []
    for t in ts:
        eps = torch.cat([torch.randn((1, *x0.shape[1:]), generator=g, dtype=torch.float64)
                         for g in gens]).to(device)
        a = float(ac[t])
        xs.append(a ** 0.5 * x0 + (1 - a) ** 0.5 * eps)
    xs.append(x0)
    # 2. the noise that takes the sampler from each x_t to the next one
    noise = torch.zeros((len(ts), b, *x0.shape[1:]), dtype=torch.float64, device=device)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        mean, sigma = _posterior(model, xs[i].to(torch.float32), t, t_prev, c, guidance, ac)
        noise[i] = (xs[i + 1] - mean) / (sigma if sigma > 0 else 1.0)
    return Inverted(xs[0], noise, tuple(ts))


@torch.no_grad()
def regenerate(model: RCDM, inverted: Inverted, cond: np.ndarray, guidance: float = 1.0
               ) -> np.ndarray:
    """The DDPM sampler run from ``inverted.x_start`` with its noise maps under (B, D)
    ``cond``: (B, H, W, 3) uint8 images (decoded through the VAE for a latent model)."""
    ts = list(inverted.timesteps)
    ac = _alphas_cumprod(model)
    x = inverted.x_start
    c = torch.as_tensor(np.asarray(cond, np.float32), device=x.device)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        mean, sigma = _posterior(model, x.to(torch.float32), t, t_prev, c, guidance, ac)
        x = mean + (sigma if sigma > 0 else 1.0) * inverted.noise[i]
    if getattr(model, "codec", None) is None:
        return to_uint8(x.to(torch.float32))
    from engine.rcdm.latent import decode_samples

    return decode_samples(model, x.to(torch.float32))
