"""Generated images at scale: bytes on disk and time per image of PNG, WebP and JPEG (issue 17).

At ImageNet-100 scale a generation holds 520,000 images. This script writes the same seeded,
image-like RGB images (smooth shapes: 8x8 noise upsampled bicubic, plus fine noise of +-3
levels, as a generated image has; not pure noise, which no format compresses, nor pure
gradients, which PNG compresses best) at 64 px and 256 px with ``engine.image_formats``, as
the generator writes them, and measures per image:

- bytes on disk;
- encode time (``save_image`` into memory, with the provenance metadata a generated file
  carries) and write time (``write_image_atomic``: temp file, fsync, rename);
- decode time (``engine.data.file_pixels`` at the native size: open, decode, RGB), what a
  re-encode or an evaluation pays per file;
- mean absolute pixel error against the original (0 for PNG and lossless WebP);
- and, for the pixel cache (``engine.data.pixel_cache``), the time to read one image's row
  back (``engine.streams.CacheRows``): what a second job at the same size pays instead of
  decoding.

ratio = PNG bytes / ``--format`` bytes at 256 px and ``--quality`` (JPEG at 95 by default).
The goal is >= 2: half the disk or less for half a million files.

Usage: python benchmarks/generated_format.py [--count 300] [--format jpeg] [--quality 95]
Last line: one JSON object {"claim", "ratio", "goal", "met", ...}.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TEXT = {"rcdm:seed": "123456", "rcdm:source": "img_0001234", "rcdm:model": "mdl_0123abcd",
        "rcdm:sampler": "ddpm", "rcdm:steps": "100", "rcdm:guidance": "1.0",
        "rcdm:class": "n01440764"}


def images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8: 8x8 seeded noise upsampled (bicubic) + noise of +-3."""
    rng = np.random.default_rng([seed, size])
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        low = Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
        smooth = np.asarray(low.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
        out[i] = np.clip(smooth + rng.integers(-3, 4, (size, size, 3)), 0, 255)
    return out


def measure(batch: np.ndarray, fmt: str, quality: int, folder: Path) -> dict:
    from engine.data import file_pixels
    from engine.image_formats import save_image, suffix, write_image_atomic

    folder.mkdir(parents=True, exist_ok=True)
    enc, wrt, dec, nbytes, err = [], [], [], [], []
    paths = []
    for i, image in enumerate(batch):
        t0 = time.perf_counter()
        buf = io.BytesIO()
        save_image(buf, image, fmt, quality, TEXT)
        enc.append(time.perf_counter() - t0)
        path = folder / f"{i:07d}{suffix(fmt)}"
        t0 = time.perf_counter()
        write_image_atomic(path, image, fmt, quality, TEXT)
        wrt.append(time.perf_counter() - t0)
        nbytes.append(path.stat().st_size)
        paths.append(path)
    size = batch.shape[1]
    for path, image in zip(paths, batch):
        t0 = time.perf_counter()
        pixels = file_pixels(path, size)
        dec.append(time.perf_counter() - t0)
        err.append(float(np.abs(pixels.astype(np.int16) - image).mean()))
    return {"bytes": float(np.mean(nbytes)), "encode_ms": 1e3 * statistics.median(enc),
            "write_ms": 1e3 * statistics.median(wrt), "decode_ms": 1e3 * statistics.median(dec),
            "mean_abs_error": float(np.mean(err)), "paths": paths}


def cache_read_ms(paths: list[Path], size: int, cache: Path) -> float:
    """Per-image time to read a row of the pixel cache built from ``paths`` (median of
    reads in a shuffled order)."""
    from engine.data import pixel_cache
    from engine.streams import CacheRows

    pixel_cache(paths, cache, size)
    rows = CacheRows(cache)
    order = np.random.default_rng(0).permutation(len(rows))
    times = []
    for i in order:
        t0 = time.perf_counter()
        rows[int(i)]
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300, help="images per size")
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--format", default="jpeg", choices=["webp", "jpeg"],
                    help="the format the ratio is taken for")
    ap.add_argument("--quality", type=int, default=95, help="the ratio's quality")
    ap.add_argument("--qualities", default="90,95", help="lossy qualities measured")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    qualities = sorted({int(q) for q in args.qualities.split(",")} | {args.quality})
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            batch = images(args.count, size)
            settings = [("png", 95)] + [(f, q) for f in ("webp", "jpeg") for q in qualities]
            settings.append(("webp", 100))  # lossless WebP
            for fmt, q in settings:
                key = f"{size}px {fmt}" + ("" if fmt == "png" else f" q{q}")
                r = measure(batch, fmt, q, Path(tmp) / key.replace(" ", "_"))
                paths = r.pop("paths")
                if fmt == "png":
                    r["cache_read_ms"] = cache_read_ms(paths, size,
                                                       Path(tmp) / f"pixels_{size}.npy")
                results[key] = r
                png = results[f"{size}px png"]["bytes"]
                print(f"{key:>18}: {r['bytes'] / 1024:8.1f} KiB ({png / r['bytes']:5.2f}x "
                      f"smaller than PNG), encode {r['encode_ms']:6.2f} ms, write "
                      f"{r['write_ms']:6.2f} ms, decode {r['decode_ms']:6.2f} ms, mean abs "
                      f"error {r['mean_abs_error']:.2f}"
                      + (f"; pixel-cache row read {r['cache_read_ms']:.3f} ms"
                         if "cache_read_ms" in r else ""), flush=True)
    big = max(sizes)
    png = results[f"{big}px png"]
    chosen = results[f"{big}px {args.format} q{args.quality}"]
    ratio = png["bytes"] / chosen["bytes"]
    summary = {k: {m: round(v, 4) for m, v in r.items()} for k, r in results.items()}
    print(json.dumps({"claim": f"generated images written as {args.format} at quality "
                               f"{args.quality} take at most half the bytes of PNG at "
                               f"{big} px", "ratio": round(ratio, 3), "goal": 2.0,
                      "met": ratio >= 2.0, "count": args.count, "sizes": sizes,
                      "format": args.format, "quality": args.quality,
                      "decode_ms_png": round(png["decode_ms"], 3),
                      f"decode_ms_{args.format}": round(chosen["decode_ms"], 3),
                      "results": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
