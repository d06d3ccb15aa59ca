"""Peak memory of importing one big image (issue 13, item 7).

Claim: importing a 9400x9400 image (a PNG of a few hundred KB: flat, with a small noisy
patch) needs a bounded peak RSS, under 600 MB, where the plain approach took far more.

Each measurement runs in a fresh process (``--measure``) that starts one child
(``--work``) and reads ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` once it has ended:

- ``ours``: ``engine.data.write_dataset_files`` on an ImageFolder holding that one image
  (validate, store the PNG at ``max_side``, write the thumbnail), as an import job's worker;
- ``baseline``: the same steps as the code did them before (full decode, EXIF transpose
  copy, RGB conversion, LANCZOS to ``max_side``, save, thumbnail), same imports;
- ``floor``: the child's imports alone (Python, numpy, pandas, Pillow, ``engine``).

ratio = baseline peak / ours peak; goal: ours < 600 MB.

Usage: python benchmarks/import_memory.py [--side 9400] [--format png|jpeg] [--mode RGB]
Last line: one JSON object {"claim", "ratio", "goal", "met", "peak_mb", "baseline_mb", ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL_MB = 600.0


def make_image(path: Path, side: int, mode: str) -> None:
    """A mostly flat ``side x side`` image with a 300x300 noise patch (compresses well)."""
    import numpy as np
    from PIL import Image

    img = Image.new(mode, (side, side), "#c8b4a0")
    bands = len(img.getbands())
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, bands), dtype=np.uint8)
    img.paste(Image.fromarray(noise.squeeze(), mode), (side // 3, side // 3))
    if path.suffix == ".jpg":
        img.save(path, quality=90)
    else:
        img.save(path)


def work_ours(image: Path, out: Path) -> None:
    from engine.config import ImportConfig
    from engine.data import write_dataset_files

    folder = out / "folder"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / image.name).symlink_to(image)
    written = write_dataset_files(folder, out / "ds", "datasets/ds", "ds", ImportConfig())
    assert len(written["images"]) == 1, written["skipped"]


def work_baseline(image: Path, out: Path) -> None:
    """The import of one image as engine.data did it before issue 13 item 7."""
    from PIL import Image, ImageOps

    import engine.data  # noqa: F401 - same imports as ``ours``
    from engine.config import ImportConfig

    config = ImportConfig()
    with Image.open(image) as img:
        img.load()
        img = ImageOps.exif_transpose(img)  # a full-size copy
        if img.mode in ("RGBA", "LA"):  # the old _to_rgb: over white, three more copies
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(background, rgba).convert("RGB")
        else:  # the old _to_rgb kept an RGB image as it was
            rgb = img if img.mode == "RGB" else img.convert("RGB")
        rgb.load()
    w, h = rgb.size
    scale = config.max_side / max(w, h)
    if scale < 1:
        rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                         Image.Resampling.LANCZOS)
    rgb.save(out / "image.png", compress_level=4)
    thumb = rgb.resize((config.thumbnail_size, config.thumbnail_size), Image.Resampling.LANCZOS)
    thumb.save(out / "thumb.png", compress_level=4)


def work_floor(image: Path, out: Path) -> None:
    import engine.data  # noqa: F401


WORK = {"ours": work_ours, "baseline": work_baseline, "floor": work_floor}


def measure(kind: str, image: Path) -> float:
    """Peak RSS (MB) of a fresh child doing ``kind``, read in a fresh measuring process."""
    code = ("import resource, subprocess, sys; "
            "subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", code, sys.executable, __file__, "--work", kind,
               str(image), tmp]
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(text.strip().splitlines()[-1]) / 1024.0  # Linux: ru_maxrss in KB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=9400)
    parser.add_argument("--format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--mode", default="RGB", help="Pillow mode of the test image")
    parser.add_argument("--work", nargs=3, metavar=("KIND", "IMAGE", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work:
        kind, image, out = args.work
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        WORK[kind](Path(image), Path(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / f"big.{'jpg' if args.format == 'jpeg' else 'png'}"
        make_image(image, args.side, args.mode)
        size_kb = image.stat().st_size / 1024
        peaks = {kind: measure(kind, image) for kind in ("floor", "baseline", "ours")}
    label = f"{args.side}x{args.side} {args.mode} {args.format.upper()} ({size_kb:.0f} KB)"
    print(f"{'run':<10} peak RSS (MB)   [{label}]")
    for kind, mb in peaks.items():
        print(f"{kind:<10} {mb:10.0f}")
    ratio = peaks["baseline"] / peaks["ours"]
    print(json.dumps({
        "claim": f"importing a {label} stays under {GOAL_MB:.0f} MB peak RSS",
        "ratio": round(ratio, 2), "goal": f"ours < {GOAL_MB:.0f} MB",
        "met": peaks["ours"] < GOAL_MB, "peak_mb": round(peaks["ours"], 1),
        "baseline_mb": round(peaks["baseline"], 1), "floor_mb": round(peaks["floor"], 1),
        "file_kb": round(size_kb, 1)}))


if __name__ == "__main__":
    main()
