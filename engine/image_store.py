"""One image file of an import: validate it, keep the user's bytes or convert it, thumbnail it.

This module runs in the import's worker processes (``engine.data.write_dataset_files`` spreads
the files of an ImageFolder over them): it imports Pillow and NumPy only, and it writes files,
never rows.

What is kept and what is converted (``store_file``): a file is **kept** (its bytes untouched:
hard-linked, copied, or referenced where it lies) when it is a single-frame JPEG, PNG or WebP
in 8-bit RGB or greyscale, without transparency and without an EXIF rotation: what browsers,
Pillow and torchvision all read the same way. Anything else is **converted** to an 8-bit RGB
PNG (``validate_image``: CMYK, 16-bit and float, palette, transparency composited over white,
the EXIF rotation applied, TIFF / BMP / GIF / ... , longer side at most ``max_side``). Every
file is fully decoded first (truncated, corrupt and non-image files are skipped with a reason;
decompression bombs are refused from the header).

Per file the record also says whether the image is greyscale (``channels``: 1 when the image as
decoded has R == G == B at every pixel, which every "L" / "LA" / "I" / "1" / "F" file has once
converted; 3 otherwise): the train stage reads it to train a greyscale RCDM on greyscale data
(``engine.stages.train_stage.data_channels``). It is checked on the image already decoded: a
strided look first (a colour image is told in microseconds), the whole image only when that
look is grey (about a quarter of the decoding time of an RGB JPEG of grey content).

Per file the record says what happened (``kept`` / ``converted`` / ``skipped``, and how the
bytes were stored: ``linked``, ``copied``, ``referenced`` or ``written``) with the stored file's
size, modification time and BLAKE2b digest at import: ``engine.check`` compares them later.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.config import ImportConfig

log = logging.getLogger(__name__)

KEPT_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}  # Pillow format -> extension
KEPT_MODES = ("RGB", "L")
PNG_COMPRESS_LEVEL = 4  # a fair trade between import speed and file size
THUMB_JPEG_QUALITY = 90  # thumbnails of kept JPEGs are JPEGs too (others: PNG)
DIGEST_BYTES = 16  # BLAKE2b-128 of each stored file
# a kept image (linked or copied) at most this many times ``thumbnail_size`` (and at least
# half of it) is its own thumbnail: a browser shrinks it as well, and no file is written
SELF_THUMB = 2
THUMB_GAP = 2.0  # a kept JPEG is decoded at a reduced scale leaving >= 2x thumbnail_size
_IN_MEMORY_MAX = 64 * 1024 ** 2  # files up to this size are read once (hash + decode)
_READ_BLOCK = 1024 ** 2
# link() errors that mean "no hard link here" (another file system, links not supported or
# refused): the file is copied instead
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP,
            errno.EOPNOTSUPP}


# ---------------------------------------------------------------------------- one image, as RGB


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.

    Transparent images are composited over white. 16- and 32-bit integer images ("I;16*",
    "I") are read as 16-bit intensities and scaled by 255/65535 (Pillow's own conversion
    clips instead of scaling); float images ("F") are taken as 0..1 when their maximum is
    <= 1, else as 0..255.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img)
        if arr.ndim == 3:  # e.g. 16-bit RGB decoded by a plugin as a 3-channel array
            arr = arr[..., :3]
        arr = arr.astype(np.float64)
        if mode == "F":
            finite = arr[np.isfinite(arr)]
            top = float(finite.max()) if finite.size else 0.0
            arr = np.nan_to_num(arr) * (255.0 if top <= 1.0 else 1.0)
        else:
            arr = arr * (255.0 / 65535.0)
        gray = Image.fromarray(np.round(arr).clip(0, 255).astype(np.uint8))
        return gray.convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # "1", "L", "P", "CMYK" (Adobe-inverted JPEGs are un-inverted by Pillow), "YCbCr", "LAB", ...
    return img.convert("RGB")


def _fit_side(img: Image.Image, max_side: int) -> Image.Image:
    """Downscale (LANCZOS) so that the longer side is <= ``max_side``; never upscale."""
    w, h = img.size
    longer = max(w, h)
    if longer <= max_side:
        return img
    scale = max_side / longer
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


# Bounded memory for big images: an image whose longer side exceeds this many times
# ``max_side`` is first decoded at a reduced scale (JPEG's DCT scaling, ``draft``) and/or
# box-reduced by a whole factor (``Image.reduce``), leaving at least this margin, before the
# LANCZOS resize to ``max_side``; Pillow's ``reducing_gap`` uses the same margin ("in most
# cases indistinguishable" from a plain resize). Images up to 3 x max_side take today's path.
_REDUCING_GAP = 3.0
_STRIP_PIXELS = 1_000_000  # pixels per strip converted at once when reducing (~4 MB in RGB)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {  # as ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _draft_for(img: Image.Image, max_side: int, gap: float = _REDUCING_GAP) -> None:
    """Ask the decoder for a reduced scale (JPEG: 1/2, 1/4, 1/8 by DCT scaling), keeping the
    longer side >= ``_REDUCING_GAP * max_side``. Call before ``load``; other formats ignore it."""
    w, h = img.size
    keep = gap * max_side / max(w, h)
    if keep < 0.5:  # a scale of 1/2 at least would still leave the margin
        img.draft(None, (max(1, math.ceil(w * keep)), max(1, math.ceil(h * keep))))


def _reduced_rgb(img: Image.Image, max_side: int) -> Image.Image:
    """A loaded image of any mode -> RGB (``_to_rgb``), box-reduced by the largest whole factor
    that keeps the longer side >= ``_REDUCING_GAP * max_side`` (factor 1: ``_to_rgb(img)``).

    When reducing, the conversion runs strip by strip (``_STRIP_PIXELS``, rows a multiple of
    the factor), so no full-size converted copy is made: the result equals converting the
    whole image and then reducing it. Float ("F") images are converted whole (their scale
    depends on the whole image's maximum).
    """
    w, h = img.size
    factor = int(max(w, h) / max_side / _REDUCING_GAP)
    if factor <= 1:
        return _to_rgb(img)
    if img.mode == "F":
        return _to_rgb(img).reduce(factor)
    out = Image.new("RGB", (math.ceil(w / factor), math.ceil(h / factor)))
    rows = factor * max(1, _STRIP_PIXELS // (w * factor))
    for top in range(0, h, rows):
        strip = _to_rgb(img.crop((0, top, w, min(h, top + rows))))  # (rows, w) -> RGB
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _orientation(img: Image.Image, path: Path) -> int:
    """The EXIF (or XMP) orientation of an opened image, 1 when absent or unreadable."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if value in _TRANSPOSE_FOR_ORIENTATION else 1
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not lose a good image
        log.warning("ignoring unreadable EXIF orientation of %s: %s", path, exc)
        return 1


def validate_image(path: Path, config: ImportConfig) -> tuple[Image.Image | None, str]:
    """Decode one file fully and normalise it, or say why it cannot be used.

    Refuses empty, truncated, corrupt and non-image files, and decompression bombs (more
    than ``config.max_pixels`` pixels, checked from the header before decoding). Applies the
    EXIF orientation, converts any mode to RGB (see ``_to_rgb``) and downscales so that the
    longer side is at most ``config.max_side``.

    Memory: the file is decoded once, at a reduced scale where the format allows (JPEG), and
    an image larger than ``_REDUCING_GAP * max_side`` is box-reduced right after decoding,
    its conversion done in strips; orientation, conversion and the final LANCZOS resize then
    work on the reduced image. Peak memory is about one decoded image (Pillow keeps RGB at 4
    bytes a pixel: ~350 MB for 9400x9400) plus a few tens of MB.

    Returns:
        ``(image, "")`` with an RGB image, or ``(None, reason)`` with a one-line reason.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return None, f"cannot read the file ({exc.strerror or exc})"
    if size == 0:
        return None, "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own global threshold; we apply config.max_pixels below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > config.max_pixels:
                    return None, (f"decompression bomb refused: {w}x{h} = {w * h:,} pixels "
                                  f"> max_pixels {config.max_pixels:,}")
                _draft_for(img, config.max_side)
                img.load()  # decode everything now: truncation and corruption show up here
                orientation = _orientation(img, path)
                rgb = _reduced_rgb(img, config.max_side)  # a big image: no full-size copy
                if orientation != 1:
                    rgb = rgb.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
                rgb.load()
    except Image.DecompressionBombError as exc:
        return None, f"decompression bomb refused by Pillow: {exc}"
    except Image.UnidentifiedImageError:
        return None, "not an image (unknown or unsupported format)"
    except MemoryError:
        return None, "not enough memory to decode the image"
    except Exception as exc:  # noqa: BLE001 - any decoder failure: a truncated or corrupt file
        text = str(exc).strip() or type(exc).__name__
        return None, f"corrupt or truncated image ({text})"
    return _fit_side(rgb, config.max_side), ""


def make_thumbnail(img: Image.Image, size: int) -> Image.Image:
    """A thumbnail whose longer side is ``size``.

    Larger images are downscaled (LANCZOS). Images smaller than ``size / 2`` are enlarged by
    the largest whole factor that fits, with NEAREST so small pixel art (8x8 digits) stays
    crisp; the rest are kept as they are.
    """
    w, h = img.size
    longer = max(w, h)
    if longer > size:
        scale = size / longer
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                          Image.Resampling.LANCZOS)
    factor = size // longer
    if factor >= 2:
        return img.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    return img



# ---------------------------------------------------------------------------- keep or convert


def file_digest(path: Path) -> str:
    """BLAKE2b-128 (hex) of a file, read in blocks."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _keepable(img: Image.Image) -> bool:
    """The header alone allows keeping the file (the EXIF rotation is checked apart)."""
    return (img.format in KEPT_FORMATS and img.mode in KEPT_MODES
            and "transparency" not in img.info and getattr(img, "n_frames", 1) == 1)


def _thumb_source(img: Image.Image, size: int) -> Image.Image:
    """A loaded RGB / L image box-reduced (whole factor) to leave ``THUMB_GAP * size``."""
    factor = int(max(img.size) / size / THUMB_GAP)
    return img.reduce(factor) if factor >= 2 else img


def _decode(fp: Any, path: Path, config: ImportConfig) -> tuple[str, Image.Image | None, Any]:
    """Open and fully decode one file; decide whether it is kept.

    Returns:
        ``("kept", thumbnail source, (format, width, height, channels))``,
        ``("converted", RGB image as stored, (format, width, height, channels))`` or
        ``("skipped", None, reason)``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                fmt = img.format or ""
                if w * h > config.max_pixels:
                    return "skipped", None, (
                        f"decompression bomb refused: {w}x{h} = {w * h:,} pixels "
                        f"> max_pixels {config.max_pixels:,}")
                keep = _keepable(img)
                if keep and fmt != "PNG":  # JPEG / WebP: EXIF is in the header
                    keep = _orientation(img, path) == 1
                if keep:
                    # JPEG: a DCT-scaled decode, which still reads and decodes every
                    # block of the file (a truncated or corrupt one fails here)
                    _draft_for(img, config.thumbnail_size, THUMB_GAP)
                    img.load()
                    if fmt == "PNG" and _orientation(img, path) != 1:
                        keep = False  # (PNG: never drafted, so the image is full size)
                    else:
                        return "kept", _thumb_source(img, config.thumbnail_size), (
                            fmt, w, h, content_channels(img))
                _draft_for(img, config.max_side)
                img.load()  # decode everything now: truncation and corruption show up here
                orientation = _orientation(img, path)
                rgb = _reduced_rgb(img, config.max_side)
                if orientation != 1:
                    rgb = rgb.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
                rgb.load()
    except Image.DecompressionBombError as exc:
        return "skipped", None, f"decompression bomb refused by Pillow: {exc}"
    except Image.UnidentifiedImageError:
        return "skipped", None, "not an image (unknown or unsupported format)"
    except MemoryError:
        return "skipped", None, "not enough memory to decode the image"
    except Exception as exc:  # noqa: BLE001 - any decoder failure: a truncated or corrupt file
        text = str(exc).strip() or type(exc).__name__
        return "skipped", None, f"corrupt or truncated image ({text})"
    rgb = _fit_side(rgb, config.max_side)
    return "converted", rgb, (fmt, rgb.width, rgb.height, content_channels(rgb))


def content_channels(img: Image.Image) -> int:
    """1 when a loaded image carries no colour (mode "L" / "1" / "I" / "F" / "LA", or R == G ==
    B at every pixel of an RGB one), else 3. Other modes are converted to RGB first."""
    if img.mode in ("L", "1", "LA", "La", "F") or img.mode.startswith("I"):
        return 1
    arr = np.asarray(img if img.mode == "RGB" else _to_rgb(img))
    for view in (arr[::16, ::16], arr):  # a strided look first: colour shows up at once
        if not (np.array_equal(view[..., 0], view[..., 1])
                and np.array_equal(view[..., 1], view[..., 2])):
            return 3
    return 1


def _link_or_copy(src: Path, dst: Path, data: bytes | None, link: bool) -> str:
    """Store ``src`` at ``dst`` (replacing a file a killed attempt left): a hard link when
    ``link`` and the file system allows it, else a copy. Returns ``"linked"`` / ``"copied"``."""
    dst.unlink(missing_ok=True)
    if link:
        try:
            os.link(src, dst)
            return "linked"
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
    if data is not None:
        with open(dst, "wb") as f:
            f.write(data)
    else:
        shutil.copyfile(src, dst)
    return "copied"


def store_file(pos: int, src: str, label: int, job: dict[str, Any]) -> dict[str, Any]:
    """Validate, store and thumbnail one file (in an import worker process).

    Args:
        pos: the file's position in the import's plan: it names the files written,
            ``images/<label:04d>/<pos:06d>.<ext>`` and ``thumbs/...`` under ``job["root"]``.
        src: the file's absolute path.
        job: ``root`` (the dataset's work folder), ``mode`` (``engine.config.IMPORT_MODES``), ``config`` (an
            ImportConfig as a dict), ``reference_root`` (the referenced folder, resolved).

    Returns:
        the record: ``pos``, ``status`` (kept / converted / skipped), ``reason``, ``how``
        (linked / copied / referenced / written), ``format``, ``ext``, ``thumb_ext``,
        ``width``, ``height``, ``path`` (referenced files: their absolute path), ``size``,
        (``thumb_ext`` is empty for an image that is its own thumbnail: ``SELF_THUMB``),
        ``mtime_ns`` and ``digest`` of the stored file, ``channels`` (1: greyscale, 3:
        colour, ``content_channels``).
    """
    config = job["config"]
    if not isinstance(config, ImportConfig):
        config = ImportConfig.from_dict(config)
    source = Path(src)
    record: dict[str, Any] = {"pos": pos, "status": "skipped", "reason": "", "how": "",
                              "format": "", "ext": "", "thumb_ext": "", "width": 0,
                              "height": 0, "path": "", "size": 0, "mtime_ns": 0, "digest": "",
                              "channels": 0}
    try:
        st = source.stat()
        data = source.read_bytes() if st.st_size <= _IN_MEMORY_MAX else None
    except OSError as exc:
        record["reason"] = f"cannot read the file ({exc.strerror or exc})"
        return record
    if st.st_size == 0:
        record["reason"] = "empty file (0 bytes)"
        return record
    status, img, info = _decode(io.BytesIO(data) if data is not None else source, source,
                                config)
    if status == "skipped":
        record["reason"] = info
        return record
    fmt, width, height, channels = info
    root = Path(job["root"])
    name = f"{label:04d}/{pos:06d}"
    record.update(status=status, format=fmt, width=int(width), height=int(height),
                  channels=int(channels))
    if status == "kept":
        digest = (hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()
                  if data is not None else file_digest(source))
        ext = KEPT_FORMATS[fmt]
        real = os.path.realpath(source)
        ref_root = job.get("reference_root") or ""
        if job["mode"] == "reference" and real.startswith(ref_root.rstrip(os.sep) + os.sep):
            how, stored, path = "referenced", source, str(source)
        else:
            stored = root / "images" / f"{name}{ext}"
            how = _link_or_copy(source, stored, data, link=job["mode"] == "link")
            path = ""
            if how == "copied":
                st = stored.stat()
        thumb_ext = ".jpg" if fmt == "JPEG" else ".png"
        if how != "referenced" and config.thumbnail_size // 2 <= max(width, height) <= \
                SELF_THUMB * config.thumbnail_size:
            thumb_ext = ""  # small enough: the kept image is its own thumbnail
    else:
        ext, how, path = ".png", "written", ""
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        png = buf.getvalue()
        digest = hashlib.blake2b(png, digest_size=DIGEST_BYTES).hexdigest()
        stored = root / "images" / f"{name}{ext}"
        with open(stored, "wb") as f:
            f.write(png)
        st = stored.stat()
        thumb_ext = ".png"
    if thumb_ext:
        thumb = make_thumbnail(img, config.thumbnail_size)
        thumb_path = root / "thumbs" / f"{name}{thumb_ext}"
        if thumb_ext == ".jpg":
            thumb.save(thumb_path, format="JPEG", quality=THUMB_JPEG_QUALITY)
        else:
            thumb.save(thumb_path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    record.update(how=how, ext=ext, thumb_ext=thumb_ext, path=path, size=int(st.st_size),
                  mtime_ns=int(st.st_mtime_ns), digest=digest)
    return record


def store_chunk(items: list[tuple[int, str, int]], job: dict[str, Any]) -> list[dict[str, Any]]:
    """``store_file`` for each ``(pos, source path, label)`` of one chunk, in order."""
    if not isinstance(job["config"], ImportConfig):
        job = {**job, "config": ImportConfig.from_dict(job["config"])}
    return [store_file(pos, src, label, job) for pos, src, label in items]
