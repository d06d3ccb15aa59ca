"""One frozen dataclass per stage. Defaults live here; the CLI and the studio only fill them in.

Every config serialises to JSON (``to_dict``) into the project row of the run it configured,
and is rebuilt with ``from_dict``, which rejects unknown keys and bad values with a named error.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.errors import InvalidConfigError

T = TypeVar("T", bound="StageConfig")


@dataclass(frozen=True)
class StageConfig:
    """Base: JSON round trip and validation hook."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by stages
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidConfigError(f"{cls.__name__} has no option(s) {unknown}")
        for f in dataclasses.fields(cls):
            if f.name in data and isinstance(data[f.name], list):
                data[f.name] = tuple(data[f.name])
        return cls(**data)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidConfigError(message)


@dataclass(frozen=True)
class ImportConfig(StageConfig):
    """Import of an ImageFolder: validation limits and the train/test split."""

    test_fraction: float = 0.2
    split_seed: int = 0
    max_pixels: int = 89_478_485  # Pillow's decompression-bomb threshold
    thumbnail_size: int = 96
    max_side: int = 1024  # larger images are downscaled when stored in the project

    def validate(self) -> None:
        _check(0.0 < self.test_fraction < 1.0,
               f"test_fraction must be in (0, 1), got {self.test_fraction}")
        _check(self.thumbnail_size >= 8, f"thumbnail_size must be >= 8, got {self.thumbnail_size}")
        _check(self.max_side >= 8, f"max_side must be >= 8, got {self.max_side}")


@dataclass(frozen=True)
class EncodeConfig(StageConfig):
    """Encoding of a dataset (or a generation) with one encoder of the registry."""

    encoder: str = "pca"
    model_id: str | None = None  # hub id or local folder for pretrained encoders
    dim: int = 32  # output dimension for encoders that choose it (pca)
    image_size: int = 16  # resolution at which offline encoders look at images
    batch_size: int = 256
    device: str = "cpu"
    seed: int = 0

    def validate(self) -> None:
        _check(bool(self.encoder), "encoder must be named")
        _check(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.image_size >= 4, f"image_size must be >= 4, got {self.image_size}")


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Training of an RCDM: denoiser size, optimisation, guidance dropout, checkpoints."""

    image_size: int = 16
    channels: int = 3
    block_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    cross_attention_dim: int = 64
    cond_tokens: int = 1
    attention_head_dim: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    cond_dropout: float = 0.1  # probability of replacing the representation by the null one
    ema_decay: float = 0.999
    hflip: bool = False
    checkpoint_every: int = 500
    preview_every: int = 500
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        _check(self.image_size >= 8 and self.image_size % 4 == 0,
               f"image_size must be a multiple of 4 and >= 8, got {self.image_size}")
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(0.0 <= self.cond_dropout < 1.0,
               f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        _check(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        _check(len(self.block_channels) >= 1, "block_channels must not be empty")
        _check(self.cond_tokens >= 1, f"cond_tokens must be >= 1, got {self.cond_tokens}")


SAMPLERS = ("ddpm", "ddim", "dpm++")


@dataclass(frozen=True)
class GenerateConfig(StageConfig):
    """Generation of seeded variations of real images with a trained RCDM."""

    variations: int = 1  # seeds per source image
    sampler: str = "ddim"
    steps: int = 25
    guidance: float = 1.0  # 1.0 = no classifier-free guidance
    seed: int = 0  # base seed; sample i of source j uses seed + j * variations + i
    batch_size: int = 256
    use_ema: bool = True
    device: str = "cpu"

    def validate(self) -> None:
        _check(self.variations >= 1, f"variations must be >= 1, got {self.variations}")
        _check(self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        _check(1 <= self.steps <= 1000, f"steps must be in [1, 1000], got {self.steps}")
        _check(0.0 <= self.guidance <= 20.0, f"guidance must be in [0, 20], got {self.guidance}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


BAND_PRESETS = ("middle", "all", "nearest", "farthest")


@dataclass(frozen=True)
class BandConfig(StageConfig):
    """A band of distances to the class centroid, as quantiles in [0, 1] per class.

    The paper's preset ("middle") keeps the middle ``keep_fraction`` of each class:
    with 2x generated and ``keep_fraction=0.5`` it drops the nearest 25 % and the farthest
    25 % and keeps 1x.
    """

    low: float = 0.25
    high: float = 0.75
    centroid: str = "real"  # "real", "generated" or "both"
    metric: str = "cosine"  # "cosine" or "euclidean"

    def validate(self) -> None:
        _check(0.0 <= self.low < self.high <= 1.0,
               f"band must satisfy 0 <= low < high <= 1, got low={self.low}, high={self.high}")
        _check(self.centroid in ("real", "generated", "both"),
               f"centroid must be real, generated or both, got {self.centroid!r}")
        _check(self.metric in ("cosine", "euclidean"),
               f"metric must be cosine or euclidean, got {self.metric!r}")

    @classmethod
    def preset(cls, name: str, keep_fraction: float = 0.5) -> "BandConfig":
        _check(name in BAND_PRESETS, f"band preset must be one of {BAND_PRESETS}, got {name!r}")
        _check(0.0 < keep_fraction <= 1.0,
               f"keep_fraction must be in (0, 1], got {keep_fraction}")
        if name == "all":
            return cls(low=0.0, high=1.0)
        if name == "nearest":
            return cls(low=0.0, high=keep_fraction)
        if name == "farthest":
            return cls(low=1.0 - keep_fraction, high=1.0)
        drop = (1.0 - keep_fraction) / 2.0
        return cls(low=drop, high=1.0 - drop)


CLASSIFIERS = ("resnet_tiny", "resnet18", "resnet50")
MIXES = ("real", "synthetic", "real+synthetic")


@dataclass(frozen=True)
class EvalConfig(StageConfig):
    """Classifier training on a training mix, tested on the held-out real split."""

    arch: str = "resnet_tiny"
    image_size: int = 16
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 0.4  # at batch 256; scaled by batch/256 (0.1 at the default batch)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    augment: str = "crop"  # "none" or "crop" (random-resized crop + flip off for digits)
    seed: int = 0
    device: str = "cpu"
    crop_scale_min: float = 0.35  # smallest area fraction kept by the random-resized crop
    hflip: bool = False  # random horizontal flip with "crop" (off: digits are not mirror-symmetric)

    def validate(self) -> None:
        _check(self.arch in CLASSIFIERS, f"arch must be one of {CLASSIFIERS}, got {self.arch!r}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.augment in ("none", "crop"), f"augment must be none or crop, got {self.augment!r}")
        _check(0.0 < self.crop_scale_min <= 1.0,
               f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        _check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(0.0 <= self.label_smoothing < 1.0,
               f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass(frozen=True)
class ExportConfig(StageConfig):
    """Export of a selection (and optionally the real training images) as an ImageFolder."""

    include_real: bool = False
    link: bool = False  # hard-link instead of copy when possible

    def validate(self) -> None:
        pass
