"""Latent space: a diffusers ``AutoencoderKL`` between pixels and the RCDM.

The RCDM of a latent run denoises ``z = (mean - shift) * scale`` where ``mean`` is the VAE
posterior mean of an image, ``scale`` its ``config.scaling_factor`` (0.18215 for the Stable
Diffusion VAE; ``TrainConfig.latent_scale`` overrides it) and ``shift`` its
``config.shift_factor`` (0 when the VAE has none). Latents are computed once per
(pixel array, VAE, image size) and cached as ``.npy`` (raw posterior means, unscaled, so a
different scale reuses them); with horizontal flips the flipped images get a cache too.

A ``LatentCodec`` (plain object, not an ``nn.Module``, so its weights never reach the
RCDM's parameters, optimiser or EMA) is attached to a latent RCDM as ``model.codec`` and
decodes samples to pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import InvalidConfigError, WeightsNotFoundError
from engine.image_formats import COLOUR, to_channels
from engine.paths import new_memmap
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress

log = logging.getLogger(__name__)

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
ENCODE_BATCH = 32


def check_vae(vae_id: str) -> str:
    """Say, without loading it, whether ``load_vae(vae_id)`` can find the VAE: a local folder
    with ``config.json`` (or ``vae/config.json``), or a hub id already in the hub cache or
    fetchable (not offline). Returns where it is ("local folder", "hub cache", "hub").

    Raises:
        WeightsNotFoundError: the folder is missing or incomplete, or the id is not cached
            and ``HF_HUB_OFFLINE`` is set; the message says what to download.
    """
    path = Path(vae_id).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "vae" / "config.json").is_file():
            return "local folder"
        raise WeightsNotFoundError(
            f"VAE folder {vae_id!r} has no config.json (nor vae/config.json): save the VAE "
            f"there with AutoencoderKL.save_pretrained, or download one, e.g. "
            f"`huggingface-cli download {DEFAULT_VAE} --local-dir ./vae`")
    if path.exists() or vae_id.startswith((".", "/", "~")):
        raise WeightsNotFoundError(f"VAE folder {vae_id!r} does not exist or is not a folder")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(vae_id, "config.json")
    if isinstance(cached, str):
        return "hub cache"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise WeightsNotFoundError(
            f"the VAE {vae_id!r} is not in the hub cache and HF_HUB_OFFLINE is set: download "
            f"it on a machine with internet, e.g. `huggingface-cli download {vae_id} "
            f"--local-dir ./vae`, copy the folder here and give its path as the VAE")
    return "hub"


def load_vae(vae_id: str, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32):
    """``AutoencoderKL`` from a local folder (or its ``vae/`` subfolder) or a hub id.

    Respects the hub cache and ``HF_HUB_OFFLINE``; missing weights raise
    ``WeightsNotFoundError`` saying what to download and where to point ``vae_id``.
    """
    from diffusers import AutoencoderKL

    path = Path(vae_id).expanduser()
    try:
        if path.is_dir():
            folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
            vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype)
        elif path.exists() or vae_id.startswith((".", "/", "~")):
            raise WeightsNotFoundError(f"VAE folder {vae_id!r} does not exist or is not a folder")
        else:
            vae = AutoencoderKL.from_pretrained(vae_id, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        raise WeightsNotFoundError(
            f"cannot load the VAE {vae_id!r}{' (HF_HUB_OFFLINE is set)' if offline else ''}: "
            f"download it on a machine with internet, e.g. `huggingface-cli download "
            f"{vae_id if not path.exists() else DEFAULT_VAE} --local-dir ./vae`, copy the "
            f"folder here and pass its path as vae_id (--vae); cause: {exc}") from exc
    return vae.to(device).eval().requires_grad_(False)


def vae_info(vae, vae_id: str, latent_scale: float | None = None) -> dict[str, Any]:
    """What a saved latent RCDM records about its VAE (JSON): id, scale, shift, factor."""
    cfg = vae.config
    scale = float(latent_scale if latent_scale is not None else cfg.scaling_factor)
    shift = getattr(cfg, "shift_factor", None)
    folder = Path(vae_id).expanduser()
    return {
        "vae_id": str(folder.resolve()) if folder.is_dir() else vae_id,
        "scaling_factor": scale,
        "shift_factor": float(shift) if shift is not None else 0.0,
        "downsample": 2 ** (len(cfg.block_out_channels) - 1),
        "latent_channels": int(cfg.latent_channels),
    }


class LatentCodec:
    """A frozen VAE plus its scaling: pixels <-> RCDM latents.

    Args:
        vae: an ``AutoencoderKL`` (eval, no grad).
        info: ``vae_info(...)`` (scaling_factor, shift_factor, ...).
    """

    def __init__(self, vae, info: dict[str, Any]) -> None:
        self.vae = vae
        self.info = dict(info)
        self.scale = float(info["scaling_factor"])
        self.shift = float(info.get("shift_factor") or 0.0)

    @classmethod
    def load(cls, info: dict[str, Any], device: str | torch.device = "cpu") -> "LatentCodec":
        return cls(load_vae(info["vae_id"], device), info)

    def to_model_space(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) raw posterior means -> the latents the RCDM sees."""
        return (raw - self.shift) * self.scale

    @torch.no_grad()
    def decode_uint8(self, z: torch.Tensor) -> np.ndarray:
        """(B, C, h, w) RCDM latents -> (B, H, W, 3) uint8 images."""
        vae = self.vae
        p = next(vae.parameters())
        x = vae.decode((z / self.scale + self.shift).to(p.device, p.dtype)).sample
        x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round()  # (B, 3, H, W)
        return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def decode_samples(model, z: torch.Tensor) -> np.ndarray:
    """Samples of a latent RCDM ((B, C, h, w) latents) -> (B, H, W, 3) uint8 pixels, or
    (B, H, W, 1) for a greyscale model (``train_config.channels`` 1: the VAE's RGB made L)."""
    codec = getattr(model, "codec", None)
    if codec is None:
        raise InvalidConfigError("this RCDM has no VAE attached (model.codec is None)")
    return to_channels(codec.decode_uint8(z), image_channels(model))


def image_channels(model) -> int:
    """The channels of the images ``model`` makes: 1 (greyscale) or 3 (RGB). Pixel space:
    its U-Net's; latent space: its config's (a model saved before channels followed the
    data, or with none recorded: 3)."""
    if getattr(model, "codec", None) is None:
        return int(model.unet.config.in_channels)
    config = getattr(model, "train_config", None)
    return int(getattr(config, "channels", None) or COLOUR)


@torch.no_grad()
def encode_pixels(vae, pixels: np.ndarray, batch_size: int = ENCODE_BATCH, flip: bool = False,
                  progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, C, H/f, W/f) float32 raw posterior means (unscaled).

    ``flip`` encodes the horizontally flipped images. ``out`` (e.g. a memmap) is filled in
    place when given.
    """
    p = next(vae.parameters())
    n = len(pixels)
    for start in range(0, n, batch_size):
        if cancel is not None:
            cancel.raise_if_cancelled()
        chunk = np.array(pixels[start:start + batch_size])  # a writable copy
        x = torch.from_numpy(chunk).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (b, 3, H, W)
        if flip:
            x = x.flip(-1)
        mean = vae.encode(x.to(p.device, p.dtype)).latent_dist.mean.float().cpu().numpy()
        if out is None:
            out = np.zeros((n,) + mean.shape[1:], dtype=np.float32)
        out[start:start + len(mean)] = mean
        progress(ProgressEvent(stage="latents", step=min(n, start + batch_size), total=n))
    if out is None:
        raise InvalidConfigError("no images to encode")
    return out


def cache_name(vae_id: str, image_size: int, flip: bool = False) -> str:
    """File name of a latent cache, keyed by the VAE and the image size."""
    folder = Path(vae_id).expanduser()
    key = str(folder.resolve()) if folder.is_dir() else vae_id
    slug = re.sub(r"[^A-Za-z0-9]+", "-", key).strip("-")[-40:]
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"latents_{slug}_{digest}_{image_size}{'_flip' if flip else ''}.npy"


@dataclass
class LatentSet:
    """Cached latents of N images: ``raw`` (N, C, h, w), ``flipped`` the same of the
    mirrored images (or None), ``info`` as ``vae_info`` and the codec (None if not loaded)."""

    raw: np.ndarray
    flipped: np.ndarray | None
    info: dict[str, Any]
    codec: LatentCodec | None = None

    def subset(self, idx: np.ndarray) -> "LatentSet":
        """Rows ``idx``, read on demand (nothing is copied until a batch or ``np.asarray``
        asks: a 130,000-image cache stays on disk for a streamed run)."""
        idx = np.asarray(idx, dtype=np.int64)
        return LatentSet(Rows(self.raw, idx),
                         None if self.flipped is None else Rows(self.flipped, idx),
                         self.info, self.codec)


class Rows:
    """Rows ``index`` of an array (a memory-mapped cache), read only when asked:
    ``rows[i]`` reads rows ``index[i]``; ``np.asarray(rows)`` reads them all."""

    def __init__(self, array: np.ndarray, index: np.ndarray) -> None:
        self.array, self.index = array, np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index),) + tuple(array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: Any) -> np.ndarray:
        return np.asarray(self.array[self.index[i]])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self.array[self.index])
        return out if dtype is None else out.astype(dtype, copy=False)


class LatentBatches:
    """The training loop's view of latents read per batch from their cache: ``len``,
    ``shape``, and ``batches[i]`` for a (m,) index tensor -> (m, C, h, w) model-space
    latents on ``device``. Elementwise the same numbers as converting the whole array first
    (``to_model_space`` is a per-element affine map), with memory independent of N."""

    def __init__(self, raw: Any, codec: LatentCodec, device: str | torch.device) -> None:
        self.raw, self.codec, self.device = raw, codec, device
        self.shape = torch.Size(tuple(raw.shape))

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, i: torch.Tensor) -> torch.Tensor:
        rows = np.ascontiguousarray(self.raw[i.cpu().numpy()], dtype=np.float32)
        return self.codec.to_model_space(torch.from_numpy(rows)).to(self.device)


def cached_latents(pixels: np.ndarray, vae_id: str, cache_dir: Path, flip: bool = False,
                   latent_scale: float | None = None, device: str = "cpu",
                   progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
                   batch_size: int = ENCODE_BATCH) -> LatentSet:
    """Latents of ``pixels`` (N, H, W, 3) uint8, read from ``cache_dir`` or encoded there.

    The VAE is always loaded (it records the scale and decodes previews); encoding runs only
    for a missing or mismatching cache. Files are written atomically (temp + rename), with a
    ``.json`` sidecar naming the VAE.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    vae = load_vae(vae_id, device)
    info = vae_info(vae, vae_id, latent_scale)
    n, size = len(pixels), int(pixels.shape[1])
    f = info["downsample"]
    if size % f:
        raise InvalidConfigError(f"image_size={size} must be a multiple of the VAE's "
                                 f"downsampling factor {f}")
    shape = (n, info["latent_channels"], size // f, size // f)
    arrays = []
    for flipped in ((False, True) if flip else (False,)):
        path = cache_dir / cache_name(vae_id, size, flipped)
        if path.exists():
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape == shape and arr.dtype == np.float32:
                arrays.append(arr)
                continue
            log.warning("latent cache %s has shape %s, expected %s: rebuilding", path,
                        arr.shape, shape)
            del arr
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        out = new_memmap(tmp, np.float32, shape)
        encode_pixels(vae, pixels, batch_size, flipped, progress, cancel, out=out)
        out.flush()
        del out
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps({**info, "flip": flipped,
                                                         "shape": list(shape)}, indent=1))
        log.info("cached %d latents %s in %s", n, shape[1:], path)
        arrays.append(np.load(path, mmap_mode="r", allow_pickle=False))
    return LatentSet(arrays[0], arrays[1] if flip else None, info, LatentCodec(vae, info))


def image_shape(model) -> tuple[int, int, int]:
    """(H, W, C) of the images ``sample_images`` returns for ``model``: its sample size and
    channels in pixel space, the VAE's decoded size in latent space (C: ``image_channels``)."""
    size, channels = int(model.unet.config.sample_size), image_channels(model)
    codec = getattr(model, "codec", None)
    if codec is None:
        return size, size, channels
    f = int(codec.info["downsample"])
    return size * f, size * f, channels
