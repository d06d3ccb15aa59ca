"""The file formats generated images are written in: PNG, WebP or JPEG, with their metadata.

``GenerateConfig.image_format`` picks one and ``GenerateConfig.quality`` (1..100) sets the
lossy encoders' quality:

    format  extension  quality
    png     .png       unused: lossless (zlib level 6, Pillow's default)
    webp    .webp      1..99 lossy WebP (method 4); 100 = lossless WebP (exact pixels,
                       compression effort 50 of 100, method 2)
    jpeg    .jpg       1..100 baseline JPEG, 4:2:0 chroma (Pillow's default), optimised tables

WebP at 100 is lossless rather than "lossy at its best": lossy WebP keeps 4:2:0 chroma even
at 100, so a user asking for the top quality gets exact pixels, usually in fewer bytes than
PNG. The lossless effort is moderate: WebP's maximum (quality 100, method 4) took about 20x
longer per 256 px image for about 4 % fewer bytes (benchmarks/generated_format.py's
images, measured while writing this). JPEG has no lossless mode; 100 is its least lossy
setting.

Provenance travels in the file: PNG text chunks (``rcdm:seed`` ...), and for WebP / JPEG
one EXIF ImageDescription holding the same keys as ASCII JSON (non-ASCII class names are
escaped). ``read_metadata`` reads either back as the same ``{key: text}`` dict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, PngImagePlugin

# GenerateConfig.image_format -> file extension (the order is the CLI's and the studio's)
IMAGE_FORMATS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
PILLOW_NAMES = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
DEFAULT_QUALITY = 95
WEBP_LOSSLESS_QUALITY = 100  # webp at this quality is written lossless
_EXIF_DESCRIPTION = 0x010E  # ImageDescription (ASCII)
METADATA_PREFIX = "rcdm:"


def suffix(image_format: str) -> str:
    """The file extension of ``image_format`` ("png" -> ".png", "jpeg" -> ".jpg")."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {tuple(IMAGE_FORMATS)}, got "
                         f"{image_format!r}")
    return IMAGE_FORMATS[image_format]


def format_of(path: Path | str) -> str:
    """The format name a file's extension says ("x.jpg" -> "jpeg"), or the bare extension
    (".bmp" -> "bmp") for formats generation does not write."""
    ext = Path(path).suffix.lower()
    names = {v: k for k, v in IMAGE_FORMATS.items()} | {".jpeg": "jpeg"}
    return names.get(ext, ext.lstrip("."))


def save_options(image_format: str, quality: int) -> dict:
    """Pillow ``save`` keyword arguments of ``image_format`` at ``quality``."""
    if image_format == "webp":
        if int(quality) >= WEBP_LOSSLESS_QUALITY:
            return {"format": "WEBP", "lossless": True, "quality": 50, "method": 2}
        return {"format": "WEBP", "quality": int(quality), "method": 4}
    if image_format == "jpeg":
        return {"format": "JPEG", "quality": int(quality), "optimize": True}
    if image_format == "png":
        return {"format": "PNG"}
    raise ValueError(f"image format must be one of {tuple(IMAGE_FORMATS)}, got {image_format!r}")


def save_image(f: BinaryIO | Path | str, image: Image.Image | np.ndarray, image_format: str,
               quality: int = DEFAULT_QUALITY, text: dict[str, str] | None = None) -> None:
    """Write ``image`` ((H, W, 3) uint8 or a PIL image) as ``image_format`` with ``text``
    (PNG text chunks; an EXIF ImageDescription of JSON for WebP and JPEG)."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    options = save_options(image_format, quality)
    if text:
        if image_format == "png":
            info = PngImagePlugin.PngInfo()
            for key, value in text.items():
                info.add_text(key, value)
            options["pnginfo"] = info
        else:
            exif = Image.Exif()
            exif[_EXIF_DESCRIPTION] = json.dumps(text, sort_keys=True, ensure_ascii=True)
            options["exif"] = exif.tobytes()
    img.save(f, **options)


def write_image_atomic(path: Path, image: np.ndarray, image_format: str = "png",
                       quality: int = DEFAULT_QUALITY,
                       text: dict[str, str] | None = None) -> None:
    """(H, W, 3) uint8 -> ``path`` as ``image_format``, via a temp file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        save_image(f, image, image_format, quality, text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metadata(img: Image.Image) -> dict[str, str]:
    """The provenance ``save_image`` wrote into an open image: PNG text chunks, or the JSON
    of a WebP / JPEG EXIF ImageDescription; ``{}`` when there is none."""
    text = dict(getattr(img, "text", None) or {})
    if text:
        return {str(k): str(v) for k, v in text.items()}
    try:
        raw = img.getexif().get(_EXIF_DESCRIPTION)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no metadata, not a crash
        return {}
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
