"""DINOv2 and DINOv3 encoders (``transformers``): the CLS token of the last layer, after the
final layer norm, as the representation (the paper: DINOv2 ViT-B/14, DINOv3 ViT-B/16, 768-d).

``EncodeConfig.model_id`` is a hub id, a folder saved with ``save_pretrained`` (config.json +
model.safetensors [+ preprocessor_config.json]) or a short variant name (``s``, ``b``,
``l``, ``g`` for DINOv2; ``s``, ``s+``, ``b``, ``l``, ``h+`` for DINOv3). Preprocessing is
read from the folder's ``preprocessor_config.json`` when it has one, else the family's
default: DINOv2 resizes the shorter side to 256 (bicubic) and centre-crops 224 (scaled to
the model's ``image_size``); DINOv3 resizes to 224 (bilinear), as its processor does.
ImageNet mean / std for both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from engine.encoders.pretrained import IMAGENET_MEAN, IMAGENET_STD, Preprocess, PretrainedEncoder
from engine.encoders.registry import register_encoder
from engine.encoders.weights import WeightsSource, resolve_folder
from engine.errors import InvalidConfigError

_SIZES = {384: "S", 768: "B", 1024: "L", 1280: "H", 1536: "g", 4096: "7B"}


class _DinoEncoder(PretrainedEncoder):
    """A ``transformers`` ViT whose output ``pooler_output`` is the normalised CLS token."""

    model_types: ClassVar[tuple[str, ...]]
    gated: ClassVar[bool] = False  # the hub repositories need an accepted licence

    def _default_preprocess(self, image_size: int) -> Preprocess:
        raise NotImplementedError

    def _resolve(self) -> WeightsSource:
        return resolve_folder(self.model_id, need=("config.json",), gated=self.gated)

    def _load(self, model_id: str) -> tuple[Any, int, Preprocess, WeightsSource, str]:
        import torch
        from transformers import AutoModel

        weights = self._resolve()
        folder = Path(weights.path)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") not in self.model_types:
            raise InvalidConfigError(
                f"{model_id} holds a {config.get('model_type')!r} model, not a {self.name} one "
                f"(model_type {' or '.join(self.model_types)}); pick the matching encoder")
        module = AutoModel.from_pretrained(str(folder), local_files_only=True,
                                           dtype=torch.float32)
        dim = int(module.config.hidden_size)
        default = self._default_preprocess(int(config.get("image_size", 224)))
        processor = folder / "preprocessor_config.json"
        preprocess = default if not processor.is_file() else Preprocess.from_hf_processor(
            json.loads(processor.read_text(encoding="utf-8")), default)
        size = _SIZES.get(dim, f"{dim}d")
        variant = f"ViT-{size}/{config.get('patch_size', '?')}"
        return module, dim, preprocess, weights, variant

    def _forward(self, module: Any, x: Any) -> Any:
        out = module(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]  # (B, dim)


@register_encoder
class Dinov2Encoder(_DinoEncoder):
    """DINOv2 CLS token: uint8 (N, H, W, 3) -> float32 (N, 384 | 768 | 1024 | 1536)."""

    name = "dinov2"
    description = ("DINOv2 CLS token (transformers; default ViT-B/14, 768-d, "
                   "facebook/dinov2-base); needs the weights")
    default_model_id = "facebook/dinov2-base"
    model_types = ("dinov2", "dinov2_with_registers")
    variants = {
        "s": "facebook/dinov2-small", "small": "facebook/dinov2-small",
        "vits14": "facebook/dinov2-small",
        "b": "facebook/dinov2-base", "base": "facebook/dinov2-base",
        "vitb14": "facebook/dinov2-base",
        "l": "facebook/dinov2-large", "large": "facebook/dinov2-large",
        "vitl14": "facebook/dinov2-large",
        "g": "facebook/dinov2-giant", "giant": "facebook/dinov2-giant",
        "vitg14": "facebook/dinov2-giant",
    }

    def _default_preprocess(self, image_size: int) -> Preprocess:
        return Preprocess(resize=round(image_size * 256 / 224), crop=image_size,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic")


_V3 = "facebook/dinov3-{}-pretrain-lvd1689m"


@register_encoder
class Dinov3Encoder(_DinoEncoder):
    """DINOv3 CLS token: uint8 (N, H, W, 3) -> float32 (N, 384 | 768 | 1024 | 1280)."""

    name = "dinov3"
    description = ("DINOv3 CLS token (transformers; default ViT-B/16, 768-d, "
                   "facebook/dinov3-vitb16-pretrain-lvd1689m, gated); needs the weights")
    default_model_id = _V3.format("vitb16")
    model_types = ("dinov3_vit",)
    gated = True
    variants = {
        "s": _V3.format("vits16"), "small": _V3.format("vits16"), "vits16": _V3.format("vits16"),
        "s+": _V3.format("vits16plus"), "vits16plus": _V3.format("vits16plus"),
        "b": _V3.format("vitb16"), "base": _V3.format("vitb16"), "vitb16": _V3.format("vitb16"),
        "l": _V3.format("vitl16"), "large": _V3.format("vitl16"), "vitl16": _V3.format("vitl16"),
        "h+": _V3.format("vith16plus"), "vith16plus": _V3.format("vith16plus"),
    }

    def _default_preprocess(self, image_size: int) -> Preprocess:
        return Preprocess(resize=image_size, crop=image_size, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, interpolation="bilinear")
