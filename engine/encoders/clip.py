"""CLIP image embedding (``open_clip``): the projected image embedding, not normalised (the
paper: OpenAI CLIP ViT-B/32, 512-d).

``EncodeConfig.model_id`` forms:

- ``None``: ``ViT-B-32`` with OpenAI's weights (tag ``openai``, QuickGELU as trained);
- ``NAME`` or ``NAME:TAG``: an open_clip architecture and pretrained tag
  (``ViT-B-32:laion2b_s34b_b79k``; ``open_clip.list_pretrained()`` lists them);
- ``NAME:FILE``: an architecture and a local checkpoint (``.safetensors`` preferred);
- a folder with ``open_clip_config.json`` + ``open_clip_model.safetensors`` (the layout of
  open_clip repositories on the hub, e.g. ``hf download timm/vit_base_patch32_clip_224.openai
  --local-dir DIR``), or ``hf-hub:ORG/REPO`` for such a repository.

Preprocessing is the model's own (``open_clip.get_model_preprocess_cfg``): shorter side to
``size`` (bicubic for OpenAI's), centre crop, CLIP's mean / std. Only the image tower is kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.encoders.pretrained import Preprocess, PretrainedEncoder
from engine.encoders.registry import register_encoder
from engine.encoders.weights import WeightsSource, is_path, missing_message, resolve_file, resolve_folder
from engine.errors import InvalidConfigError, WeightsNotFoundError

DEFAULT = "ViT-B-32:openai"
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _split(model_id: str) -> tuple[str, str | None]:
    """``NAME[:TAG_OR_FILE]`` -> (NAME, TAG_OR_FILE or None)."""
    name, _, rest = model_id.partition(":")
    return name, (rest or None)


@register_encoder
class ClipEncoder(PretrainedEncoder):
    """CLIP image embedding: uint8 (N, H, W, 3) -> float32 (N, embed_dim), 512 for ViT-B-32."""

    name = "clip"
    description = ("CLIP image embedding (open_clip; default ViT-B-32 OpenAI, 512-d); "
                   "needs the weights")
    default_model_id = DEFAULT
    variants = {"b32": DEFAULT, "vit-b-32": DEFAULT, "vit-b/32": DEFAULT}

    def _resolve(self) -> WeightsSource:
        """Find the checkpoint (local, or in / through the hub cache) without building the model."""
        import open_clip

        mid = self.model_id
        if mid.startswith("hf-hub:"):
            repo = mid[len("hf-hub:"):]
            src = resolve_folder(repo, need=("open_clip_config.json",),
                                 weights_glob="open_clip_*", local_hint="--model-id FOLDER")
            return WeightsSource(model_id=mid, path=src.path, source="hub",
                                 revision=src.revision)
        if mid.startswith("local-dir:") or (is_path(mid) and ":" not in mid[2:]):
            folder = mid[len("local-dir:"):] if mid.startswith("local-dir:") else mid
            src = resolve_folder(folder, need=("open_clip_config.json",),
                                 weights_glob="open_clip_*")
            return WeightsSource(model_id=mid, path=src.path, source="local")
        name, rest = _split(mid)
        if open_clip.get_model_config(name) is None:
            raise InvalidConfigError(
                f"{name!r} is not an open_clip architecture (see open_clip.list_models()); "
                f"model_id is NAME[:TAG|:FILE], a folder, or hf-hub:ORG/REPO")
        if rest is not None and is_path(rest):
            path = Path(rest).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(f"checkpoint file {str(path)!r} does not exist")
            return WeightsSource(model_id=mid, path=str(path.resolve()), source="local")
        tag = rest or "openai"
        cfg = open_clip.get_pretrained_cfg(name, tag)
        if not cfg:
            raise InvalidConfigError(
                f"{tag!r} is not a pretrained tag of {name}; known: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}")
        hub = cfg.get("hf_hub")
        if not hub:
            raise WeightsNotFoundError(missing_message(
                mid, f"tag {tag!r} is not on the hugging face hub; download {cfg.get('url')} and "
                     f"pass --model-id {name}:FILE", local_hint=f"--model-id {name}:FILE"))
        repo, filename = os.path.split(hub)  # "org/repo/" or "org/repo/file", as open_clip reads it
        names = (filename,) if filename else _HUB_FILES
        return resolve_file(repo, names, local_hint="--model-id FOLDER",
                            message_files=("open_clip_config.json", names[0]))

    def _load(self, model_id: str) -> tuple[Any, int, Preprocess, WeightsSource, str]:
        import open_clip

        weights = self._resolve()
        if weights.path and Path(weights.path).is_dir():
            model = open_clip.create_model(f"local-dir:{weights.path}", device="cpu")
            cfg = json.loads((Path(weights.path) / "open_clip_config.json").read_text())
            variant = str(cfg.get("model_cfg", {}).get("vision_cfg", {}).get(
                "timm_model_name", Path(weights.path).name))
        else:
            name, rest = _split(model_id)
            tag_cfg = {} if rest is not None and is_path(rest) else \
                (open_clip.get_pretrained_cfg(name, rest or "openai") or {})
            force = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                     if k in tag_cfg}
            model = open_clip.create_model(
                name, pretrained=weights.path, device="cpu",
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                force_preprocess_cfg=force or None)
            variant = f"{name}:{rest or 'openai'}" if not (rest and is_path(rest)) else name
        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", 224)
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        preprocess = Preprocess(resize=size, crop=size, mean=tuple(pp["mean"]),
                                std=tuple(pp["std"]),
                                interpolation=str(pp.get("interpolation", "bicubic")))
        dim = int(getattr(model, "embed_dim", 0) or model.visual.output_dim)
        visual = model.visual  # the text tower is not needed
        del model
        return visual, dim, preprocess, weights, variant

    def _forward(self, module: Any, x: Any) -> Any:
        return module(x)  # (B, embed_dim), what CLIP.encode_image returns unnormalised
