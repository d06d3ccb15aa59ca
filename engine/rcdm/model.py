"""The RCDM denoiser: a diffusers ``UNet2DConditionModel`` conditioned on a representation.

The representation ``cond`` (B, D) of an image (an encoder's CLS embedding, a PCA of its
pixels, a one-hot label, ...) enters the U-Net twice:

* as ``cond_tokens`` cross-attention tokens, ``cond_proj(cond) -> (B, cond_tokens, X)``;
* added to the time embedding, through the U-Net's own ``class_embed_type="projection"``.

Classifier-free guidance replaces ``cond`` by a learned ``null_cond`` (D,) where a boolean
``drop_mask`` is set (during training with probability ``TrainConfig.cond_dropout``; at
sampling for the unconditional pass).

A saved model is a folder::

    unet/                       UNet2DConditionModel.save_pretrained (safetensors)
    conditioner.safetensors     cond_norm, cond_proj, token_norm, null_cond
    rcdm.json                   {format_version, train_config, cond_dim, extra, vae}

``unet/`` loads with plain ``UNet2DConditionModel.from_pretrained``. ``vae`` is null for a
pixel-space model; for a latent one it names the ``AutoencoderKL`` (hub id or folder) and the
scaling it was trained with, and ``load_rcdm`` attaches that VAE as ``model.codec``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from functools import reduce
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from engine.config import TrainConfig
from engine.errors import InvalidConfigError, NotReadyError, SchemaVersionError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
UNET_DIR = "unet"
CONDITIONER_FILE = "conditioner.safetensors"
META_FILE = "rcdm.json"


class RCDM(nn.Module):
    """U-Net denoiser plus the conditioner that turns a representation into tokens.

    Args:
        unet: the diffusers U-Net; its ``cross_attention_dim`` is X and its
            ``projection_class_embeddings_input_dim`` must equal ``cond_dim``.
        cond_dim: D, the size of a representation.
        config: the TrainConfig it was built for; gives T = ``config.cond_tokens``, the number
            of cross-attention tokens made from one representation, and the noise schedule
            that samplers must use (kept as ``self.train_config``).
    """

    def __init__(self, unet: UNet2DConditionModel, cond_dim: int, config: TrainConfig) -> None:
        super().__init__()
        if cond_dim < 1:
            raise InvalidConfigError(f"cond_dim must be >= 1, got {cond_dim}")
        self.unet = unet
        self.cond_dim = int(cond_dim)
        self.train_config = config
        self.cond_tokens = int(config.cond_tokens)
        width = int(unet.config.cross_attention_dim)
        # Representations come at any scale (CLIP vs DINOv2 vs PCA): normalise them first.
        self.cond_norm = nn.LayerNorm(self.cond_dim)
        self.cond_proj = nn.Linear(self.cond_dim, self.cond_tokens * width)
        self.token_norm = nn.LayerNorm(width)
        self.null_cond = nn.Parameter(torch.zeros(self.cond_dim))
        # LatentCodec of a latent-space model (a plain object: the frozen VAE is not part of
        # this module's parameters); None in pixel space.
        self.codec = None

    def condition(self, cond: torch.Tensor, drop_mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Representation -> (time-embedding input (B, D), cross-attention tokens (B, T, X)).

        Args:
            cond: (B, D) representations.
            drop_mask: (B,) bool; True rows use ``null_cond`` instead of ``cond``.
        """
        if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            raise InvalidConfigError(
                f"cond must have shape (B, {self.cond_dim}), got {tuple(cond.shape)}")
        if drop_mask is not None:
            null = self.null_cond.to(cond.dtype).expand_as(cond)
            cond = torch.where(drop_mask.to(cond.device).view(-1, 1), null, cond)
        c = self.cond_norm(cond)  # (B, D)
        tokens = self.cond_proj(c).view(c.shape[0], self.cond_tokens, -1)  # (B, T, X)
        return c, self.token_norm(tokens)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: (B, C, H, W) noisy images (pixels in [-1, 1] plus noise).
            t: (B,) integer timesteps in [0, num_train_timesteps).
            cond: (B, D) float representations.
            drop_mask: (B,) bool or None; True replaces that row's cond by ``null_cond``.

        Returns:
            (B, C, H, W) predicted noise (or v / x0 per the training's prediction_type).
        """
        c, tokens = self.condition(cond.to(x.dtype), drop_mask)
        return self.unet(x, t, encoder_hidden_states=tokens, class_labels=c).sample

    def conditioner_state(self) -> dict[str, torch.Tensor]:
        """Every weight that is not in the U-Net (what ``conditioner.safetensors`` holds)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()
                if not k.startswith("unet.")}


def unet_kwargs(config: TrainConfig, cond_dim: int,
                sample_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` arguments for a TrainConfig (pure function, no weights).

    ``sample_shape`` = (channels, size) of what the U-Net denoises when it is not the image
    itself (latent space: the VAE's latent channels and image_size / downsampling factor).

    The first resolution level is a plain ResNet block when there are several levels
    (self-attention over all pixels is the most expensive part at full resolution); every
    other level, the middle block included, has cross-attention to the condition tokens.
    """
    channels = tuple(int(c) for c in config.block_channels)
    for c in channels:
        if c % config.attention_head_dim:
            raise InvalidConfigError(
                f"every block channel count must be a multiple of attention_head_dim="
                f"{config.attention_head_dim}, got block_channels={channels}")
    n = len(channels)
    down = tuple("DownBlock2D" if (i == 0 and n > 1) else "CrossAttnDownBlock2D"
                 for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if b == "CrossAttnDownBlock2D" else "UpBlock2D"
               for b in reversed(down))
    groups = min(32, reduce(math.gcd, channels))
    in_ch, size = sample_shape or (config.channels or 3, config.image_size)  # None: RGB
    if size % (2 ** (n - 1)):
        raise InvalidConfigError(
            f"the U-Net input size {size} must be divisible by 2**(levels-1) for "
            f"block_channels={channels}")
    return dict(
        sample_size=int(size),
        in_channels=int(in_ch),
        out_channels=int(in_ch),
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=groups,
        cross_attention_dim=config.cross_attention_dim,
        # diffusers' UNet2DConditionModel reads `attention_head_dim` as the NUMBER of heads
        # (diffusers issue #2011); our config means the size of a head, so convert.
        attention_head_dim=tuple(c // config.attention_head_dim for c in channels),
        class_embed_type="projection",
        projection_class_embeddings_input_dim=int(cond_dim),
    )


def build_rcdm(config: TrainConfig, cond_dim: int,
               sample_shape: tuple[int, int] | None = None) -> RCDM:
    """A freshly initialised RCDM for ``config`` and D=``cond_dim`` (seed the RNG before).

    ``sample_shape``: (latent channels, latent size) for a latent-space model.
    """
    unet = UNet2DConditionModel(**unet_kwargs(config, cond_dim, sample_shape))
    return RCDM(unet, cond_dim, config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_rcdm(model: RCDM, folder: Path, config: TrainConfig, cond_dim: int,
              extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``folder`` atomically (a temp sibling, then ``os.replace``).

    ``extra`` carries provenance (encoder name, dataset id, steps, ...); it must be JSON.
    A ``config`` with ``channels`` None is saved with the channels the model makes.
    """
    folder = Path(folder)
    if config.channels is None:  # the folder says what it makes: the U-Net's, or the VAE's RGB
        config = config.replace(channels=3 if model.codec is not None
                                else int(model.unet.config.in_channels))
    tmp = temp_dir_for(folder)
    model.unet.save_pretrained(tmp / UNET_DIR, safe_serialization=True)
    save_file(model.conditioner_state(), str(tmp / CONDITIONER_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "train_config": config.to_dict(),
        "cond_dim": int(cond_dim),
        "extra": dict(extra or {}),
        "vae": dict(model.codec.info) if model.codec is not None else None,
    }
    with open(tmp / META_FILE, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    replace_dir(tmp, folder)
    log.info("saved RCDM to %s", folder)
    return folder


def temp_dir_for(folder: Path) -> Path:
    """A fresh, empty sibling of ``folder`` to write into before ``replace_dir``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def replace_dir(tmp: Path, folder: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``folder``.

    A non-empty directory cannot be the target of ``os.replace``, so the old one is moved
    aside first; a crash in between leaves ``folder.old-*`` and no ``folder``, never a
    half-written ``folder``.
    """
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def read_rcdm_meta(folder: Path) -> dict[str, Any]:
    """``rcdm.json`` of a saved model, checked for presence and format version."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotReadyError(f"no trained RCDM at {folder} (folder missing)")
    missing = [name for name in (META_FILE, CONDITIONER_FILE, f"{UNET_DIR}/config.json")
               if not (folder / name).is_file()]
    if not any((folder / UNET_DIR).glob("*.safetensors")):
        missing.append(f"{UNET_DIR}/*.safetensors")
    if missing:
        raise NotReadyError(f"RCDM folder {folder} is incomplete: missing {missing}")
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NotReadyError(f"cannot read {folder / META_FILE}: {exc}") from exc
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise SchemaVersionError(
            f"RCDM at {folder} has format_version={version!r}; this studio reads "
            f"format_version={FORMAT_VERSION}")
    return meta


def load_rcdm(folder: Path, device: str | torch.device = "cpu", load_vae: bool = True
              ) -> tuple[RCDM, TrainConfig, dict[str, Any]]:
    """Load a folder written by ``save_rcdm``; returns (model in eval mode, config, extra).

    A latent model gets its VAE (named in rcdm.json) attached as ``model.codec`` unless
    ``load_vae`` is False; a missing VAE raises ``WeightsNotFoundError``.
    """
    folder = Path(folder)
    meta = read_rcdm_meta(folder)
    config = TrainConfig.from_dict(meta["train_config"])
    cond_dim = int(meta["cond_dim"])
    unet = UNet2DConditionModel.from_pretrained(folder / UNET_DIR)
    model = RCDM(unet, cond_dim, config)
    state = load_file(str(folder / CONDITIONER_FILE))
    expected = set(model.conditioner_state())
    if set(state) != expected:
        raise NotReadyError(
            f"{folder / CONDITIONER_FILE} holds {sorted(state)}, expected {sorted(expected)}")
    model.load_state_dict(state, strict=False)
    model.to(device).eval()
    if meta.get("vae") and load_vae:
        from engine.rcdm.latent import LatentCodec

        model.codec = LatentCodec.load(meta["vae"], device)
    return model, config, dict(meta.get("extra") or {})


# ---------------------------------------------------------------- models trained elsewhere

SCHEDULER_CONFIG = "scheduler/scheduler_config.json"  # a diffusers pipeline's layout


def diffusers_unet_dir(folder: Path) -> Path | None:
    """The ``UNet2DConditionModel.save_pretrained`` folder inside ``folder`` (``unet/`` or
    ``folder`` itself), or None when there is none."""
    for d in (Path(folder) / UNET_DIR, Path(folder)):
        try:
            cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if cfg.get("_class_name") == "UNet2DConditionModel" and any(d.glob("*.safetensors")):
            return d
    return None


def adopt_folder(src: Path, dst: Path, vae_id: str | None = None,
                 image_size: int | None = None, origin: str | None = None) -> dict[str, Any]:
    """Copy a model trained elsewhere into ``dst`` in this project's format; returns its
    ``rcdm.json``.

    ``src`` is either a folder of this format (``rcdm.json``: copied as it is) or a diffusers
    ``UNet2DConditionModel`` folder (``unet/`` or the U-Net's own files) beside
    ``conditioner.safetensors`` (``cond_norm``, ``cond_proj``, ``token_norm``, ``null_cond``:
    the representation's way into the U-Net, as this project's models save it). For the
    latter, ``rcdm.json`` is written from what the files say: the representation size
    (``null_cond``), the tokens per representation (``cond_proj`` rows / the U-Net's
    ``cross_attention_dim``), the noise schedule from ``scheduler/scheduler_config.json`` when
    present (else this project's defaults), the architecture from the U-Net's config; a U-Net
    of 3 input channels is an RGB pixel model, one of 1 input channel a greyscale pixel model
    (a latent one when ``vae_id`` is given), any other a latent model that needs ``vae_id``
    (its images RGB, as its VAE's). The result is loaded once (``load_rcdm``) before it is
    kept. ``origin``: where it came from, for the diffusers layout's ``rcdm.json`` (default:
    ``src``; an upload names its zip).

    Raises:
        NotReadyError: neither layout, or a conditioner that does not fit the U-Net, in one
            sentence; WeightsNotFoundError: a latent model's VAE cannot be loaded.
    """
    src, dst = Path(src).expanduser(), Path(dst)
    if (src / META_FILE).is_file():
        read_rcdm_meta(src)  # complete and of a format this studio reads
        tmp = temp_dir_for(dst)
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        _keep_if_loadable(tmp, dst)
        return read_rcdm_meta(dst)
    unet_dir = diffusers_unet_dir(src)
    if unet_dir is None:
        raise NotReadyError(f"{src} is not a model folder: no {META_FILE} and no diffusers "
                            f"UNet2DConditionModel (config.json + *.safetensors) in it or in "
                            f"{src / UNET_DIR}")
    cond_file = src / CONDITIONER_FILE
    if not cond_file.is_file():
        raise NotReadyError(
            f"{src} holds a diffusers U-Net but no {CONDITIONER_FILE}: an RCDM needs the "
            f"conditioner that turns a representation into its tokens (cond_norm, cond_proj, "
            f"token_norm, null_cond)")
    unet_cfg = json.loads((unet_dir / "config.json").read_text(encoding="utf-8"))
    state = load_file(str(cond_file))
    if "null_cond" not in state or "cond_proj.weight" not in state:
        raise NotReadyError(f"{cond_file} holds {sorted(state)}; expected cond_norm.*, "
                            f"cond_proj.*, token_norm.* and null_cond")
    cond_dim = int(state["null_cond"].shape[0])
    width = int(unet_cfg.get("cross_attention_dim") or 0)
    rows = int(state["cond_proj.weight"].shape[0])
    if not width or rows % width:
        raise NotReadyError(f"{cond_file}: cond_proj makes {rows} values, not a whole number "
                            f"of the U-Net's {width}-wide tokens")
    if unet_cfg.get("class_embed_type") != "projection" or \
            int(unet_cfg.get("projection_class_embeddings_input_dim") or 0) != cond_dim:
        raise NotReadyError(
            f"the U-Net in {unet_dir} does not take a {cond_dim}-d representation in its time "
            f"embedding (class_embed_type='projection', projection_class_embeddings_input_dim"
            f"={cond_dim}), as an RCDM's does")
    in_ch, size = int(unet_cfg.get("in_channels", 3)), int(unet_cfg.get("sample_size", 16))
    values: dict[str, Any] = {"cond_tokens": rows // width, "cross_attention_dim": width}
    channels = tuple(int(c) for c in unet_cfg.get("block_out_channels") or ())
    heads = unet_cfg.get("attention_head_dim")
    if channels:
        values["block_channels"] = channels
        values["layers_per_block"] = int(unet_cfg.get("layers_per_block", 1))
        first = heads[0] if isinstance(heads, list) else heads
        if first:  # diffusers' attention_head_dim is a count of heads (see unet_kwargs)
            values["attention_head_dim"] = max(1, channels[0] // int(first))
    sched_path = src / SCHEDULER_CONFIG
    if sched_path.is_file():
        sched = json.loads(sched_path.read_text(encoding="utf-8"))
        for key in ("num_train_timesteps", "beta_schedule", "prediction_type"):
            if key in sched:
                values[key] = sched[key]
    codec_info = None
    if in_ch == 3 or (in_ch == 1 and not vae_id):  # RGB or greyscale pixels
        values.update(space="pixel", channels=in_ch, image_size=int(image_size or size))
    else:
        if not vae_id:
            raise NotReadyError(
                f"the U-Net in {unet_dir} denoises {in_ch}-channel latents: name the VAE it "
                f"was trained with (--vae, a hub id or a folder)")
        from engine.rcdm.latent import load_vae, vae_info

        codec_info = vae_info(load_vae(vae_id), vae_id)
        values.update(space="latent", vae_id=vae_id, channels=3,
                      image_size=int(image_size or size * codec_info["downsample"]))
    config = TrainConfig().replace(**values)
    tmp = temp_dir_for(dst)
    shutil.copytree(unet_dir, tmp / UNET_DIR,
                    ignore=shutil.ignore_patterns(UNET_DIR, CONDITIONER_FILE, "scheduler"))
    shutil.copy2(cond_file, tmp / CONDITIONER_FILE)
    meta = {"format_version": FORMAT_VERSION, "train_config": config.to_dict(),
            "cond_dim": cond_dim, "vae": codec_info,
            "extra": {"adopted_from": origin or str(src.resolve()), "format": "diffusers"}}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    _keep_if_loadable(tmp, dst)
    return meta


def _keep_if_loadable(tmp: Path, dst: Path) -> None:
    """Put ``tmp`` in place of ``dst`` once it loads (the conditioner's names and shapes fit
    the U-Net); otherwise remove it and say why."""
    try:
        load_rcdm(tmp, load_vae=False)
    except (RuntimeError, ValueError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotReadyError(f"the model does not load: {first}") from exc
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dst)
