"""Training loop of a pixel-space RCDM, with EMA, previews, checkpoints and exact resume.

The whole dataset lives in memory as one float tensor in [-1, 1]; every step draws a random
batch, random timesteps, noise, horizontal flips and the condition-dropout mask from one
seeded ``torch.Generator`` on the CPU. The checkpoint stores that generator's state with the
model, the EMA, the optimiser and the learning-rate schedule, so training N steps, stopping
and resuming for N more gives the same weights as 2N steps in one go.

``out_dir`` layout::

    checkpoint/   model.safetensors, ema.safetensors, state.pt (optimiser, schedule, RNG,
                  step, losses; torch.load(weights_only=True))
    previews/     step_XXXXXX.png: top row real images, bottom row EMA samples of their
                  representations (DDIM, 10 steps)
    model/        the EMA model, ``save_rcdm`` format (written at the end)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.config import GenerateConfig, TrainConfig
from engine.errors import Cancelled, DatasetError, InvalidConfigError, NotReadyError, StudioError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.rcdm.model import (RCDM, build_rcdm, count_parameters, replace_dir, save_rcdm,
                               temp_dir_for)
from engine.rcdm.sample import sample_images

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LOSS_WINDOW = 25  # steps averaged into one point of the loss curve
REPORT_EVERY = 5  # steps between progress events
PREVIEW_CONDITIONS = 8
PREVIEW_SAMPLER = GenerateConfig(sampler="ddim", steps=10, guidance=1.0)
# Options that may change between a checkpoint and its resumption; any other change is a
# different run and is refused.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "preview_every", "device")


@dataclass
class _Progress:
    """Loop state that is not in a torch object."""

    step: int = 0
    losses: list[list[float]] = field(default_factory=list)  # [[step, mean loss], ...]
    window: list[float] = field(default_factory=lambda: [0.0, 0.0])  # [sum, count]


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def _check_inputs(pixels: np.ndarray, cond: np.ndarray, config: TrainConfig) -> None:
    if config.channels != 3:
        raise InvalidConfigError(
            f"pixel-space training needs channels=3 (RGB), got channels={config.channels}")
    size = config.image_size
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
        raise DatasetError(
            f"pixels must be uint8 of shape (N, {size}, {size}, 3), got {pixels.dtype} "
            f"{pixels.shape}")
    if cond.ndim != 2 or len(cond) != len(pixels):
        raise DatasetError(
            f"cond must have shape ({len(pixels)}, D), got {cond.shape}")
    if len(pixels) < 1:
        raise DatasetError("no training images")
    if not np.isfinite(cond).all():
        raise DatasetError("cond contains NaN or inf values")


def train_rcdm(pixels: np.ndarray, cond: np.ndarray, config: TrainConfig, out_dir: Path,
               progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
               resume: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train an RCDM on images and their representations.

    Args:
        pixels: (N, H, W, 3) uint8 images, already at ``config.image_size``.
        cond: (N, D) float32 representations of those images.
        config: the TrainConfig.
        out_dir: run folder (checkpoint/, previews/, model/ are written there).
        progress: receives ProgressEvent(stage="train", metrics={"loss", "lr"}) every
            few steps, with ``preview`` set when a preview grid was written.
        cancel: polled between steps; on cancel the checkpoint is saved, then ``Cancelled``.
        resume: continue from ``out_dir/checkpoint`` when it exists.
        extra: provenance stored in the saved model's rcdm.json (encoder, dataset id, ...).

    Returns:
        {"final_loss", "losses" ([[step, mean loss], ...] every LOSS_WINDOW steps),
        "steps_done", "model_dir", "parameters", "seconds_per_step"}.
    """
    cond = np.asarray(cond, dtype=np.float32)
    _check_inputs(pixels, cond, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    cond_dim = int(cond.shape[1])

    # Data, in memory once: x0 (N, 3, H, W) in [-1, 1]; c (N, D)
    x_all = pixels_to_tensor(pixels).to(device)
    c_all = torch.from_numpy(cond).to(device)
    n = len(x_all)

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = build_rcdm(config, cond_dim).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    noise_schedule = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                   beta_schedule=config.beta_schedule,
                                   prediction_type=config.prediction_type)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    state = _Progress()

    ckpt = out_dir / "checkpoint"
    if resume and ckpt.exists():
        state = _load_checkpoint(ckpt, model, ema, optimizer, lr_schedule, gen, config,
                                 cond_dim, n, device)
        log.info("resumed training from %s at step %d", ckpt, state.step)
        progress(ProgressEvent(stage="train", step=state.step, total=config.steps,
                               message=f"resumed from the checkpoint at step {state.step}"))

    # Fixed preview conditions: evenly spaced training images, seeds 0..k-1
    k = min(PREVIEW_CONDITIONS, n)
    preview_idx = np.linspace(0, n - 1, k).round().astype(np.int64)
    params = count_parameters(model)
    log.info("training RCDM: %d parameters, %d images, steps %d -> %d", params, n,
             state.step, config.steps)

    def checkpoint() -> None:
        _save_checkpoint(ckpt, model, ema, optimizer, lr_schedule, gen, state, config,
                         cond_dim, n)

    t_start, step_start = time.perf_counter(), state.step
    preview_seconds = 0.0
    report_sum, report_n = 0.0, 0
    total = config.steps
    while state.step < total:
        if cancel is not None and cancel.cancelled:
            checkpoint()
            raise Cancelled(f"training cancelled at step {state.step}/{total}; "
                            f"checkpoint saved in {ckpt}")
        # 1. random batch (and flips) from the seeded generator: x0 (B, 3, H, W), c (B, D)
        b = config.batch_size
        idx = torch.randint(0, n, (b,), generator=gen).to(device)
        x0, c = x_all[idx], c_all[idx]
        if config.hflip:
            flip = (torch.rand(b, generator=gen) < 0.5).to(device)
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        # 2. timesteps, noise and the condition-dropout mask
        t = torch.randint(0, config.num_train_timesteps, (b,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        drop = (torch.rand(b, generator=gen) < config.cond_dropout).to(device)
        # 3. forward diffusion x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, and the target
        x_t = noise_schedule.add_noise(x0, noise, t)
        if config.prediction_type == "epsilon":
            target = noise
        elif config.prediction_type == "v_prediction":
            target = noise_schedule.get_velocity(x0, noise, t)
        else:  # "sample"
            target = x0
        # 4. denoise, MSE, optimiser and schedule step, EMA update
        pred = model(x_t, t, c, drop)  # (B, 3, H, W)
        loss = F.mse_loss(pred, target)
        loss_value = float(loss.item())
        if not math.isfinite(loss_value):
            raise StudioError(
                f"training loss became {loss_value} at step {state.step + 1}; try a lower "
                f"learning_rate (now {config.learning_rate})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(model.parameters())
        state.step += 1

        # 5. bookkeeping: loss curve, progress, previews, checkpoints
        state.window[0] += loss_value
        state.window[1] += 1
        if state.window[1] >= LOSS_WINDOW or state.step == total:
            state.losses.append([state.step, state.window[0] / state.window[1]])
            state.window = [0.0, 0.0]
        report_sum, report_n = report_sum + loss_value, report_n + 1
        preview_path = None
        if state.step % max(1, config.preview_every) == 0 or state.step == total:
            t0 = time.perf_counter()
            preview_path = _write_preview(model, ema, cond[preview_idx], pixels[preview_idx],
                                          out_dir / "previews" / f"step_{state.step:06d}.png",
                                          config.device)
            preview_seconds += time.perf_counter() - t0
        if state.step % REPORT_EVERY == 0 or state.step == total or preview_path:
            progress(ProgressEvent(
                stage="train", step=state.step, total=total,
                metrics={"loss": report_sum / max(1, report_n),
                         "lr": float(lr_schedule.get_last_lr()[0])},
                preview=str(preview_path) if preview_path else None))
            report_sum, report_n = 0.0, 0
        if state.step % max(1, config.checkpoint_every) == 0 and state.step < total:
            checkpoint()

    elapsed = time.perf_counter() - t_start - preview_seconds
    steps_run = state.step - step_start
    checkpoint()
    # The saved model is the EMA of the weights.
    ema.copy_to(model.parameters())
    final_loss = state.losses[-1][1] if state.losses else float("nan")
    model_dir = save_rcdm(model, out_dir / "model", config, cond_dim, {
        **(extra or {}), "steps_done": state.step, "final_loss": final_loss,
        "num_images": n, "ema": True})
    return {
        "final_loss": final_loss,
        "losses": [list(p) for p in state.losses],
        "steps_done": state.step,
        "model_dir": str(model_dir),
        "parameters": params,
        "seconds_per_step": elapsed / steps_run if steps_run else None,
    }


def _write_preview(model: RCDM, ema: EMAModel, cond: np.ndarray, real: np.ndarray,
                   path: Path, device: str) -> Path:
    """Grid PNG: top row real images (k, H, W, 3), bottom row EMA samples of their cond."""
    params = list(model.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        fake = sample_images(model, cond, np.arange(len(cond)),
                             PREVIEW_SAMPLER.replace(batch_size=len(cond), device=device))
    finally:
        ema.restore(params)
    grid = np.concatenate([np.concatenate(list(real), axis=1),
                           np.concatenate(list(fake), axis=1)], axis=0)  # (2H, kW, 3)
    scale = max(1, 48 // real.shape[1])
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale),
                                       Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def _save_checkpoint(folder: Path, model: RCDM, ema: EMAModel, optimizer: torch.optim.Optimizer,
                     lr_schedule: Any, gen: torch.Generator, state: _Progress,
                     config: TrainConfig, cond_dim: int, num_images: int) -> None:
    """Write the exact training state to ``folder`` atomically."""
    tmp = temp_dir_for(folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"))
    names = [name for name, _ in model.named_parameters()]
    save_file({name: p.detach().contiguous().cpu() for name, p in zip(names, ema.shadow_params)},
              str(tmp / "ema.safetensors"))
    ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
    np_state = np.random.get_state()
    torch.save({
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "cond_dim": cond_dim,
        "num_images": num_images,
        "step": state.step,
        "losses": state.losses,
        "window": state.window,
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "ema": ema_meta,
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                      "cached_gaussian": float(np_state[4])},
    }, tmp / "state.pt")
    replace_dir(tmp, folder)
    log.info("checkpoint at step %d written to %s", state.step, folder)


def _load_checkpoint(folder: Path, model: RCDM, ema: EMAModel, optimizer: torch.optim.Optimizer,
                     lr_schedule: Any, gen: torch.Generator, config: TrainConfig,
                     cond_dim: int, num_images: int, device: torch.device) -> _Progress:
    """Restore everything ``_save_checkpoint`` wrote; refuses a checkpoint of another run."""
    files = ("model.safetensors", "ema.safetensors", "state.pt")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise NotReadyError(f"checkpoint {folder} is incomplete: missing {missing}")
    saved = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    if saved.get("version") != CHECKPOINT_VERSION:
        raise NotReadyError(f"checkpoint {folder} has version {saved.get('version')!r}, "
                            f"expected {CHECKPOINT_VERSION}")
    old = TrainConfig.from_dict(saved["config"]).to_dict()
    new = config.to_dict()
    changed = sorted(k for k in new if old[k] != new[k] and k not in RESUMABLE_CHANGES)
    if changed:
        raise InvalidConfigError(
            f"checkpoint {folder} was trained with different {changed} "
            f"({ {k: old[k] for k in changed} }); start a new run or resume=False")
    if saved["cond_dim"] != cond_dim or saved["num_images"] != num_images:
        raise InvalidConfigError(
            f"checkpoint {folder} was trained on {saved['num_images']} images with D="
            f"{saved['cond_dim']}, got {num_images} images with D={cond_dim}")
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    shadow = load_file(str(folder / "ema.safetensors"), device=str(device))
    names = [name for name, _ in model.named_parameters()]
    ema.load_state_dict({**saved["ema"], "shadow_params": [shadow[name] for name in names]})
    optimizer.load_state_dict(saved["optimizer"])
    lr_schedule.load_state_dict(saved["lr_schedule"])
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    ns = saved["numpy_rng"]
    np.random.set_state((ns["name"], ns["keys"].numpy().astype(np.uint32), ns["pos"],
                         ns["has_gauss"], ns["cached_gaussian"]))
    return _Progress(step=int(saved["step"]), losses=[list(p) for p in saved["losses"]],
                     window=list(saved["window"]))
