"""Training throughput: the engine's loop against a plain diffusers + torch loop, and cached
representations + latents against encoding every batch.

1. Same RCDM (``build_rcdm`` of one TrainConfig), same batch, same number of steps, same
   machine, runs interleaved (engine, plain, engine, plain, ...): the engine's
   ``train_rcdm`` (EMA, warm-up + cosine schedule, seeded batches, loss curve; previews and
   checkpoints pushed past the end so that only the step loop is timed) against the loop of
   diffusers' training examples written out (AdamW, cosine schedule, ``EMAModel``,
   ``DDPMScheduler.add_noise``, MSE, clip, step). Both are timed in chunks of CHUNK steps
   (the engine through its progress events), the first chunk (warm-up) dropped; a run's
   speed is its fastest chunk, the least disturbed by other work on the machine.
   ratio = engine images/s / plain images/s (medians over runs), goal >= 0.95.
2. A latent RCDM fed from caches (latents of a tiny ``AutoencoderKL``, CLS tokens of a tiny
   DINOv2 built from a config: stand-ins, no downloads) against the same loop encoding every
   batch with both. cache_ratio = cached images/s / encode-every-batch images/s; the goal
   is "several times faster". The stand-ins are far smaller than the SD VAE and DINOv2
   B/14, so this ratio UNDER-states the gain at real encoder size. The one-off cost of
   building the caches is reported beside it.

Prints a table, then one JSON line. ``--quick`` (the default) finishes in about a minute on
a 2-core CPU; ``--full`` uses the demo's sizes and more repeats.

Usage: python benchmarks/train_throughput.py [--full] [--steps N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

from engine.config import TrainConfig
from engine.rcdm.latent import LatentCodec, encode_pixels, vae_info
from engine.rcdm.model import build_rcdm
from engine.rcdm.training import REPORT_EVERY, pixels_to_tensor, train_rcdm

CHUNK = REPORT_EVERY  # steps per timed chunk (the engine reports every REPORT_EVERY steps)


def chunk_speed(times: list[float], batch: int) -> float:
    """images/s of the fastest chunk; ``times`` = clock at the end of chunks 1, 2, ..."""
    durations = np.diff(times)  # chunk 1 (warm-up) has no start: dropped
    return batch * CHUNK / float(durations.min())


def plain_loop(x_all: torch.Tensor, c_all: torch.Tensor, config: TrainConfig, steps: int,
               sample_shape=None, encode=None, pixels: torch.Tensor | None = None) -> float:
    """The loop of diffusers' training examples, written out; returns images/s.

    x_all (N, C, h, w) training tensors and c_all (N, D) representations, or ``encode``:
    pixels (B, 3, H, W) -> (x0, c), applied to ``pixels[idx]`` every batch.
    """
    torch.manual_seed(config.seed)
    model = build_rcdm(config, int(c_all.shape[1]), sample_shape).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                            weight_decay=config.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, config.warmup_steps, steps)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    noise_sched = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                beta_schedule=config.beta_schedule,
                                prediction_type=config.prediction_type)
    n, b = len(c_all), config.batch_size
    times = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (b,))
        if encode is not None:
            with torch.no_grad():
                x0, c = encode(pixels[idx])
        else:
            x0, c = x_all[idx], c_all[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, config.num_train_timesteps, (b,))
        drop = torch.rand(b) < config.cond_dropout
        x_t = noise_sched.add_noise(x0, noise, t)
        target = noise_sched.get_velocity(x0, noise, t)
        loss = F.mse_loss(model(x_t, t, c, drop), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(model.parameters())
        loss.item()
        if step % CHUNK == 0:
            times.append(time.perf_counter())
    return chunk_speed(times, b)


def engine_loop(pixels: np.ndarray, cond: np.ndarray, config: TrainConfig, tmp: Path,
                latents=None) -> float:
    """train_rcdm for config.steps + 1 steps (the last one writes a preview: not timed)."""
    never = config.steps + 2
    times: list[float] = []

    def progress(event) -> None:
        if event.stage == "train" and event.step % CHUNK == 0 and event.step <= config.steps:
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory(dir=tmp) as run:
        train_rcdm(pixels, cond, config.replace(steps=config.steps + 1, preview_every=never,
                                                checkpoint_every=never),
                   Path(run), progress=progress, resume=False, latents=latents)
    return chunk_speed(times, config.batch_size)


def tiny_encoders(image_size: int):
    """A tiny AutoencoderKL (factor 2, 4 channels) and a tiny DINOv2 (CLS, 192-d)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), latent_channels=4,
                        sample_size=image_size, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=16,
                        layers_per_block=1).eval().requires_grad_(False)
    dino = Dinov2Model(Dinov2Config(hidden_size=192, num_hidden_layers=4,
                                    num_attention_heads=3, intermediate_size=768,
                                    image_size=image_size, patch_size=4)).eval()
    dino.requires_grad_(False)
    return vae, dino


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="demo sizes, more repeats")
    ap.add_argument("--steps", type=int, help="optimiser steps per run")
    ap.add_argument("--repeats", type=int, help="interleaved runs of each loop")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (40 if args.full else 20)  # multiple of CHUNK, >= 2 chunks
    steps = max(2 * CHUNK, steps - steps % CHUNK)
    repeats = args.repeats or (5 if args.full else 2)
    rng = np.random.default_rng(0)

    # 1. engine vs plain loop, pixel space at the demo's size
    size = 16
    config = TrainConfig(image_size=size, batch_size=64 if args.full else 32, steps=steps,
                         warmup_steps=2)
    n = 512
    pixels = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    cond = rng.normal(size=(n, 32)).astype(np.float32)
    x_all, c_all = pixels_to_tensor(pixels), torch.from_numpy(cond)
    engine_ips, plain_ips = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            engine_ips.append(engine_loop(pixels, cond, config, Path(tmp)))
            plain_ips.append(plain_loop(x_all, c_all, config, steps))
    e_med, p_med = statistics.median(engine_ips), statistics.median(plain_ips)
    ratio = e_med / p_med
    print(f"pixel RCDM {size}px, batch {config.batch_size}, {steps} steps x {repeats} runs")
    print(f"  engine train_rcdm   {e_med:8.1f} images/s  {[round(v, 1) for v in engine_ips]}")
    print(f"  plain diffusers     {p_med:8.1f} images/s  {[round(v, 1) for v in plain_ips]}")
    print(f"  ratio               {ratio:8.3f}   (goal >= 0.95)")

    # 2. cached latents + representations vs encoding every batch (latent RCDM)
    isize, m = 32, 256
    vae, dino = tiny_encoders(isize)
    px = rng.integers(0, 256, size=(m, isize, isize, 3), dtype=np.uint8)
    px_t = pixels_to_tensor(px)  # (m, 3, 32, 32)
    info = vae_info(vae, "tiny-vae")
    codec = LatentCodec(vae, info)

    def encode(batch: torch.Tensor):
        z = codec.to_model_space(vae.encode(batch).latent_dist.mean)  # (B, 4, 16, 16)
        return z, dino(pixel_values=batch).last_hidden_state[:, 0]  # (B, 192)

    t0 = time.perf_counter()
    with torch.no_grad():
        raw = torch.from_numpy(encode_pixels(vae, px, batch_size=64))
        reps = torch.cat([dino(pixel_values=px_t[s:s + 64]).last_hidden_state[:, 0]
                          for s in range(0, m, 64)])
    cache_s = time.perf_counter() - t0
    z_all = codec.to_model_space(raw)
    lat_config = TrainConfig(space="latent", image_size=isize, block_channels=(32, 64),
                             batch_size=32, steps=steps, warmup_steps=2)
    shape = (int(z_all.shape[1]), int(z_all.shape[-1]))
    cached_ips, encoded_ips = [], []
    for _ in range(repeats):
        cached_ips.append(plain_loop(z_all, reps, lat_config, steps, shape))
        encoded_ips.append(plain_loop(z_all, reps, lat_config, steps, shape, encode=encode,
                                      pixels=px_t))
    c_med, u_med = statistics.median(cached_ips), statistics.median(encoded_ips)
    cache_ratio = c_med / u_med
    print(f"latent RCDM {isize}px -> 16x16x4, batch 32, tiny VAE + tiny DINOv2 stand-ins")
    print(f"  cached              {c_med:8.1f} images/s")
    print(f"  encode every batch  {u_med:8.1f} images/s")
    print(f"  cache_ratio         {cache_ratio:8.2f}   (one-off cache build {cache_s:.2f} s for "
          f"{m} images; real encoders make this ratio larger)")
    print(json.dumps({"claim": "the engine's training loop runs as fast as a plain diffusers "
                               "+ torch loop on the same model and batch",
                      "ratio": round(ratio, 3), "goal": 0.95, "met": ratio >= 0.95,
                      "engine_images_per_s": round(e_med, 1),
                      "plain_images_per_s": round(p_med, 1),
                      "cache_claim": "cached representations + latents vs encoding every "
                                     "batch (tiny stand-in encoders)",
                      "cache_ratio": round(cache_ratio, 2), "cache_goal": "several times",
                      "cache_build_s": round(cache_s, 2), "steps": steps,
                      "repeats": repeats}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
