"""Training loop of an RCDM (pixel or latent space), with EMA, previews, checkpoints, exact
resume, min-SNR weighting, mixed precision, gradient accumulation and several processes.

The training data lives in memory as one float tensor: images in [-1, 1] (pixel space) or
scaled VAE latents (latent space, cached by ``engine.rcdm.latent``). Every optimiser step
draws its whole batch (``batch_size`` indices, flips, timesteps, noise, condition-dropout
mask) from one seeded ``torch.Generator`` on the CPU. That batch is then split between the
processes (rank r takes rows ``[r*B/W, (r+1)*B/W)``) and each share into ``grad_accum``
micro-batches, so the same config gives the same update whatever the number of processes
and micro-batches (up to float summation order). The checkpoint stores that generator's
state with the model, the EMA, the optimiser, the learning-rate schedule and the fp16 grad
scaler, so training N steps, stopping and resuming for N more gives the same weights as 2N
steps in one go.

Several processes: started by ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1, see
``engine.rcdm.training_ranks``), the loop takes its device, its rows and the collectives from
``engine.torchrun.ranks.Ranks``, wraps the model in DDP (gradients all-reduced), and only
rank 0 writes checkpoints, previews and the model. With one process the same loop runs,
every collective being the identity.

``out_dir`` layout::

    checkpoint/   model.safetensors, ema.safetensors, state.pt (optimiser, schedule, RNG,
                  step, losses, grad scaler; torch.load(weights_only=True))
    previews/     step_XXXXXX.png: top row real images, bottom row EMA samples of their
                  representations (DDIM, 10 steps)
    latents/      latent cache when ``train_rcdm`` had to encode the images itself
    model/        the EMA model, ``save_rcdm`` format (written at the end)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.config import GenerateConfig, TrainConfig
from engine.errors import Cancelled, DatasetError, InvalidConfigError, NotReadyError, StudioError
from engine.image_formats import COLOUR, GREY, is_grey, to_channels, to_pil
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.rcdm.model import RCDM, build_rcdm, count_parameters, replace_dir, save_rcdm, temp_dir_for
from engine.rcdm.sample import sample_images
from engine.torchrun.ranks import Ranks, weights_digest

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LOSS_WINDOW = 25  # steps averaged into one point of the loss curve
REPORT_EVERY = 5  # steps between progress events
PREVIEW_CONDITIONS = 8
PREVIEW_SAMPLER = GenerateConfig(sampler="ddim", steps=10, guidance=1.0)
# Options that may change between a checkpoint and its resumption; any other change is a
# different run and is refused. grad_accum and processes only change how the same batch is
# split (the same recipe; the noise drawn per micro-batch differs, so the continuation is not
# bit-identical to an uninterrupted run with the old split).
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "preview_every", "device", "grad_accum",
                     "processes")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class _Progress:
    """Loop state that is not in a torch object."""

    step: int = 0
    losses: list[list[float]] = field(default_factory=list)  # [[step, mean loss], ...]
    window: list[float] = field(default_factory=lambda: [0.0, 0.0])  # [sum, count]


ARCHITECTURE_FIELDS = ("image_size", "channels", "block_channels", "layers_per_block",
                       "cross_attention_dim", "cond_tokens", "attention_head_dim",
                       "num_train_timesteps", "beta_schedule", "prediction_type", "space",
                       "vae_id", "latent_scale")


def init_config(config: TrainConfig, init: Path) -> TrainConfig:
    """``config`` with the architecture and noise schedule of the model in ``init`` (its
    weights only fit that architecture); steps, learning rate and the rest stay
    ``config``'s."""
    from engine.rcdm.model import read_rcdm_meta

    theirs = read_rcdm_meta(Path(init))["train_config"]
    return config.replace(**{k: (tuple(theirs[k]) if isinstance(theirs[k], list) else
                                 theirs[k]) for k in ARCHITECTURE_FIELDS if k in theirs})


def initial_model(init: Path, cond_dim: int, data_shape: tuple[int, ...]) -> RCDM:
    """The model folder ``init`` loaded to be fine-tuned: its U-Net as its config describes
    it (this project's or a diffusers one adopted by ``model.adopt_folder``), its
    conditioner, its weights.

    Raises:
        InvalidConfigError: another representation size, or a U-Net that denoises another
            shape than this run's data (channels, size), in one sentence.
    """
    from engine.rcdm.model import load_rcdm

    model, _, _ = load_rcdm(init, device="cpu", load_vae=False)
    if model.cond_dim != cond_dim:
        raise InvalidConfigError(
            f"the initial model {init} takes {model.cond_dim}-d representations, this "
            f"training {cond_dim}-d ones; fine-tune it on an encoding of the same size")
    cfg = model.unet.config
    theirs = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
    if tuple(int(v) for v in data_shape) != theirs:
        raise InvalidConfigError(
            f"the initial model {init} denoises {theirs} arrays, this training's data are "
            f"{tuple(data_shape)}; train at its image size and space "
            f"(engine.rcdm.training.init_config)")
    log.info("initialised from %s", init)
    return model


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float | None,
                    prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights (B,) of min-SNR-gamma weighting (Hang et al. 2023).

    With snr = abar_t / (1 - abar_t): epsilon -> min(snr, g) / snr; v_prediction ->
    min(snr, g) / (snr + 1); sample (x0) -> min(snr, g). ``gamma`` None -> all ones.
    """
    if gamma is None:
        return torch.ones(t.shape, device=t.device)
    abar = alphas_cumprod.to(t.device)[t].double()
    snr = abar / (1.0 - abar).clamp_min(1e-20)
    clipped = snr.clamp(max=float(gamma))
    if prediction_type == "epsilon":
        w = clipped / snr.clamp_min(1e-20)
    elif prediction_type == "v_prediction":
        w = clipped / (snr + 1.0)
    else:  # "sample"
        w = clipped
    return w.float()


def _check_inputs(pixels: np.ndarray, cond: np.ndarray, config: TrainConfig) -> None:
    size = config.image_size
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or tuple(pixels.shape[1:3]) != (size, size) \
            or pixels.shape[3] not in (1, 3):
        raise DatasetError(
            f"pixels must be uint8 of shape (N, {size}, {size}, 3) or (N, {size}, {size}, 1), "
            f"got {pixels.dtype} {pixels.shape}")
    if cond.ndim != 2 or len(cond) != len(pixels):
        raise DatasetError(
            f"cond must have shape ({len(pixels)}, D), got {cond.shape}")
    if len(pixels) < 1:
        raise DatasetError("no training images")
    if not np.isfinite(cond).all():
        raise DatasetError("cond contains NaN or inf values")


def resolve_channels(config: TrainConfig, pixels) -> int:
    """The channels a run of ``config`` trains with: ``config.channels`` when set; else (None,
    the data's) 1 when ``pixels`` carry no colour (one channel, or R == G == B everywhere:
    ``image_formats.is_grey``, read in memory in pixel space) and 3 otherwise. In latent space
    an unset value is 3 unless the pixels have one channel: the stage resolves it from what
    the import recorded (``train_stage.data_channels``) rather than reading every image."""
    if config.channels is not None:
        return int(config.channels)
    if int(pixels.shape[-1]) == GREY:
        return GREY
    if config.space == "latent":
        return COLOUR
    # in blocks: streamed rows (a memory map, ``ArrayRows``) are never all read at once, and
    # the first colour block ends the check
    block = 4096
    return GREY if all(is_grey(np.asarray(pixels[s:s + block]))
                       for s in range(0, len(pixels), block)) else COLOUR


def _init_channels(init: Path, channels: int) -> None:
    """Refuse to fine-tune a model of ``init`` that makes images of other channels."""
    from engine.rcdm.model import read_rcdm_meta

    theirs = read_rcdm_meta(Path(init))["train_config"].get("channels") or COLOUR
    if int(theirs) != channels:
        raise InvalidConfigError(
            f"the initial model {init} makes {channel_words(int(theirs))} images, this "
            f"training {channel_words(channels)} ones (channels={channels}); fine-tune a "
            f"model of the same channels, or set channels={theirs} to train on the data "
            f"converted to them")


def channel_words(channels: int) -> str:
    """1 -> "greyscale (1-channel)", 3 -> "RGB (3-channel)"."""
    return "greyscale (1-channel)" if channels == GREY else "RGB (3-channel)"


LATENT_MEMORY_FRACTION = 0.25  # "auto": latents in memory while they take at most this


def latent_path(mode: str, nbytes: int) -> str:
    """"memory" (the latents, or in pixel space the pixels, of every training image as one
    tensor on the device: the fast path) or "stream" (read per batch from the memory-mapped
    cache: memory independent of the dataset's size). "auto": memory while ``nbytes`` (with
    the flipped copies) is at most ``LATENT_MEMORY_FRACTION`` of the available memory.
    ImageNet-100 at 256 px: 130,000 x 4 x 32 x 32 float32 latents = 2.1 GB (4.3 GB with
    flips); its pixels at 64 px 6.4 GB as float32."""
    if mode != "auto":
        return mode
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return "memory"
    return "memory" if nbytes <= LATENT_MEMORY_FRACTION * available else "stream"


class PixelBatches:
    """The training loop's view of pixel-space training images read per batch from their
    (memory-mapped) uint8 rows: ``len``, ``shape`` (N, C, H, W) and ``batches[i]`` for a (m,)
    index tensor -> (m, C, H, W) float in [-1, 1] on ``device``. Elementwise the same numbers
    as ``pixels_to_tensor`` of the whole array, with memory independent of N."""

    def __init__(self, pixels: Any, device: str | torch.device, channels: int = 3) -> None:
        self.pixels, self.device, self.channels = pixels, device, int(channels)
        n, h, w, _ = pixels.shape
        self.shape = torch.Size((int(n), self.channels, int(h), int(w)))

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, i: torch.Tensor) -> torch.Tensor:
        rows = to_channels(np.asarray(self.pixels[i.cpu().numpy()]), self.channels)
        return pixels_to_tensor(rows).to(self.device)


def pixel_bytes(n: int, size: int, channels: int = 3) -> int:
    """Bytes of ``n`` training images as the loop's float32 tensor (what "memory" holds)."""
    return int(n) * int(channels) * int(size) ** 2 * 4


def _training_data(pixels, config: TrainConfig, latents, out_dir: Path, ranks: Ranks,
                   progress: ProgressFn, cancel: CancelToken | None):
    """(x_all (N, C, h, w), x_flipped or None, codec or None) on the training device."""
    device = ranks.device
    if config.space == "pixel":  # (N, H, W, C) -> (N, C, H, W), C = config.channels
        channels = config.channels
        if latent_path(config.latent_data,
                       pixel_bytes(len(pixels), config.image_size, channels)) == "stream":
            log.info("pixels read per batch from their cache (%d images)", len(pixels))
            return PixelBatches(pixels, device, channels), None, None
        return pixels_to_tensor(to_channels(np.asarray(pixels), channels)).to(device), None, None
    from engine.rcdm.latent import LatentBatches, LatentCodec, cached_latents

    if latents is None:  # encode here, cached in the run folder; rank 0 first
        if int(pixels.shape[-1]) != COLOUR:  # the VAE reads RGB
            pixels = to_channels(np.asarray(pixels), COLOUR)
        kwargs = dict(flip=config.hflip, latent_scale=config.latent_scale,
                      device=str(device), cancel=cancel)
        if ranks.main:
            latents = cached_latents(pixels, config.vae_id, out_dir / "latents",
                                     progress=progress, **kwargs)
        ranks.barrier()
        if not ranks.main:
            latents = cached_latents(pixels, config.vae_id, out_dir / "latents", **kwargs)
    if len(latents.raw) != len(pixels):
        raise DatasetError(f"got {len(latents.raw)} latents for {len(pixels)} images")
    if config.hflip and latents.flipped is None:
        raise DatasetError("hflip=True needs the latents of the flipped images too "
                           "(cached_latents(..., flip=True))")
    codec = latents.codec or LatentCodec.load(latents.info, device)
    per = int(np.prod(latents.raw.shape[1:])) * 4 * (2 if config.hflip else 1)
    if latent_path(config.latent_data, len(latents.raw) * per) == "stream":
        log.info("latents read per batch from their cache (%d images)", len(latents.raw))
        x_flip = LatentBatches(latents.flipped, codec, device) if config.hflip else None
        return LatentBatches(latents.raw, codec, device), x_flip, codec
    raw = torch.from_numpy(np.array(latents.raw, np.float32))  # (N, C, h, w), a copy
    x_all = codec.to_model_space(raw).to(device)
    x_flip = None
    if config.hflip:
        x_flip = codec.to_model_space(
            torch.from_numpy(np.array(latents.flipped, np.float32))).to(device)
    return x_all, x_flip, codec


def train_rcdm(pixels: np.ndarray, cond: np.ndarray, config: TrainConfig, out_dir: Path,
               progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
               resume: bool = True, extra: dict[str, Any] | None = None,
               latents=None, init: Path | None = None) -> dict[str, Any]:
    """Train an RCDM on images and their representations.

    Args:
        pixels: (N, H, W, 3) or (N, H, W, 1) uint8 images, already at ``config.image_size``
            (in latent space only the preview rows are read, so a memory-mapped array is
            fine); converted to ``config.channels`` (``resolve_channels`` when None: the
            saved model's config records the value trained with).
        cond: (N, D) float32 representations of those images.
        config: the TrainConfig.
        out_dir: run folder (checkpoint/, previews/, model/ are written there).
        progress: receives ProgressEvent(stage="train", metrics={"loss", "lr"}) every
            few steps, with ``preview`` set when a preview grid was written.
        cancel: polled between steps; on cancel the checkpoint is saved, then ``Cancelled``.
        resume: continue from ``out_dir/checkpoint`` when it exists.
        extra: provenance stored in the saved model's rcdm.json (encoder, dataset id, ...).
        latents: latent space only: a ``latent.LatentSet`` of these N images (e.g. from the
            dataset's cache); None encodes them with ``config.vae_id`` into out_dir/latents.
        init: a model folder (``save_rcdm``) to start from instead of random weights
            (fine-tuning): same architecture and representation size (``init_config``
            gives a config with its architecture); a resumed checkpoint wins over it.

    Returns:
        {"final_loss", "losses" ([[step, mean loss], ...] every LOSS_WINDOW steps),
        "steps_done", "model_dir", "parameters", "seconds_per_step", "images_per_second",
        "world_size", "rank"} (+ "weights_digest" with several processes).
    """
    cond = np.asarray(cond, dtype=np.float32)
    _check_inputs(pixels, cond, config)
    config = config.replace(channels=resolve_channels(config, pixels))
    if init is not None:
        _init_channels(Path(init), config.channels)
    ranks = Ranks(config.device)
    device = ranks.device
    batch, world, accum = config.batch_size, ranks.world, config.grad_accum
    if batch % (world * accum):
        raise InvalidConfigError(
            f"batch_size={batch} must be a multiple of processes x grad_accum = "
            f"{world} x {accum}")
    if config.precision == "fp16" and device.type != "cuda":
        raise InvalidConfigError(
            f"precision='fp16' needs a CUDA device (got {device}); use 'bf16' or 'fp32'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cond_dim = int(cond.shape[1])

    # Data, in memory once: x0 (N, C, h, w) (pixels in [-1, 1] or scaled latents); c (N, D)
    x_all, x_flip, codec = _training_data(pixels, config, latents, out_dir, ranks, progress,
                                          cancel)
    c_all = torch.from_numpy(cond).to(device)
    n = len(x_all)
    sample_shape = None if codec is None else (int(x_all.shape[1]), int(x_all.shape[-1]))

    if init is not None:  # fine-tuning: the initial model's own U-Net, weights and all
        model = initial_model(Path(init), cond_dim, tuple(x_all.shape[1:])).to(device).train()
    else:
        with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG untouched
            torch.manual_seed(config.seed)
            model = build_rcdm(config, cond_dim, sample_shape).to(device).train()
    model.codec = codec
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
    noise_schedule = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                   beta_schedule=config.beta_schedule,
                                   prediction_type=config.prediction_type)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    state = _Progress()

    ckpt = out_dir / "checkpoint"
    if resume and ckpt.exists():
        state = _load_checkpoint(ckpt, model, ema, optimizer, lr_schedule, gen, config,
                                 cond_dim, n, device, scaler)
        log.info("resumed training from %s at step %d", ckpt, state.step)
        progress(ProgressEvent(stage="train", step=state.step, total=config.steps,
                               message=f"resumed from the checkpoint at step {state.step}"))
    wrapped = ranks.wrap(model)  # DDP with several processes (same parameters), else model

    # Fixed preview conditions: evenly spaced training images, seeds 0..k-1
    k = min(PREVIEW_CONDITIONS, n)
    preview_idx = np.linspace(0, n - 1, k).round().astype(np.int64)
    params = count_parameters(model)
    if ranks.main:
        log.info("training RCDM: %d parameters, %d images, steps %d -> %d, %d process(es)",
                 params, n, state.step, config.steps, world)

    def checkpoint() -> None:
        if ranks.main:
            _save_checkpoint(ckpt, model, ema, optimizer, lr_schedule, gen, state, config,
                             cond_dim, n, scaler, world)

    autocast = (torch.autocast(device.type, dtype=AUTOCAST_DTYPES[config.precision])
                if config.precision in AUTOCAST_DTYPES else contextlib.nullcontext())
    share, micro = batch // world, batch // world // accum
    t_start, step_start = time.perf_counter(), state.step
    preview_seconds = 0.0
    report_sum, report_n = 0.0, 0
    total = config.steps
    while state.step < total:
        if ranks.any(cancel is not None and cancel.cancelled):
            checkpoint()
            raise Cancelled(f"training cancelled at step {state.step}/{total}; "
                            f"checkpoint saved in {ckpt}")
        # 1. the step's whole batch from the seeded generator (same on every rank):
        #    indices and flips (B,), timesteps (B,), noise (B, C, h, w), dropout mask (B,)
        idx = torch.randint(0, n, (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5 if config.hflip else None
        t_all = torch.randint(0, config.num_train_timesteps, (batch,), generator=gen)
        noise_all = torch.randn((batch,) + tuple(x_all.shape[1:]), generator=gen)
        drop_all = torch.rand(batch, generator=gen) < config.cond_dropout
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for a in range(accum):
            # 2. this rank's micro-batch a: rows [rank*B/W + a*m, rank*B/W + (a+1)*m)
            rows = slice(ranks.rank * share + a * micro, ranks.rank * share + (a + 1) * micro)
            i = idx[rows].to(device)
            x0 = x_all[i]  # (m, C, h, w)
            if flip is not None:
                f = flip[rows].to(device).view(-1, 1, 1, 1)
                x0 = torch.where(f, x0.flip(-1) if x_flip is None else x_flip[i], x0)
            t = t_all[rows].to(device)
            noise = noise_all[rows].to(device)
            # 3. forward diffusion x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; the target
            x_t = noise_schedule.add_noise(x0, noise, t)
            if config.prediction_type == "epsilon":
                target = noise
            elif config.prediction_type == "v_prediction":
                target = noise_schedule.get_velocity(x0, noise, t)
            else:  # "sample"
                target = x0
            # 4. denoise; per-sample MSE (m,), min-SNR weights, mean over this rank's share
            with ranks.no_sync(wrapped, sync=a == accum - 1):
                with autocast:
                    pred = wrapped(x_t, t, c_all[i], drop_all[rows].to(device))
                per_sample = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
                weights = min_snr_weights(noise_schedule.alphas_cumprod, t,
                                          config.min_snr_gamma, config.prediction_type)
                loss = (per_sample * weights).sum() / share
                (scaler.scale(loss) if scaler is not None else loss).backward()
            step_loss += loss.detach()
        loss_value = ranks.sum([float(step_loss)])[0] / world  # the mean over the ranks
        if not math.isfinite(loss_value):
            raise StudioError(
                f"training loss became {loss_value} at step {state.step + 1}; try a lower "
                f"learning_rate (now {config.learning_rate})")
        # 5. clip, optimiser and schedule step, EMA update (DDP has averaged the gradients)
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr_schedule.step()
        ema.step(model.parameters())
        state.step += 1

        # 6. bookkeeping: loss curve, progress, previews, checkpoints (rank 0 writes)
        state.window[0] += loss_value
        state.window[1] += 1
        if state.window[1] >= LOSS_WINDOW or state.step == total:
            state.losses.append([state.step, state.window[0] / state.window[1]])
            state.window = [0.0, 0.0]
        report_sum, report_n = report_sum + loss_value, report_n + 1
        preview_path = None
        if ranks.main and (state.step % max(1, config.preview_every) == 0
                           or state.step == total):
            t0 = time.perf_counter()
            preview_path = _write_preview(model, ema, cond[preview_idx],
                                          np.asarray(pixels[preview_idx]),
                                          out_dir / "previews" / f"step_{state.step:06d}.png",
                                          str(device))
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
    model_dir = out_dir / "model"
    if ranks.main:
        save_rcdm(model, model_dir, config, cond_dim, {
            **(extra or {}), "steps_done": state.step, "final_loss": final_loss,
            "num_images": n, "ema": True, "world_size": world})
    result = {
        "final_loss": final_loss,
        "losses": [list(p) for p in state.losses],
        "steps_done": state.step,
        "model_dir": str(model_dir),
        "parameters": params,
        "seconds_per_step": elapsed / steps_run if steps_run else None,
        "images_per_second": batch * steps_run / elapsed if steps_run and elapsed else None,
        "world_size": world,
        "rank": ranks.rank,
    }
    if world > 1:
        result["weights_digest"] = weights_digest(model)
    ranks.barrier()  # every rank returns once the model is saved
    return result


class ArrayRows:
    """Rows ``idx`` of a (memory-mapped) array, read only when indexed: a latent run needs
    the pixels of a few preview images, not the whole split in memory."""

    def __init__(self, array: np.ndarray, idx: np.ndarray) -> None:
        self.array, self.idx = array, idx
        self.shape = (len(idx),) + tuple(array.shape[1:])
        self.dtype, self.ndim = array.dtype, array.ndim

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.array[self.idx[key]])


def train_rcdm_files(pixels_path: str | Path, cond_path: str | Path, config: TrainConfig,
                     out_dir: Path, index: np.ndarray | None = None,
                     progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
                     resume: bool = True, extra: dict[str, Any] | None = None,
                     init: str | Path | None = None) -> dict[str, Any]:
    """``train_rcdm`` on rows ``index`` of a pixel cache and its representations, in this
    process or in each rank of several (the train job and ``training_ranks`` alike).

    Args:
        pixels_path: (N, H, W, 3) uint8 ``.npy`` (memory-mapped; a latent run reads only
            its preview rows, a streamed pixel run each batch's rows).
        cond_path: (N, D) float ``.npy`` representations of those N images.
        index: (n,) int rows to train on (the training split); None = all N.

    A latent run takes its latents from the cache of all N images beside ``pixels_path``
    (keyed by VAE and size, shared by every run on them; rank 0 encodes it, the other ranks
    wait and read it). Returns ``train_rcdm``'s result.
    """
    all_pixels = np.load(pixels_path, mmap_mode="r", allow_pickle=False)
    all_cond = np.load(cond_path, mmap_mode="r", allow_pickle=False)
    if len(all_cond) != len(all_pixels):
        raise DatasetError(f"{cond_path} has {len(all_cond)} rows, {pixels_path} "
                           f"{len(all_pixels)}")
    idx = (np.arange(len(all_pixels), dtype=np.int64) if index is None
           else np.asarray(index, dtype=np.int64))
    cond = np.asarray(all_cond[idx], dtype=np.float32)  # (n, D), aligned with the rows
    latents = None
    if config.space == "latent":
        from engine.rcdm.latent import cached_latents

        ranks = Ranks(config.device)
        kw = dict(flip=config.hflip, latent_scale=config.latent_scale, device=str(ranks.device))
        cache = Path(pixels_path).parent
        if ranks.main:
            latents = cached_latents(all_pixels, config.vae_id, cache, progress=progress,
                                     cancel=cancel, **kw)
        ranks.barrier()
        if not ranks.main:
            latents = cached_latents(all_pixels, config.vae_id, cache, **kw)
        latents = latents.subset(idx)
        pixels = ArrayRows(all_pixels, idx)
    elif latent_path(config.latent_data, pixel_bytes(len(idx), config.image_size)) == "stream":
        pixels = ArrayRows(all_pixels, idx)  # read per batch (PixelBatches)
    else:
        pixels = np.asarray(all_pixels[idx])
    return train_rcdm(pixels, cond, config, Path(out_dir), progress=progress, cancel=cancel,
                      resume=resume, latents=latents, extra=extra,
                      init=Path(init) if init else None)


def _write_preview(model: RCDM, ema: EMAModel, cond: np.ndarray, real: np.ndarray,
                   path: Path, device: str) -> Path:
    """Grid PNG: top row real images (k, H, W, 3), bottom row EMA samples of their cond
    (k, H, W, C); greyscale when the model is (C = 1)."""
    params = list(model.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        fake = sample_images(model, cond, np.arange(len(cond)),
                             PREVIEW_SAMPLER.replace(batch_size=len(cond), device=device))
    finally:
        ema.restore(params)
    real = to_channels(real, int(fake.shape[-1]))
    grid = np.concatenate([np.concatenate(list(real), axis=1),
                           np.concatenate(list(fake), axis=1)], axis=0)  # (2H, kW, C)
    scale = max(1, 48 // real.shape[1])
    img = to_pil(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale),
                                       Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def _save_checkpoint(folder: Path, model: RCDM, ema: EMAModel, optimizer: torch.optim.Optimizer,
                     lr_schedule: Any, gen: torch.Generator, state: _Progress,
                     config: TrainConfig, cond_dim: int, num_images: int,
                     scaler: Any = None, world_size: int = 1) -> None:
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
        "scaler": scaler.state_dict() if scaler is not None else None,
        "world_size": world_size,
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                      "cached_gaussian": float(np_state[4])},
    }, tmp / "state.pt")
    replace_dir(tmp, folder)
    log.info("checkpoint at step %d written to %s", state.step, folder)


def _read_checkpoint_file(folder: Path, name: str, read: Callable[[Path], Any]) -> Any:
    """``read(folder / name)``, with a cut-short or damaged file named in a NotReadyError."""
    try:
        return read(folder / name)
    except Exception as exc:  # torch / safetensors errors do not name the file
        raise NotReadyError(
            f"checkpoint {folder} is unreadable ({name} is cut short or damaged: "
            f"{type(exc).__name__}); delete the folder to start this training over") from exc


def _load_checkpoint(folder: Path, model: RCDM, ema: EMAModel, optimizer: torch.optim.Optimizer,
                     lr_schedule: Any, gen: torch.Generator, config: TrainConfig,
                     cond_dim: int, num_images: int, device: torch.device,
                     scaler: Any = None) -> _Progress:
    """Restore everything ``_save_checkpoint`` wrote; refuses a checkpoint of another run."""
    files = ("model.safetensors", "ema.safetensors", "state.pt")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise NotReadyError(f"checkpoint {folder} is incomplete: missing {missing}")
    saved = _read_checkpoint_file(folder, "state.pt", lambda f: torch.load(
        f, map_location="cpu", weights_only=True))
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
    model.load_state_dict(_read_checkpoint_file(folder, "model.safetensors",
                                                lambda f: load_file(str(f))))
    shadow = {k: v.to(device) for k, v in
              _read_checkpoint_file(folder, "ema.safetensors", lambda f: load_file(str(f))).items()}
    names = [name for name, _ in model.named_parameters()]
    ema.load_state_dict({**saved["ema"], "shadow_params": [shadow[name] for name in names]})
    optimizer.load_state_dict(saved["optimizer"])
    lr_schedule.load_state_dict(saved["lr_schedule"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    ns = saved["numpy_rng"]
    np.random.set_state((ns["name"], ns["keys"].numpy().astype(np.uint32), ns["pos"],
                         ns["has_gauss"], ns["cached_gaussian"]))
    return _Progress(step=int(saved["step"]), losses=[list(p) for p in saved["losses"]],
                     window=list(saved["window"]))
