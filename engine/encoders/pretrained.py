"""What the pretrained encoders (DINOv2, DINOv3, CLIP) share: preprocessing, lazy weights,
batched inference with fp16/bf16 autocast on CUDA, and a manifest that says where the
weights came from.

Preprocessing follows each model's own processor config: resize so that the shorter side is
``resize`` (``interpolation``, antialiased), centre-crop ``crop x crop``, scale to [0, 1],
normalise with ``mean`` / ``std``. Image files are read (``read_images``) with PIL at the
resize stage (shorter side ``resize``, centre square), so that ``encode`` only crops them;
arrays of any size given to ``encode`` are resized with torch.

Weights load on first use (``load_weights``), so creating an encoder to validate a config is
cheap. The saved ``encoder.json`` holds the config (with ``model_id``), the resolved
``weights`` source, the variant, dim and preprocessing; ``load`` rebuilds the encoder from
the same model id. Weights are never copied into the project.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from engine.config import EncodeConfig
from engine.encoders.base import Encoder
from engine.encoders.weights import WeightsSource
from engine.errors import InvalidConfigError
from engine.progress import CancelToken, ProgressFn, no_progress

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box",
                 5: "hamming"}


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side) -> centre crop -> [0, 1] -> (x - mean) / std.

    Attributes:
        resize: target of the shorter side, pixels.
        crop: side of the centre crop (the model's input size), pixels.
        mean, std: per-channel normalisation (RGB).
        interpolation: "bicubic" or "bilinear" (antialiased when shrinking).
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.crop < 1 or self.resize < self.crop:
            raise InvalidConfigError(
                f"preprocessing needs 1 <= crop <= resize, got crop={self.crop}, "
                f"resize={self.resize}")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise InvalidConfigError(
                f"interpolation must be bicubic, bilinear or nearest, got {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InvalidConfigError(f"mean/std must be 3 values (std > 0), got "
                                     f"{self.mean} / {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocess":
        return cls(resize=int(data["resize"]), crop=int(data["crop"]),
                   mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
                   std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                   interpolation=str(data.get("interpolation", "bicubic")))

    @classmethod
    def from_hf_processor(cls, config: dict[str, Any], default: "Preprocess") -> "Preprocess":
        """Read a transformers ``preprocessor_config.json`` (BitImageProcessor, DINOv3's, ...).

        ``size`` is either ``{"shortest_edge": s}`` (resize the shorter side) or
        ``{"height": h, "width": w}`` (a square: resize to it; a centre square crop is taken
        first, so non-square images are cropped rather than squashed).
        """
        size = config.get("size", {}) if config.get("do_resize", True) else {}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        resize = size.get("shortest_edge") or size.get("height") or default.resize
        crop = resize
        if config.get("do_center_crop", False):
            crop_size = config.get("crop_size", {})
            if isinstance(crop_size, int):
                crop_size = {"height": crop_size}
            crop = crop_size.get("height") or default.crop
        mean, std = default.mean, default.std
        if config.get("do_normalize", True):
            mean = tuple(config.get("image_mean", mean))  # type: ignore[assignment]
            std = tuple(config.get("image_std", std))  # type: ignore[assignment]
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        interpolation = _PIL_RESAMPLE.get(int(config.get("resample", 3)), "bicubic")
        if interpolation not in ("bicubic", "bilinear", "nearest"):
            interpolation = "bicubic"
        return cls(resize=int(resize), crop=int(crop), mean=mean, std=std,
                   interpolation=interpolation)

    # ------------------------------------------------------------------ pixels -> tensor

    def __call__(self, pixels: np.ndarray, device: Any = "cpu") -> Any:
        """uint8 (B, H, W, 3) -> float32 tensor (B, 3, crop, crop), normalised."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.array(pixels, dtype=np.uint8)).to(device)  # writable copy
        x = x.permute(0, 3, 1, 2).float()  # (B, 3, H, W), 0..255
        h, w = x.shape[-2:]
        if min(h, w) != self.resize:
            scale = self.resize / min(h, w)
            size = (self.resize, round(w * scale)) if h <= w else (round(h * scale), self.resize)
            x = F.interpolate(x, size=size, mode=self.interpolation,
                              antialias=self.interpolation != "nearest",
                              **({} if self.interpolation == "nearest" else
                                 {"align_corners": False}))
            x = x.clamp(0.0, 255.0)
        h, w = x.shape[-2:]
        top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        x = x[..., top:top + self.crop, left:left + self.crop] / 255.0  # (B, 3, crop, crop)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def read(self, path: Path) -> np.ndarray:
        """Image file -> uint8 (resize, resize, 3): shorter side resized (PIL), centre square."""
        from PIL import Image

        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                    "nearest": Image.Resampling.NEAREST}[self.interpolation]
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = self.resize / min(w, h)
            size = (self.resize, round(h * scale)) if w <= h else (round(w * scale), self.resize)
            if size != (w, h):
                img = img.resize(size, resample)
            w, h = img.size
            left, top = int(round((w - self.resize) / 2.0)), int(round((h - self.resize) / 2.0))
            img = img.crop((left, top, left + self.resize, top + self.resize))
            return np.asarray(img, dtype=np.uint8)


PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


class PretrainedEncoder(Encoder):
    """Base of the encoders whose weights come from a hub id or a local path.

    Subclasses set ``default_model_id``, ``variants`` (short alias -> model id) and
    implement ``_load(model_id) -> (module, dim, Preprocess, WeightsSource, variant)`` and
    ``_forward(module, x) -> (B, dim)``.
    """

    offline = False
    needs_fit = False
    needs_labels = False
    reads_files = True
    default_model_id: ClassVar[str]
    variants: ClassVar[dict[str, str]] = {}

    def __init__(self, config: EncodeConfig, num_classes: int) -> None:
        super().__init__(config, num_classes)
        self.model_id = self.variants.get(str(config.model_id or "").lower(),
                                          config.model_id or self.default_model_id)
        self._module: Any = None
        self.preprocess: Preprocess | None = None
        self.weights: WeightsSource | None = None
        self.variant: str = ""
        self._recorded: dict[str, Any] = {}

    # ---------------------------------------------------------------- loading

    def load_weights(self) -> None:
        """Load the model (once): resolve the weights, build the module, read preprocessing.

        Raises:
            WeightsNotFoundError: the weights are missing and cannot be fetched.
        """
        if self._module is not None:
            return
        import torch

        module, dim, preprocess, weights, variant = self._load(self.model_id)
        module.eval().requires_grad_(False).to(torch.device(self.config.device))
        self._module, self.dim, self.preprocess = module, int(dim), preprocess
        self.weights, self.variant = weights, variant
        rec = self._recorded
        if rec.get("dim") and int(rec["dim"]) != self.dim:
            raise InvalidConfigError(
                f"{self.model_id} now gives {self.dim}-d embeddings, but this encoder was "
                f"saved with {rec['dim']}-d ones; the weights changed")
        if rec.get("preprocess") and Preprocess.from_dict(rec["preprocess"]) != preprocess:
            log.warning("preprocessing of %s differs from the saved one (%s != %s); the "
                        "saved one is kept", self.model_id, preprocess, rec["preprocess"])
            self.preprocess = Preprocess.from_dict(rec["preprocess"])
        old = (rec.get("weights") or {}).get("revision")
        if old and weights.revision and old != weights.revision:
            log.warning("%s resolved to revision %s, but the encoder was saved with %s",
                        self.model_id, weights.revision, old)
        log.info("loaded %s encoder %s (%s, %d-d) from %s", self.name, self.model_id,
                 variant, self.dim, weights.path)

    def _load(self, model_id: str) -> tuple[Any, int, Preprocess, WeightsSource, str]:
        raise NotImplementedError

    def _forward(self, module: Any, x: Any) -> Any:
        raise NotImplementedError

    @property
    def input_size(self) -> int:
        self.load_weights()
        assert self.preprocess is not None
        return self.preprocess.crop

    @property
    def load_size(self) -> int:
        """Side of the images ``read_images`` returns (the resize stage)."""
        self.load_weights()
        assert self.preprocess is not None
        return self.preprocess.resize

    def read_images(self, paths: list[Path]) -> np.ndarray:
        """Image files -> uint8 (N, load_size, load_size, 3), read with ``read_threads`` threads."""
        self.load_weights()
        assert self.preprocess is not None
        out = np.empty((len(paths), self.load_size, self.load_size, 3), dtype=np.uint8)
        threads = self.config.read_threads
        if threads <= 1 or len(paths) < 2:
            for i, p in enumerate(paths):
                out[i] = self.preprocess.read(Path(p))
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for i, img in enumerate(pool.map(self.preprocess.read, map(Path, paths))):
                    out[i] = img
        return out

    # ---------------------------------------------------------------- encoding

    def encode(self, pixels: np.ndarray | None, labels: np.ndarray | None = None,
               progress: ProgressFn = no_progress,
               cancel: CancelToken | None = None) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, dim); loads the weights on first use."""
        self.load_weights()
        return super().encode(pixels, labels, progress=progress, cancel=cancel)

    def _autocast(self) -> Any:
        import torch

        device = torch.device(self.config.device)
        dtype = PRECISIONS[self.config.precision]
        if device.type != "cuda" or dtype is None:
            return contextlib.nullcontext()  # fp32 on the CPU
        return torch.autocast("cuda", dtype=getattr(torch, dtype))

    def _encode_batch(self, pixels: np.ndarray | None,
                      labels: np.ndarray | None) -> np.ndarray:
        import torch

        assert pixels is not None and self.preprocess is not None
        x = self.preprocess(pixels, device=self.config.device)  # (B, 3, crop, crop)
        with torch.inference_mode(), self._autocast():
            out = self._forward(self._module, x)  # (B, dim)
        return out.float().cpu().numpy()

    # ---------------------------------------------------------------- persistence

    def save(self, folder: Path) -> None:
        """Write ``encoder.json`` (no weights: they stay where ``weights`` says)."""
        self.load_weights()
        super().save(folder)

    def extra_json(self) -> dict[str, Any]:
        self.load_weights()
        assert self.preprocess is not None and self.weights is not None
        return {"model_id": self.model_id, "variant": self.variant,
                "preprocess": self.preprocess.to_dict(), "weights": self.weights.to_dict()}

    def load_state(self, manifest: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        """Remember what was saved; the weights load lazily from the same model id."""
        super().load_state(manifest, state)
        self._recorded = dict(manifest)
        self.model_id = str(manifest.get("model_id") or self.model_id)
        self.variant = str(manifest.get("variant", ""))
        if manifest.get("preprocess"):
            self.preprocess = Preprocess.from_dict(manifest["preprocess"])

    def check_available(self) -> None:
        """Raise WeightsNotFoundError now when the weights are missing and offline (cheap).

        Called by the encode stage before a job is queued; online, a missing hub model is
        downloaded by the job itself. A local folder is checked now either way (no download
        is involved), so a mistyped path fails before any job row is written.
        """
        from engine.encoders.weights import hub_offline, is_path

        model_id = self.config.model_id
        if hub_offline() or (model_id and is_path(model_id)):
            self._resolve()

    def _resolve(self) -> WeightsSource:
        raise NotImplementedError
