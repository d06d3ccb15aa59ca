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

Channels: a greyscale RCDM's images are (H, W, 1) arrays and are written as mode "L" files
in PNG and JPEG; WebP has no greyscale mode, so libwebp stores them as RGB with R == G == B
(exact when lossless, within a level or two when lossy: seen in the tests' 8x8 images) and
every reader takes them as the RGB files they are. Colour images are (H, W, 3) "RGB" files.
``to_channels`` turns RGB into L with Pillow's own weights (ITU-R 601-2 luma,
L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, so R == G == B gives L == R exactly) and L into
RGB by repeating it: what ``Image.convert`` does, on whole batches.
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


GREY, COLOUR = 1, 3  # the channels of a greyscale and of a colour image


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., C) images with C in (1, 3) -> (..., ``channels``): RGB -> L with Pillow's
    weights (``Image.convert("L")``), L -> RGB by repeating the channel; unchanged when C
    already is ``channels``.

    Raises:
        ValueError: ``channels`` not 1 or 3, or a last axis of another size.
    """
    pixels = np.asarray(pixels)
    if channels not in (GREY, COLOUR):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    have = int(pixels.shape[-1]) if pixels.ndim else 0
    if have not in (GREY, COLOUR):
        raise ValueError(f"images must end in 1 or 3 channels, got shape {pixels.shape}")
    if have == channels:
        return pixels
    if channels == COLOUR:
        return np.repeat(pixels, COLOUR, axis=-1)
    rgb = pixels.astype(np.uint32)
    grey = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 32768) >> 16
    return grey.astype(np.uint8)[..., None]


def is_grey(pixels: np.ndarray) -> bool:
    """True when uint8 (..., C) images carry no colour: one channel, or R == G == B at every
    pixel."""
    pixels = np.asarray(pixels)
    if pixels.shape[-1] == GREY:
        return True
    return bool(np.array_equal(pixels[..., 0], pixels[..., 1])
                and np.array_equal(pixels[..., 1], pixels[..., 2]))


def to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 1) or (H, W) uint8 -> a mode "L" image; (H, W, 3) -> "RGB"."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == GREY:
        image = image[..., 0]
    return Image.fromarray(np.ascontiguousarray(image))


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
    """Write ``image`` ((H, W, 3) or (H, W, 1) uint8, or a PIL image) as ``image_format``
    with ``text`` (PNG text chunks; an EXIF ImageDescription of JSON for WebP and JPEG)."""
    img = to_pil(image) if isinstance(image, np.ndarray) else image
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
    """(H, W, 3) or (H, W, 1) uint8 -> ``path`` as ``image_format`` (RGB or L), via a temp
    file and ``os.replace``."""
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
