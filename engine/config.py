"""One frozen dataclass per stage. Defaults live here; the CLI and the studio only fill them in.

Every config serialises to JSON (``to_dict``) into the project row of the run it configured,
and is rebuilt with ``from_dict``, which rejects unknown keys and bad values with a named error.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from engine.errors import InvalidConfigError

T = TypeVar("T", bound="StageConfig")


@dataclass(frozen=True)
class StageConfig:
    """Base: JSON round trip and validation hook."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # a number where a number is due, before the bounds
            value = getattr(self, f.name)
            if _is_number(f.default):
                _check(_is_number(value), f"{f.name} must be a number, got {value!r}")
            elif f.default is None and str(f.type) in ("int | None", "float | None"):
                _check(value is None or _is_number(value),
                       f"{f.name} must be a number or None, got {value!r}")
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


def parse_overrides(cls: type, items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items -> {field: value} for the config class ``cls`` (``--set`` on the
    command line and in the launchers, the studio's recipe options): values are JSON
    (``0.25``, ``true``, ``[1, 2]`` -> a tuple), else strings; ``-`` in a key reads as ``_``;
    blank items and ``#`` comments are skipped.

    Raises:
        InvalidConfigError: not ``KEY=VALUE``, or an unknown key (the message lists the known
            ones).
    """
    names = [f.name for f in dataclasses.fields(cls)]
    changes: dict[str, Any] = {}
    for item in items:
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InvalidConfigError(f"expected KEY=VALUE, got {item!r}")
        if key not in names:
            raise InvalidConfigError(f"{cls.__name__} has no option {key!r}; its "
                                     f"options: {', '.join(names)}")
        try:
            value = json.loads(text.strip())
        except ValueError:
            value = text.strip()
        changes[key] = tuple(value) if isinstance(value, list) else value
    return changes


def with_overrides(config: T, items: list[str]) -> T:
    """``config`` with the ``KEY=VALUE`` overrides of ``items`` (see ``parse_overrides``).

    Raises:
        InvalidConfigError: a bad item, an unknown key, or a value the config's ``validate``
            refuses.
    """
    changes = parse_overrides(type(config), items)
    return config.replace(**changes) if changes else config


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidConfigError(message)


# bounds shared by several configs: generous for ImageNet-scale work, refusing absurd values
MAX_SEED = 2**31 - 1
MAX_IMAGE_SIZE = 1024  # pixels per side, at which a stage looks at images
MAX_BATCH = 65_536
MAX_EPOCHS = 10_000
MAX_STEPS = 100_000_000  # optimiser steps (ImageNet-1k at batch 16 for 125 epochs is 1e7)
MAX_PROCESSES = 1024
MAX_VARIATIONS = 64
MAX_PER_CLASS = 100_000  # images or representations per class
MAX_COUNT = 10_000_000  # images in one chunk, phase or class target


def _range(name: str, value: Any, low: float, high: float) -> None:
    """``low <= value <= high`` for a number (a bool, a string, NaN are refused), else one
    sentence naming the limit, e.g. "epochs must be in [1, 10000], got 100000000000"."""
    def text(v: float) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"

    _check(_is_number(value) and low <= value <= high,
           f"{name} must be in [{text(low)}, {text(high)}], got {value!r}")


def _positive(name: str, value: Any, high: float) -> None:
    """``0 < value <= high`` for a number (finite when ``high`` is infinite), else one
    sentence naming the limit."""
    if math.isinf(high):
        _check(_is_number(value) and 0 < value < high,
               f"{name} must be a finite number > 0, got {value!r}")
        return
    _check(_is_number(value) and 0 < value <= high,
           f"{name} must be in (0, {high:g}], got {value!r}")


IMPORT_MODES = ("link", "copy", "reference")


@dataclass(frozen=True)
class ImportConfig(StageConfig):
    """Import of an ImageFolder: validation limits and the splits (``engine.data.split_images``).

    Per class, in this order, each step seeded by ``split_seed`` and the class: the test
    split (``test_fraction`` of ALL the class's images, so it does not depend on the other
    two options), then validation (``val_fraction`` of all the class's images, taken from
    the rest), then ``train_per_class`` training images from what is left; the images left
    over are kept as split ``"unused"`` (no stage reads them; a later import with another N
    finds the same test images).
    """

    test_fraction: float = 0.2
    split_seed: int = 0
    val_fraction: float = 0.0  # 0: no validation split (every choice then falls on test)
    train_per_class: int | None = None  # None: every remaining image trains (the low-data regime: N)
    max_pixels: int = 89_478_485  # Pillow's decompression-bomb threshold
    thumbnail_size: int = 96
    max_side: int = 1024  # converted images (engine.image_store) larger than this are downscaled
    # how a kept file (an RGB / greyscale JPEG, PNG or WebP) is stored: "link" (a hard link,
    # a copy where the file system refuses one), "copy", or "reference" (left in place: the
    # row names the source file; the folder must stay)
    mode: str = "link"
    workers: int = 0  # import worker processes; 0: one per available core, at most 8

    def validate(self) -> None:
        _check(0.0 < self.test_fraction < 1.0,
               f"test_fraction must be in (0, 1), got {self.test_fraction}")
        _check(0.0 <= self.val_fraction < 1.0,
               f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _check(self.test_fraction + self.val_fraction < 1.0,
               f"test_fraction + val_fraction must be < 1 (training needs images), got "
               f"{self.test_fraction} + {self.val_fraction}")
        _check(self.train_per_class is None
               or (isinstance(self.train_per_class, int)
                   and not isinstance(self.train_per_class, bool)
                   and 1 <= self.train_per_class <= 10_000_000),
               f"train_per_class must be None (all) or an integer in [1, 10000000], got "
               f"{self.train_per_class!r}")
        _check(self.thumbnail_size >= 8, f"thumbnail_size must be >= 8, got {self.thumbnail_size}")
        _check(self.max_side >= 8, f"max_side must be >= 8, got {self.max_side}")
        _range("split_seed", self.split_seed, 0, MAX_SEED)
        _range("max_pixels", self.max_pixels, 1, 1_000_000_000)
        _range("thumbnail_size", self.thumbnail_size, 8, 512)
        _range("max_side", self.max_side, 8, 16_384)
        _check(self.mode in IMPORT_MODES,
               f"mode must be one of {', '.join(IMPORT_MODES)}, got {self.mode!r}")
        _range("workers", self.workers, 0, 64)


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
    # pretrained encoders: "fp32", or "fp16" / "bf16" autocast on CUDA (fp32 on the CPU)
    precision: str = "fp32"
    chunk_size: int = 8192  # images per resumable chunk of the encode stage
    read_threads: int = 1  # threads decoding image files for pretrained encoders
    # the learned (simclr) encoder: self-supervised training on the training split
    fit_epochs: int = 60
    fit_batch_size: int = 256
    fit_lr: float = 2e-3
    temperature: float = 0.2  # NT-Xent temperature

    def validate(self) -> None:
        _check(bool(self.encoder), "encoder must be named")
        _check(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.image_size >= 4, f"image_size must be >= 4, got {self.image_size}")
        _check(self.precision in ("fp32", "fp16", "bf16"),
               f"precision must be fp32, fp16 or bf16, got {self.precision!r}")
        _check(self.chunk_size >= 1, f"chunk_size must be >= 1, got {self.chunk_size}")
        _check(self.read_threads >= 1, f"read_threads must be >= 1, got {self.read_threads}")
        _check(self.fit_epochs >= 1, f"fit_epochs must be >= 1, got {self.fit_epochs}")
        _check(self.fit_batch_size >= 2,
               f"fit_batch_size must be >= 2, got {self.fit_batch_size}")
        _check(self.fit_lr > 0, f"fit_lr must be > 0, got {self.fit_lr}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _range("dim", self.dim, 1, 65_536)
        _range("image_size", self.image_size, 4, MAX_IMAGE_SIZE)
        _range("batch_size", self.batch_size, 1, MAX_BATCH)
        _range("seed", self.seed, 0, MAX_SEED)
        _range("chunk_size", self.chunk_size, 1, MAX_COUNT)
        _range("read_threads", self.read_threads, 1, 256)
        _range("fit_epochs", self.fit_epochs, 1, MAX_EPOCHS)
        _range("fit_batch_size", self.fit_batch_size, 2, MAX_BATCH)
        _positive("fit_lr", self.fit_lr, 10.0)
        _positive("temperature", self.temperature, 100.0)


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Training of an RCDM: denoiser size, optimisation, guidance dropout, checkpoints."""

    image_size: int = 16
    # the channels of the images the model makes: 1 (greyscale) or 3 (RGB); None ("auto"):
    # the data's, resolved before training (engine.stages.train_stage: 1 when every training
    # image was recorded greyscale at import) and saved resolved in the model's config. In
    # pixel space the U-Net denoises that many channels; in latent space the VAE stays RGB
    # and a greyscale model's decoded images are converted to L.
    channels: int | None = None
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
    # "pixel": the U-Net denoises images (toy sizes); "latent": it denoises the latents of
    # the AutoencoderKL ``vae_id`` (hub id or local folder); image_size stays the pixel size.
    space: str = "pixel"
    vae_id: str = "stabilityai/sd-vae-ft-mse"
    latent_scale: float | None = None  # None: the VAE's config.scaling_factor
    # the training data (latents; in pixel space the pixels): "memory" (all on the device),
    # "stream" (read per batch from the cache), "auto" (memory while they take <= 1/4 of the
    # available memory as float32)
    latent_data: str = "auto"
    min_snr_gamma: float | None = None  # min-SNR-gamma loss weighting (5.0 is usual); None: off
    precision: str = "fp32"  # "fp32", "bf16" (autocast) or "fp16" (autocast + GradScaler, CUDA)
    grad_accum: int = 1  # micro-batches per optimiser step; batch_size is the whole step's batch
    # > 1: the train job runs train_rcdm under torchrun with this many data-parallel processes
    # (one per GPU; gloo processes on the CPU); train_rcdm itself follows WORLD_SIZE
    processes: int = 1

    def validate(self) -> None:
        _check(self.space in ("pixel", "latent"),
               f"space must be pixel or latent, got {self.space!r}")
        _check(self.latent_data in ("auto", "memory", "stream"),
               f"latent_data must be auto, memory or stream, got {self.latent_data!r}")
        _check(self.precision in ("fp32", "bf16", "fp16"),
               f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        _check(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        _check(self.batch_size % self.grad_accum == 0,
               f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}")
        _check(self.processes >= 1, f"processes must be >= 1, got {self.processes}")
        _check(self.batch_size % (self.processes * self.grad_accum) == 0,
               f"batch_size={self.batch_size} must be a multiple of processes x grad_accum "
               f"= {self.processes} x {self.grad_accum}")
        _check(self.min_snr_gamma is None or self.min_snr_gamma > 0,
               f"min_snr_gamma must be > 0 or None, got {self.min_snr_gamma}")
        _check(self.latent_scale is None or self.latent_scale > 0,
               f"latent_scale must be > 0 or None, got {self.latent_scale}")
        _check(self.space == "pixel" or bool(self.vae_id), "space='latent' needs a vae_id")
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
        _range("image_size", self.image_size, 8, MAX_IMAGE_SIZE)
        _check(self.channels is None or (type(self.channels) is int and self.channels in (1, 3)),
               f"channels must be 1 (greyscale), 3 (RGB) or None (the data's), got "
               f"{self.channels!r}")
        _check(len(self.block_channels) <= 8 and all(
            _is_number(c) and 1 <= c <= 4096 for c in self.block_channels),
            f"block_channels must list 1 to 8 widths in [1, 4096], got {self.block_channels}")
        _range("layers_per_block", self.layers_per_block, 1, 16)
        _range("cross_attention_dim", self.cross_attention_dim, 1, 8192)
        _range("cond_tokens", self.cond_tokens, 1, 1024)
        _range("attention_head_dim", self.attention_head_dim, 1, 1024)
        _range("num_train_timesteps", self.num_train_timesteps, 1, 10_000)
        _range("steps", self.steps, 1, MAX_STEPS)
        _range("batch_size", self.batch_size, 1, MAX_BATCH)
        # no upper bound: a diverging rate costs nothing and stops at its first NaN loss
        _positive("learning_rate", self.learning_rate, float("inf"))
        _range("warmup_steps", self.warmup_steps, 0, MAX_STEPS)
        _range("weight_decay", self.weight_decay, 0.0, 10.0)
        _range("checkpoint_every", self.checkpoint_every, 0, MAX_STEPS)
        _range("preview_every", self.preview_every, 0, MAX_STEPS)
        _range("seed", self.seed, 0, MAX_SEED)
        _check(self.latent_scale is None or (_is_number(self.latent_scale)
                                             and 0 < self.latent_scale <= 100),
               f"latent_scale must be None or in (0, 100], got {self.latent_scale!r}")
        _check(self.min_snr_gamma is None or (_is_number(self.min_snr_gamma)
                                              and 0 < self.min_snr_gamma <= 1000),
               f"min_snr_gamma must be None or in (0, 1000], got {self.min_snr_gamma!r}")
        _range("grad_accum", self.grad_accum, 1, 1024)
        _range("processes", self.processes, 1, MAX_PROCESSES)


# The ``quick`` training preset (``engine.rcdm.presets``): the quick demo's denoiser, 0.27 M
# parameters at 16 px, 400 steps at batch 64 (minutes on a 2-core CPU). Written here, below
# the presets, because the machine defaults (``engine.settings``) size a CPU's training by it.
QUICK_TRAIN: dict[str, Any] = dict(block_channels=(16, 32), steps=400, batch_size=64,
                                   checkpoint_every=200, preview_every=200)

SAMPLERS = ("ddpm", "ddim", "dpm++")  # short names; diffusers class names work too
GENERATE_MODES = ("variations", "interpolate", "mixup", "class_sample", "edit")
COVARIANCES = ("ledoit_wolf", "diagonal")
PERTURB_MAX = 4.0  # GenerateConfig.perturb: noise up to 4 standard deviations per dimension
# GenerateConfig.image_format: the generated files' format (engine.image_formats)
GENERATED_FORMATS = ("png", "webp", "jpeg")
EDIT_STRENGTH_MAX = 10.0  # GenerateConfig.strength / sweep: |λ| at most 10 directions long
MAX_SWEEP = 64  # GenerateConfig.sweep: strengths per source
MAX_DIRECTION_CHARS = 1024  # GenerateConfig.direction: "A:B", two class names


@dataclass(frozen=True)
class GenerateConfig(StageConfig):
    """Generation with a trained RCDM: which representations, how many seeds, which sampler.

    ``mode`` picks the representations (engine.rcdm.conditions): "variations" of real images
    (their own representations), "interpolate" between two images (``points`` on the path),
    "mixup" of random pairs within a class (``per_class`` per class, weights
    ~ Beta(``mix_alpha``, ``mix_alpha``)), "class_sample" (``per_class`` new representations
    per class drawn from a Gaussian fitted to the class). Each representation gets
    ``variations`` seeds. ``sampler`` is "ddpm" (100 steps: the paper's), "ddim", "dpm++"
    or a diffusers scheduler class name.

    ``perturb`` (λ, 0 = off) adds Gaussian noise ``λ · σ · ε`` to each sample's
    representation before sampling, σ the per-dimension standard deviation of the dataset's
    training encodings and ε ~ N(0, I) drawn from the sample's own seed
    (``engine.rcdm.conditions.perturb``): more diverse images, less faithful to the source.

    ``mode="edit"`` moves each source representation along a direction: ``r + λ d`` with
    ``d = mean(B) - mean(A)`` over the dataset's training encodings of the classes named by
    ``direction`` ("A:B"), unit length with ``normalise``; λ is ``strength``, or each value of
    ``sweep`` in turn (one representation per source per λ).

    ``invert`` (edits and interpolations of images): each source image is inverted into the
    DDPM noise space under its own representation (``engine.rcdm.inversion``, edit-friendly
    DDPM inversion) and regenerated under the edited or interpolated one with that noise, so
    the image keeps the source's layout; ``steps`` DDPM posterior steps, ``sampler`` unused.

    ``image_format`` is the generated files' format: "png" (lossless, the default), "webp" or
    "jpeg" at ``quality`` (1..100; webp at 100 is lossless WebP; unused by png); see
    ``engine.image_formats``. Both are kept in the generation's config_json.
    """

    variations: int = 1  # seeds per source image
    sampler: str = "ddpm"
    steps: int = 100
    guidance: float = 1.0  # 1.0 = no classifier-free guidance
    seed: int = 0  # base seed; sample i of source j uses seed + j * variations + i
    batch_size: int = 256
    use_ema: bool = True
    device: str = "cpu"
    mode: str = "variations"  # "variations", "interpolate", "mixup" or "class_sample"
    points: int = 8  # interpolate: representations on the path, both ends included
    per_class: int = 10  # mixup / class_sample: new representations per class
    mix_alpha: float = 1.0  # mixup: weight of the partner ~ Beta(a, a); 1.0 = uniform
    covariance: str = "ledoit_wolf"  # class_sample: "ledoit_wolf" or "diagonal" (+ eps)
    perturb: float = 0.0  # λ: noise of λ training-set standard deviations per dimension
    direction: str = ""  # edit: "A:B", from class A's mean towards class B's
    strength: float = 0.5  # edit: λ in r + λ d (without a sweep)
    sweep: tuple[float, ...] = ()  # edit: several λ, one representation per source each
    normalise: bool = False  # edit: d scaled to unit L2 length
    invert: bool = False  # edit / interpolate: regenerate from the source's inverted noise
    # > 1: the generate job runs its shards on this many processes under torchrun (one per
    # GPU), merged into one generation, each image the one a single process writes
    processes: int = 1
    image_format: str = "png"  # "png", "webp" or "jpeg" (.png / .webp / .jpg files)
    quality: int = 95  # webp / jpeg quality, 1..100 (webp 100 = lossless); png ignores it

    def strengths(self) -> tuple[float, ...]:
        """The edit's λ values: ``sweep``, or ``(strength,)``."""
        return tuple(float(v) for v in self.sweep) or (float(self.strength),)

    def validate(self) -> None:
        _check(self.variations >= 1, f"variations must be >= 1, got {self.variations}")
        # the full check (a diffusers class of the DDPM family) is engine.rcdm.sample's
        _check(self.sampler in SAMPLERS or self.sampler.endswith("Scheduler"),
               f"sampler must be one of {SAMPLERS} or a diffusers scheduler class name "
               f"(e.g. 'EulerDiscreteScheduler'), got {self.sampler!r}")
        _check(self.mode in GENERATE_MODES,
               f"mode must be one of {GENERATE_MODES}, got {self.mode!r}")
        _check(self.points >= 2, f"points must be >= 2, got {self.points}")
        _check(self.per_class >= 1, f"per_class must be >= 1, got {self.per_class}")
        _check(self.mix_alpha > 0, f"mix_alpha must be > 0, got {self.mix_alpha}")
        _check(self.covariance in COVARIANCES,
               f"covariance must be one of {COVARIANCES}, got {self.covariance!r}")
        _check(1 <= self.steps <= 1000, f"steps must be in [1, 1000], got {self.steps}")
        _check(0.0 <= self.guidance <= 20.0, f"guidance must be in [0, 20], got {self.guidance}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(isinstance(self.perturb, (int, float)) and not isinstance(self.perturb, bool)
               and 0.0 <= self.perturb <= PERTURB_MAX,
               f"perturb (the perturbation strength λ) must be in [0, {PERTURB_MAX:g}], got "
               f"{self.perturb!r}")
        _range("variations", self.variations, 1, MAX_VARIATIONS)
        _range("seed", self.seed, 0, MAX_SEED)
        _range("batch_size", self.batch_size, 1, MAX_BATCH)
        _range("points", self.points, 2, 1024)
        _range("per_class", self.per_class, 1, MAX_PER_CLASS)
        _positive("mix_alpha", self.mix_alpha, 100.0)
        _check(isinstance(self.direction, str) and len(self.direction) <= MAX_DIRECTION_CHARS,
               f"direction must be text of at most {MAX_DIRECTION_CHARS} characters")
        _check(self.mode != "edit" or (self.direction.count(":") == 1 and all(
            part.strip() for part in self.direction.split(":"))),
               f"an edit needs direction 'A:B' (two class names), got {self.direction!r}")
        _check(isinstance(self.sweep, tuple) and len(self.sweep) <= MAX_SWEEP,
               f"sweep holds at most {MAX_SWEEP} strengths, got {len(self.sweep)}")
        for value in (self.strength, *self.sweep):
            _check(_number(value) and abs(value) <= EDIT_STRENGTH_MAX,
                   f"edit strengths must be numbers in [-{EDIT_STRENGTH_MAX:g}, "
                   f"{EDIT_STRENGTH_MAX:g}], got {value!r}")
        _check(isinstance(self.normalise, bool),
               f"normalise must be true or false, got {self.normalise!r}")
        _check(isinstance(self.invert, bool),
               f"invert must be true or false, got {self.invert!r}")
        _range("processes", self.processes, 1, MAX_PROCESSES)
        _check(not (self.invert and self.processes > 1),
               "an inverted generation runs on one process (its sources are read from the "
               "project); drop --processes or --invert")
        _check(not self.invert or self.mode in ("edit", "interpolate"),
               f"invert applies to edits and interpolations of images, not mode "
               f"{self.mode!r}")
        _check(self.image_format in GENERATED_FORMATS,
               f"image_format must be one of {GENERATED_FORMATS}, got {self.image_format!r}")
        _range("quality", self.quality, 1, 100)
        _check(isinstance(self.quality, int),
               f"quality must be a whole number in [1, 100], got {self.quality!r}")


BAND_PRESETS = ("middle", "all", "nearest", "farthest")


@dataclass(frozen=True)
class BandConfig(StageConfig):
    """A band of distances to the class centroid, per class.

    ``mode="quantile"``: ``low``/``high`` are within-class quantiles in [0, 1];
    ``mode="distance"``: they are absolute distances (kept when ``low <= d <= high``).
    ``per_class`` overrides ``(low, high)`` for named classes: ``((class_name, low, high), ...)``
    (a ``{name: (low, high)}`` dict is accepted too). Then, in this order: ``outlier`` removal
    ("real": drop samples farther than the ``outlier_q`` quantile of the class's real images'
    distances; "zscore": drop samples whose robust z-score of distance, (d - median) /
    (1.4826 MAD) over the class's generated samples, exceeds ``outlier_z``; far side only), and
    a ``target_per_class`` count (0 = off): keep at most k per class, the k nearest the centre
    of what the band kept ("centre": the contiguous middle k by distance) or k drawn at random
    with ``target_seed`` ("random").

    The paper's preset ("middle") keeps the middle ``keep_fraction`` of each class:
    with 2x generated and ``keep_fraction=0.5`` it drops the nearest 25 % and the farthest
    25 % and keeps 1x.
    """

    low: float = 0.25
    high: float = 0.75
    centroid: str = "real"  # "real", "generated" or "both"
    metric: str = "cosine"  # "cosine" or "euclidean"
    mode: str = "quantile"  # "quantile" or "distance"
    per_class: tuple[tuple[str, float, float], ...] = ()
    outlier: str = "none"  # "none", "real" or "zscore"
    outlier_q: float = 0.99
    outlier_z: float = 3.5
    target_per_class: int = 0
    target_pick: str = "centre"  # "centre" or "random"
    target_seed: int = 0

    def __post_init__(self) -> None:
        per = self.per_class
        if isinstance(per, dict):
            per = [(k, *v) for k, v in per.items()]
        try:
            per = tuple((str(c), float(lo), float(hi)) for c, lo, hi in (per or ()))
        except (TypeError, ValueError) as exc:
            raise InvalidConfigError(
                f"per_class must be (class_name, low, high) triples, got {self.per_class!r}"
            ) from exc
        object.__setattr__(self, "per_class", per)
        super().__post_init__()

    def _check_range(self, low: float, high: float, what: str) -> None:
        if self.mode == "quantile":
            _check(0.0 <= low < high <= 1.0,
                   f"{what} must satisfy 0 <= low < high <= 1, got low={low}, high={high}")
        else:
            _check(0.0 <= low < high < float("inf"),
                   f"{what} (distances) must satisfy 0 <= low < high, got low={low}, high={high}")

    def validate(self) -> None:
        _check(self.mode in ("quantile", "distance"),
               f"mode must be quantile or distance, got {self.mode!r}")
        self._check_range(self.low, self.high, "band")
        for name, lo, hi in self.per_class:
            self._check_range(lo, hi, f"band of class {name!r}")
        _check(len({c for c, _, _ in self.per_class}) == len(self.per_class),
               f"per_class names a class twice: {[c for c, _, _ in self.per_class]}")
        _check(self.outlier in ("none", "real", "zscore"),
               f"outlier must be none, real or zscore, got {self.outlier!r}")
        _check(0.0 < self.outlier_q <= 1.0, f"outlier_q must be in (0, 1], got {self.outlier_q}")
        _check(self.outlier_z > 0.0, f"outlier_z must be > 0, got {self.outlier_z}")
        _check(self.target_per_class >= 0,
               f"target_per_class must be >= 0, got {self.target_per_class}")
        _check(self.target_pick in ("centre", "random"),
               f"target_pick must be centre or random, got {self.target_pick!r}")
        _check(self.centroid in ("real", "generated", "both"),
               f"centroid must be real, generated or both, got {self.centroid!r}")
        _check(self.metric in ("cosine", "euclidean"),
               f"metric must be cosine or euclidean, got {self.metric!r}")
        _positive("outlier_z", self.outlier_z, 1000.0)
        _range("target_per_class", self.target_per_class, 0, MAX_COUNT)
        _range("target_seed", self.target_seed, 0, MAX_SEED)

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
DATA_PATHS = ("auto", "memory", "stream")  # as engine.streams.DATA_PATHS
MAX_LOADER_WORKERS = 32
MIXES = ("real", "synthetic", "real+synthetic")
# "crop" = random-resized crop (+ flip when hflip); the others add to that crop: a policy
# on the uint8 images (autoaugment, randaugment) or a batch mix with soft targets (mixup, cutmix);
# "meada" grows the training set with adversarial images (engine/evaluate/meada.py)
AUGMENTS = ("none", "crop", "autoaugment", "randaugment", "mixup", "cutmix", "meada")
SCHEDULES = ("cosine", "step")
# how synthetic images join classifier training (engine/evaluate/classifier_training.py)
SYN_BATCHNORMS = ("shared", "separate")  # separate: own batch statistics, running ones real
CURRICULA = ("mixed", "synthetic_then_real")
MAX_SYN_WEIGHT = 10.0


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
    augment: str = "crop"  # one of AUGMENTS; every one but "none" includes the crop
    seed: int = 0
    device: str = "cpu"
    crop_scale_min: float = 0.35  # smallest area fraction kept by the random-resized crop
    hflip: bool = False  # random horizontal flip with "crop" (off: digits are not mirror-symmetric)
    schedule: str = "cosine"  # after warm-up: "cosine" to 0, or "step" (x0.1 at 1/3, 2/3, 8/9)
    mixup_alpha: float = 0.2  # mixup: weight ~ Beta(a, a)
    cutmix_alpha: float = 1.0  # cutmix: box area fraction ~ Beta(a, a)
    randaugment_ops: int = 2  # randaugment: operations per image
    randaugment_magnitude: int = 9  # randaugment: magnitude in [0, 30]
    # > 1: the evaluate job trains under torchrun with this many data-parallel processes
    # (one per GPU; gloo processes on the CPU); train_classifier itself follows WORLD_SIZE
    processes: int = 1
    # meada (ME-ADA, engine/evaluate/meada.py): K maximisation phases, one every T_min epochs
    meada_phases: int = 2  # K
    meada_every: int = 0  # T_min in epochs; 0: epochs // (K + 1), the phases spread evenly
    meada_adv_steps: int = 15  # T_adv, gradient-ascent steps per phase
    meada_adv_lr: float = 1.0  # ascent step per image, on normalised pixels (see meada.py)
    meada_gamma: float = 1.0  # weight of the penultimate-feature distance (semantic constraint)
    meada_eta: float = 1.0  # weight of the prediction entropy (the "maximum entropy" term)
    meada_batch: int = 10000  # images perturbed per phase: the whole current set up to this cap
    # how synthetic images join training (the defaults: one shuffled set, as real ones)
    syn_weight: float = 1.0  # loss weight of a synthetic image, in (0, MAX_SYN_WEIGHT]
    syn_fraction: float | None = None  # None: natural; else synthetic share of every batch
    syn_bn: str = "shared"  # "separate": own BatchNorm batch statistics, running ones real
    curriculum: str = "mixed"  # or "synthetic_then_real": synthetic epochs first, then real
    curriculum_split: float = 0.5  # synthetic_then_real: the fraction of synthetic epochs
    # how the images reach the loop (engine/streams.py): "memory" (one uint8 tensor),
    # "stream" (read per batch by loader_workers DataLoader processes), or "auto": memory
    # while the mix and the scored split take at most memory_fraction of available memory
    data_path: str = "auto"
    memory_fraction: float = 0.25
    loader_workers: int = 2  # streamed: DataLoader worker processes (0: in the loop's own)

    def curriculum_epochs(self) -> int:
        """Epochs trained on synthetic images only under "synthetic_then_real" (the first
        ``curriculum_split`` of ``epochs``, rounded half up); 0 under "mixed"."""
        if self.curriculum == "mixed":
            return 0
        return math.floor(self.curriculum_split * self.epochs + 0.5)

    def validate(self) -> None:
        _check(self.processes >= 1, f"processes must be >= 1, got {self.processes}")
        self._validate_mixing()
        _check(self.meada_phases >= 1 and self.meada_every >= 0 and self.meada_adv_steps >= 1
               and self.meada_batch >= 1,
               f"meada needs meada_phases >= 1, meada_every >= 0, meada_adv_steps >= 1 and "
               f"meada_batch >= 1, got {self.meada_phases}, {self.meada_every}, "
               f"{self.meada_adv_steps}, {self.meada_batch}")
        _check(self.meada_adv_lr > 0 and self.meada_gamma >= 0 and self.meada_eta >= 0,
               f"meada needs meada_adv_lr > 0, meada_gamma >= 0 and meada_eta >= 0, got "
               f"{self.meada_adv_lr}, {self.meada_gamma}, {self.meada_eta}")
        if self.augment == "meada":
            _check(self.processes == 1,
                   f"meada runs on one process (the growing training set is not shared "
                   f"between processes), got processes={self.processes}")
            every = self.meada_every or max(1, self.epochs // (self.meada_phases + 1))
            _check(self.meada_phases * every < self.epochs,
                   f"meada's last phase starts after meada_phases x meada_every = "
                   f"{self.meada_phases} x {every} epochs, so it needs more epochs than that, "
                   f"got epochs={self.epochs}")
        _check(self.arch in CLASSIFIERS, f"arch must be one of {CLASSIFIERS}, got {self.arch!r}")
        _check(self.schedule in SCHEDULES,
               f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(self.mixup_alpha > 0 and self.cutmix_alpha > 0,
               f"mixup_alpha and cutmix_alpha must be > 0, got {self.mixup_alpha}, "
               f"{self.cutmix_alpha}")
        _check(self.randaugment_ops >= 1 and 0 <= self.randaugment_magnitude <= 30,
               f"randaugment needs randaugment_ops >= 1 and randaugment_magnitude in [0, 30], got "
               f"{self.randaugment_ops}, {self.randaugment_magnitude}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.augment in AUGMENTS, f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        _check(0.0 < self.crop_scale_min <= 1.0,
               f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        _check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(0.0 <= self.label_smoothing < 1.0,
               f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _range("image_size", self.image_size, 4, MAX_IMAGE_SIZE)
        _range("epochs", self.epochs, 1, MAX_EPOCHS)
        _range("batch_size", self.batch_size, 1, MAX_BATCH)
        # no upper bound: a diverging rate costs nothing and stops at its first NaN loss
        _positive("learning_rate", self.learning_rate, float("inf"))
        _check(_is_number(self.momentum) and 0.0 <= self.momentum < 1.0,
               f"momentum must be in [0, 1), got {self.momentum!r}")
        _range("weight_decay", self.weight_decay, 0.0, 1.0)
        _range("warmup_epochs", self.warmup_epochs, 0, MAX_EPOCHS)
        _range("seed", self.seed, 0, MAX_SEED)
        _positive("mixup_alpha", self.mixup_alpha, 100.0)
        _positive("cutmix_alpha", self.cutmix_alpha, 100.0)
        _range("randaugment_ops", self.randaugment_ops, 1, 16)
        _range("processes", self.processes, 1, MAX_PROCESSES)
        _range("meada_phases", self.meada_phases, 1, 100)
        _range("meada_every", self.meada_every, 0, MAX_EPOCHS)
        _range("meada_adv_steps", self.meada_adv_steps, 1, 1000)
        _positive("meada_adv_lr", self.meada_adv_lr, 1000.0)
        _range("meada_gamma", self.meada_gamma, 0.0, 1000.0)
        _range("meada_eta", self.meada_eta, 0.0, 1000.0)
        _range("meada_batch", self.meada_batch, 1, MAX_COUNT)
        _check(self.data_path in DATA_PATHS,
               f"data_path must be one of {DATA_PATHS}, got {self.data_path!r}")
        _check(_is_number(self.memory_fraction) and 0.0 < self.memory_fraction <= 1.0,
               f"memory_fraction must be in (0, 1], got {self.memory_fraction!r}")
        _range("loader_workers", self.loader_workers, 0, MAX_LOADER_WORKERS)
        _check(self.data_path != "stream" or self.augment != "meada",
               "meada grows the training set in memory: it cannot run with data_path=stream")
        _check(self.data_path != "stream" or self.processes == 1,
               f"data_path=stream runs in one process, got processes={self.processes}")

    def _validate_mixing(self) -> None:
        """Bounds of the options that say how synthetic images join training."""
        _check(_is_number(self.syn_weight) and 0.0 < self.syn_weight <= MAX_SYN_WEIGHT,
               f"syn_weight must be in (0, {MAX_SYN_WEIGHT:g}], got {self.syn_weight!r}")
        _check(self.syn_fraction is None
               or (_is_number(self.syn_fraction) and 0.0 < self.syn_fraction < 1.0),
               f"syn_fraction must be null (the mix's natural proportion) or in (0, 1), got "
               f"{self.syn_fraction!r}")
        _check(self.syn_bn in SYN_BATCHNORMS,
               f"syn_bn must be one of {SYN_BATCHNORMS}, got {self.syn_bn!r}")
        _check(self.curriculum in CURRICULA,
               f"curriculum must be one of {CURRICULA}, got {self.curriculum!r}")
        _check(_is_number(self.curriculum_split) and 0.0 < self.curriculum_split < 1.0,
               f"curriculum_split must be in (0, 1), got {self.curriculum_split!r}")
        if self.curriculum != "mixed":
            first = self.curriculum_epochs()
            _check(1 <= first < self.epochs,
                   f"curriculum {self.curriculum} needs at least one synthetic and one real "
                   f"epoch: curriculum_split={self.curriculum_split} of epochs={self.epochs} "
                   f"gives {first} synthetic epoch(s)")
            _check(self.syn_fraction is None,
                   f"syn_fraction={self.syn_fraction} composes mixed batches, curriculum "
                   f"{self.curriculum} trains on one kind at a time: choose one")
        if self.augment == "meada":
            changed = {k: getattr(self, k) for k, v in SYN_DEFAULTS.items()
                       if getattr(self, k) != v and k != "curriculum_split"}
            _check(not changed,
                   f"meada grows the training set with adversarial images that are neither "
                   f"real nor synthetic: it runs with the default mixing options only, got "
                   f"{changed}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# the mixing options at their defaults: synthetic images train exactly as real ones
SYN_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(EvalConfig)
    if f.name in ("syn_weight", "syn_fraction", "syn_bn", "curriculum", "curriculum_split")}


@dataclass(frozen=True)
class ExportConfig(StageConfig):
    """Export of a selection (and optionally the real training images) as an ImageFolder.

    Every image is written at one size: ``size`` x ``size`` pixels, or with ``size = 0`` the
    real images' size (their most common one; the synthetic images' when no real image
    is in the export). Images already at that size are copied (or linked) as they are.
    """

    include_real: bool = False
    link: bool = False  # hard-link instead of copy when possible
    val_fraction: float = 0.0  # > 0: train/ and val/ folders, stratified per class and kind
    split_seed: int = 0
    size: int = 0  # pixels per side of every exported image; 0 = the real images' size

    def validate(self) -> None:
        _check(isinstance(self.size, int), f"size must be a whole number of pixels, got "
                                            f"{self.size!r}")
        _range("size", self.size, 0, MAX_IMAGE_SIZE)
        _check(0.0 <= self.val_fraction < 1.0,
               f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _range("split_seed", self.split_seed, 0, MAX_SEED)


MAP_MAX_POINTS = 200_000  # points the studio draws in the browser (WebGL)
MAP_METHODS = ("pca", "tsne", "umap")  # engine.curation.maps.layout_2d


@dataclass(frozen=True)
class MapConfig(StageConfig):
    """A 2-D layout of a generation's real and generated representations (``map_stage``).

    ``max_points`` points at most, stratified between real and synthetic and between classes
    (``curation.maps.stratified_rows``); ``method`` "pca", "tsne" (at most
    ``curation.maps.TSNE_MAX_POINTS`` points) or "umap" (the optional umap-learn); ``seed``
    makes the subsample and the layout reproducible.
    """

    method: str = "pca"
    seed: int = 0
    max_points: int = MAP_MAX_POINTS

    def validate(self) -> None:
        _check(self.method in MAP_METHODS,
               f"method must be one of {', '.join(MAP_METHODS)}, got {self.method!r}")
        _range("seed", self.seed, 0, MAX_SEED)
        _range("max_points", self.max_points, 2, MAP_MAX_POINTS)


# the recipe search's curation bands: the four BandConfig presets, and "outliers" = keep all but
# the far outliers (BandConfig outlier="real": farther than the class's real images' outlier_q)
RECIPE_BANDS = ("all", "middle", "nearest", "farthest", "outliers")
CLASSICAL_AUGMENTS = ("autoaugment", "randaugment", "mixup", "cutmix")


@dataclass(frozen=True)
class RecipeSpace(StageConfig):
    """The recipe search's space, budget and schedule (``engine.recipe``).

    A candidate is (generation settings: ``guidance`` x ``variations`` x ``perturb``) x
    (``bands``) x (mixing: ``syn_weight`` x ``syn_fraction`` x ``syn_bn`` x ``curriculum``).
    One generation per (guidance, perturb) at the largest ``variations``; a candidate with k
    variations uses the first k of each source image.

    Budget: ``budget_epochs`` evaluation-epochs in all (the search on validation, the
    classical baselines on validation and the final report on test); ``budget_seconds`` > 0
    also stops promoting candidates once the finished search evaluations took that long.
    Schedule: successive halving; rung i trains each surviving candidate for ``rungs[i]``
    epochs (from scratch: a cosine schedule depends on its length) and keeps the top
    ``1/eta``; the report trains ``report_seeds`` seeds at ``rungs[-1]`` epochs.
    Lengths: real-only, each of ``classical`` and the search's winner train on validation for
    ``rungs[-1]`` x each of ``baseline_epoch_factors`` epochs; each keeps its best length for
    the report.
    Memorisation: a candidate's near-copy fraction is the fraction of its synthetic images
    closer to their nearest real training image than ``copy_factor`` x the median real-real
    nearest-neighbour distance; with ``max_copy_fraction`` set, candidates above it are
    excluded.
    """

    bands: tuple[str, ...] = ("all", "middle")
    keep_fraction: float = 0.5  # the fraction of each class the middle / nearest / farthest keep
    guidance: tuple[float, ...] = (1.0,)
    variations: tuple[int, ...] = (1, 2)
    perturb: tuple[float, ...] = (0.0,)  # GenerateConfig.perturb: lambda (0 = none)
    syn_weight: tuple[float, ...] = (1.0,)
    syn_fraction: tuple[float | None, ...] = (None,)  # None: natural proportion
    syn_bn: tuple[str, ...] = ("shared",)
    curriculum: tuple[str, ...] = ("mixed",)
    classical: tuple[str, ...] = CLASSICAL_AUGMENTS
    # real-only, each classical augmentation and the winner train, on validation, for
    # rungs[-1] x each of these factors, and the report uses each one's best: a synthetic mix
    # has more images, hence more optimizer steps per epoch, and the baselines must not lose
    # for want of training
    baseline_epoch_factors: tuple[int, ...] = (1, 3)
    budget_epochs: int = 2000
    budget_seconds: float = 0.0  # 0: no wall-clock limit
    rungs: tuple[int, ...] = (5, 15)
    eta: int = 3
    report_seeds: int = 3
    seed: int = 0  # candidate sampling and the search's evaluation seed
    max_generations: int = 4  # at most this many (guidance, perturb) generations
    copy_factor: float = 0.5
    max_copy_fraction: float | None = None  # None: near-copies are shown, nothing excluded

    def validate(self) -> None:
        def axis(name: str, values: tuple, ok: Callable[[Any], bool], what: str) -> None:
            _check(isinstance(values, tuple) and len(values) >= 1,
                   f"{name} must list at least one value, got {values!r}")
            bad = [v for v in values if not ok(v)]
            _check(not bad, f"{name} must be {what}, got {bad}")

        axis("bands", self.bands, lambda v: v in RECIPE_BANDS, f"in {RECIPE_BANDS}")
        axis("guidance", self.guidance, lambda v: _number(v) and 0.0 <= v <= 20.0, "in [0, 20]")
        axis("variations", self.variations, lambda v: isinstance(v, int) and 1 <= v <= 4,
             "integers in [1, 4]")
        axis("perturb", self.perturb, lambda v: _number(v) and 0.0 <= v <= PERTURB_MAX,
             f"in [0, {PERTURB_MAX:g}] (GenerateConfig.perturb's bounds)")
        axis("syn_weight", self.syn_weight, lambda v: _number(v) and 0.0 < v <= 10.0,
             "in (0, 10]")
        axis("syn_fraction", self.syn_fraction,
             lambda v: v is None or (_number(v) and 0.0 < v < 1.0), "None or in (0, 1)")
        axis("syn_bn", self.syn_bn, lambda v: v in SYN_BATCHNORMS, f"in {SYN_BATCHNORMS}")
        axis("curriculum", self.curriculum, lambda v: v in CURRICULA, f"in {CURRICULA}")
        axis("rungs", self.rungs, lambda v: isinstance(v, int) and 1 <= v <= 1000,
             "integers in [1, 1000]")
        _check(all(a < b for a, b in zip(self.rungs, self.rungs[1:])),
               f"rungs must increase strictly, got {self.rungs}")
        axis("baseline_epoch_factors", self.baseline_epoch_factors,
             lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 20,
             "integers in [1, 20]")
        _check(all(c in CLASSICAL_AUGMENTS for c in self.classical),
               f"classical must be in {CLASSICAL_AUGMENTS}, got {self.classical}")
        _check(0.0 < self.keep_fraction <= 1.0,
               f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        _check(1 <= self.budget_epochs <= 10_000_000,
               f"budget_epochs must be in [1, 1e7], got {self.budget_epochs}")
        _check(self.budget_seconds >= 0.0,
               f"budget_seconds must be >= 0 (0 = no limit), got {self.budget_seconds}")
        _check(2 <= self.eta <= 10, f"eta must be in [2, 10], got {self.eta}")
        _check(1 <= self.report_seeds <= 20,
               f"report_seeds must be in [1, 20], got {self.report_seeds}")
        _check(1 <= self.max_generations <= 100,
               f"max_generations must be in [1, 100], got {self.max_generations}")
        _check(self.copy_factor > 0.0, f"copy_factor must be > 0, got {self.copy_factor}")
        _check(self.max_copy_fraction is None or 0.0 <= self.max_copy_fraction < 1.0,
               f"max_copy_fraction must be None or in [0, 1), got {self.max_copy_fraction}")
        _range("budget_seconds", self.budget_seconds, 0.0, 1e8)
        _positive("copy_factor", self.copy_factor, 100.0)
        _range("seed", self.seed, 0, MAX_SEED)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
