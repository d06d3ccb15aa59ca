"""GPU check: the paper's 256 px latent RCDM (``imagenet256`` preset) trains and samples here.

Random weights and random data (no dataset needed): 256 px images -> 32x32x4 latents of the
Stable Diffusion VAE (``stabilityai/sd-vae-ft-mse`` when it is in the hub cache or
``--vae`` names a folder, else a randomly initialised VAE with the same config), 768-d
representations (DINOv2 B/14's size). Measures, on one CUDA device:

- training: ``train_rcdm`` steps at batch 16 in bf16 (the preset), images/s, peak memory;
- sampling: DDPM 100 steps (the paper's) and DPM-Solver++ 20 steps through the VAE
  decoder, images/s, peak memory.

Prints a table, then one JSON line. Without CUDA it refuses (exit code 2) unless ``--smoke``,
which runs the same code path at toy size on the CPU (used by the tests).

Usage: python benchmarks/gpu_check.py [--steps 30] [--samples 16] [--vae ID_OR_FOLDER]
       python benchmarks/gpu_check.py --smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.config import GenerateConfig, TrainConfig
from engine.errors import WeightsNotFoundError
from engine.rcdm.latent import DEFAULT_VAE, cached_latents, load_vae
from engine.rcdm.model import load_rcdm
from engine.rcdm.presets import preset_config
from engine.rcdm.sample import sample_images
from engine.rcdm.training import train_rcdm

SD_VAE_CONFIG = dict(block_out_channels=(128, 256, 512, 512), latent_channels=4,
                     layers_per_block=2, sample_size=256, scaling_factor=0.18215,
                     down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4)
TINY_VAE_CONFIG = dict(block_out_channels=(8, 16), latent_channels=4, layers_per_block=1,
                       sample_size=16, norm_num_groups=4,
                       down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2)


def _vae_folder(requested: str | None, smoke: bool, tmp: Path) -> tuple[str, str]:
    """(vae_id to train with, description): the real VAE if loadable, else a random one."""
    from diffusers import AutoencoderKL

    if requested and not smoke:
        load_vae(requested)  # WeightsNotFoundError says what to download
        return requested, requested
    if not smoke:
        from huggingface_hub import try_to_load_from_cache

        # only the hub cache: the GPU machine may have no network, and a hub request
        # would wait for its timeouts before failing
        if isinstance(try_to_load_from_cache(DEFAULT_VAE, "config.json"), str):
            try:
                load_vae(DEFAULT_VAE)
                return DEFAULT_VAE, DEFAULT_VAE
            except WeightsNotFoundError:
                pass
    torch.manual_seed(0)
    vae = AutoencoderKL(**(TINY_VAE_CONFIG if smoke else SD_VAE_CONFIG))
    vae.save_pretrained(tmp / "vae")
    return str(tmp / "vae"), "random weights, " + ("tiny config" if smoke else "SD VAE config")


def _gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy size on the CPU (a test)")
    ap.add_argument("--steps", type=int, default=30, help="training steps")
    ap.add_argument("--samples", type=int, default=16, help="images per sampler")
    ap.add_argument("--vae", help="AutoencoderKL hub id or folder (default: SD VAE or random)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    if not args.smoke and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print("gpu_check needs a CUDA device (none found); run with --smoke for the CPU "
              "version", file=sys.stderr)
        print(json.dumps({"claim": "imagenet256 latent RCDM trains and samples on a GPU",
                          "skipped": True, "reason": "no CUDA device"}))
        return 2
    device = torch.device("cpu" if args.smoke else args.device)
    steps, n_samples = (2, 2) if args.smoke else (args.steps, args.samples)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        vae_id, vae_desc = _vae_folder(args.vae, args.smoke, tmp)
        if args.smoke:
            config = TrainConfig(space="latent", vae_id=vae_id, image_size=16,
                                 block_channels=(8, 16), cross_attention_dim=16,
                                 attention_head_dim=8, batch_size=4, steps=steps,
                                 precision="bf16", warmup_steps=1)
            dim, n_images = 8, 8
        else:
            config = preset_config("imagenet256", steps=steps, vae_id=vae_id,
                                   device=str(device))
            dim, n_images = 768, 64
        never = steps + 1
        config = config.replace(preview_every=never, checkpoint_every=never)
        rng = np.random.default_rng(0)
        size = config.image_size
        pixels = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
        cond = rng.normal(size=(n_images, dim)).astype(np.float32)

        # 1. latents (not timed as training), then training steps
        latents = cached_latents(pixels, vae_id, tmp / "cache", flip=config.hflip,
                                 device=str(device))
        _reset(device)
        result = train_rcdm(pixels, cond, config, tmp / "run", latents=latents)
        train_mem = _gib(device)
        model, _, _ = load_rcdm(Path(result["model_dir"]), device=device)

        # 2. sampling at the paper's setting and the fast one, decoded through the VAE
        rows = {}
        for sampler, n_steps in (("ddpm", 100), ("dpm++", 20)):
            if args.smoke:
                n_steps = 2
            gen = GenerateConfig(sampler=sampler, steps=n_steps, batch_size=n_samples,
                                 device=str(device))
            _reset(device)
            t0 = time.perf_counter()
            images = sample_images(model, np.resize(cond, (n_samples, dim)),
                                   np.arange(n_samples), gen)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            rows[f"{sampler}{n_steps}"] = {"images_per_s": round(len(images) / seconds, 2),
                                           "peak_gib": _gib(device),
                                           "shape": list(images.shape)}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; VAE: {vae_desc}; RCDM parameters {result['parameters']:,}")
    print(f"  train  {config.precision} batch {config.batch_size}: "
          f"{result['images_per_second']:.1f} images/s, peak {train_mem} GiB")
    for key, row in rows.items():
        print(f"  sample {key:<8} {row['images_per_s']:.2f} images/s, peak {row['peak_gib']} GiB, "
              f"output {row['shape']}")
    print(json.dumps({"claim": "imagenet256 latent RCDM trains and samples on a GPU",
                      "device": name, "smoke": args.smoke, "vae": vae_desc,
                      "parameters": result["parameters"],
                      "train_images_per_s": round(result["images_per_second"], 2),
                      "train_peak_gib": train_mem, "train_precision": config.precision,
                      "batch_size": config.batch_size, "steps": steps,
                      "sampling": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
